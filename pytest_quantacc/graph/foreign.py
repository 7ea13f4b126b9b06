"""Match a float ONNX model's tensors to a *foreign* QDQ model's tensors.

A foreign QDQ model is one another tool (NNCF, AMD Quark, NVIDIA ModelOpt / TensorRT QDQ export, AIMET, a
vendor toolchain) made from the same float network. Names cannot be trusted: every tool names its nodes and
tensors its own way, and a model re-exported from the framework has different names again. What survives is
the *structure*: the same compute nodes, fed by the same tensors, in the same order. So the matcher walks the
QDQ graph in topological order, looks through the nodes that do not change values (Q/DQ, Identity, float
Cast), and pairs each compute node with the float node of the same op type whose inputs are the float
tensors already paired with its own inputs. On top of that it tolerates what tools do to the graph:

* BatchNormalization folded into the Conv/Gemm/MatMul before it;
* Relu/Clip removed because the quantization range already clips (ONNX Runtime and Quark remove them when
  the activation is asymmetric uint8), or fused into ``com.microsoft`` ``FusedConv``;
* a Gemm (transB) where the float model has MatMul + Add (the weight pair carries the permutation);
* extra Transpose nodes (carried as a permutation through elementwise ops; an inverse Transpose cancels it)
  and float Cast nodes (float16 islands);
* Q/DQ pairs on graph inputs and outputs, weights kept float with Q/DQ on them or folded into integer
  initializers + DequantizeLinear, per-channel axes, 4/8/16-bit types, ``com.microsoft`` Q/DQ.

Where structure is not enough (a node the float model does not have, several equally good candidates), an
optional sample decides numerically: both graphs run once in ONNX Runtime (optimizations off) and the
candidate float tensor of the same shape with the clearly best cosine wins. Every DequantizeLinear output that
still has no partner is returned with the reason, never silently dropped: a gate that skips layers it cannot
place would pass for the wrong reason.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from .match import Layer, QParams, float_layers

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
QOPERATOR_OPS = (
    "QLinearConv", "QLinearMatMul", "QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu",
    "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearConcat", "QLinearSoftmax", "QLinearReduceMean",
    "QLinearWhere", "QLinearConvTranspose", "QGemm", "QAttention", "QEmbedLayerNormalization",
    "MatMulNBits", "MatMulBnb4",
)
DYNAMIC_OPS = ("ConvInteger", "MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul",
               "MatMulIntegerToFloat", "DynamicQuantizeLSTM")
FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE)
INT_TYPE_NAMES = {
    TensorProto.INT8: "int8", TensorProto.UINT8: "uint8", TensorProto.INT16: "int16",
    TensorProto.UINT16: "uint16", TensorProto.INT4: "int4", TensorProto.UINT4: "uint4",
    TensorProto.INT32: "int32", TensorProto.UINT32: "uint32",
}
QRANGE = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767), "uint16": (0, 65535),
          "int4": (-8, 7), "uint4": (0, 15), "int32": (-2**31, 2**31 - 1), "uint32": (0, 2**32 - 1)}
COMMUTATIVE = ("Add", "Mul", "Sum", "Max", "Min", "Mean")
ELEMENTWISE = ("Relu", "Clip", "Sigmoid", "Tanh", "LeakyRelu", "HardSigmoid", "HardSwish", "Elu", "Selu", "Gelu",
               "Abs", "Neg", "Exp", "Log", "Sqrt", "Erf", "Softplus")  # commute with a Transpose
UPSTREAM = "downstream of a node with no float counterpart: "
FOLDS_BN = ("Conv", "FusedConv", "ConvTranspose", "Gemm", "MatMul")
NUMERIC_MIN_COS = 0.98
NUMERIC_MARGIN = 0.01


# ------------------------------------------------------------------------------------------ detector


@dataclass(frozen=True)
class QuantizationKind:
    """What kind of model this is, and the quantization ops that say so (op name -> count)."""

    kind: str  # "float" | "qdq" | "qoperator" | "dynamic"
    ops: tuple[tuple[str, int], ...] = ()

    def describe(self) -> str:
        """One phrase for an error message, e.g. ``QDQ model (4 QuantizeLinear, 6 DequantizeLinear)``."""
        if self.kind == "float":
            return "float model (no quantization ops)"
        label = {"qdq": "QDQ", "qoperator": "QOperator", "dynamic": "dynamically quantized"}[self.kind]
        return f"{label} model ({', '.join(f'{n} {op}' for op, n in self.ops)})"


def _all_nodes(graph: onnx.GraphProto):
    """Nodes of the graph and of every subgraph (If/Loop/Scan): a quantized op hidden in a branch still counts."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _all_nodes(g)


def quantization_kind(model: onnx.ModelProto) -> QuantizationKind:
    """Classify a model by the quantization ops it holds.

    Precedence matters because the formats overlap: a QOperator model also has QuantizeLinear at its inputs
    and DequantizeLinear at its outputs, and a dynamic model has no static Q/DQ pairs at all. So integer
    kernels (``QLinear*``, ``QGemm``, weight-only ``MatMulNBits``) make it ``qoperator``, dynamic ops make it
    ``dynamic``, and only Q/DQ nodes (any domain, and vendor ops named ``*QuantizeLinear`` /
    ``*DequantizeLinear``) make it ``qdq``.
    """
    counts = Counter(n.op_type for n in _all_nodes(model.graph))
    # vendor Q/DQ ops (Quark's ExtendedQuantizeLinear / VitisQuantizeLinear, ModelOpt's TRT_FP8QuantizeLinear)
    vendor = tuple(sorted(op for op in counts if op.endswith(QDQ_OPS) and op not in QDQ_OPS))
    for kind, names in (("qoperator", QOPERATOR_OPS), ("dynamic", DYNAMIC_OPS), ("qdq", QDQ_OPS + vendor)):
        found = tuple((op, counts[op]) for op in names if counts[op])
        if found:
            if kind != "qdq":  # say what else is there too: the user may not know the model has both
                found += tuple((op, counts[op]) for op in QDQ_OPS if counts[op])
            return QuantizationKind(kind, found)
    return QuantizationKind("float")


# ------------------------------------------------------------------------------------------ results


@dataclass(frozen=True)
class QuantParams:
    """A DequantizeLinear's parameters: value = (q - zero_point) * scale, per channel along ``axis``."""

    dtype: str  # int8 | uint8 | int16 | uint16 | int4 | uint4 | int32 | uint32
    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    axis: int | None  # None: one scale for the whole tensor
    domain: str = ""  # "" (ai.onnx) or "com.microsoft"
    block_size: int = 0  # opset 21 blocked quantization; 0: not blocked

    @property
    def per_channel(self) -> bool:
        return self.axis is not None

    def real_range(self) -> tuple[float, float]:
        """Smallest and largest value the DequantizeLinear can produce (over all channels)."""
        qmin, qmax = QRANGE[self.dtype]
        s, z = np.asarray(self.scale, np.float64), np.asarray(self.zero_point, np.float64)
        return float(np.min((qmin - z) * s)), float(np.max((qmax - z) * s))


@dataclass(frozen=True)
class TensorPair:
    """A float tensor and the QDQ model's DequantizeLinear output that carries its fake-quant value."""

    float_tensor: str
    qdq_tensor: str
    params: QuantParams
    kind: str  # "activation" | "weight"
    how: str  # "name" (graph input) | "structure" | "numeric"
    perm: tuple[int, ...] | None = None  # the QDQ tensor is the float tensor transposed by this
    note: str = ""


@dataclass(frozen=True)
class Unmatched:
    qdq_tensor: str
    reason: str


@dataclass(frozen=True)
class ForeignMatch:
    pairs: tuple[TensorPair, ...]
    unmatched: tuple[Unmatched, ...]
    nodes: tuple[tuple[str, str], ...]  # (float node, QDQ node) compute nodes paired, in QDQ topological order

    def activations(self) -> tuple[TensorPair, ...]:
        return tuple(p for p in self.pairs if p.kind == "activation")

    def by_qdq(self) -> dict[str, TensorPair]:
        return {p.qdq_tensor: p for p in self.pairs}


def dequantize(q: np.ndarray, params: QuantParams) -> np.ndarray:
    """(q - zero_point) * scale in float64, broadcast along the channel axis (not blocked)."""
    s = np.asarray(params.scale, np.float64)
    z = np.asarray(params.zero_point, np.float64)
    if params.axis is not None:
        shape = [1] * q.ndim
        shape[params.axis] = -1
        s, z = s.reshape(shape), z.reshape(shape)
    return (q.astype(np.float64) - z) * s


# ------------------------------------------------------------------------------------------ graph view


def _node_label(node: onnx.NodeProto, i: int) -> str:
    return node.name or f"{node.op_type}_{i}"


class _Graph:
    """Producers, consumers, constants and value-preserving aliases of one graph."""

    def __init__(self, model: onnx.ModelProto, transparent: tuple[str, ...]) -> None:
        self.model = model
        g = model.graph
        self.values: dict[str, TensorProto] = {t.name: t for t in g.initializer}
        self.nodes = list(g.node)
        self.labels = {id(n): _node_label(n, i) for i, n in enumerate(self.nodes)}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in self.nodes:
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                self.values[n.output[0]] = n.attribute[0].t
            for o in n.output:
                self.producer[o] = n
            for i in n.input:
                if i:
                    self.consumers.setdefault(i, []).append(n)
        self.inputs = [v for v in g.input if v.name not in self.values]
        self.const: set[str] = set(self.values)
        for n in self.nodes:  # in topological order, as ONNX requires
            if all(i in self.const for i in n.input if i):
                self.const.update(n.output)
        self.transparent = transparent

    def label(self, n: onnx.NodeProto) -> str:
        return self.labels[id(n)]

    def is_transparent(self, n: onnx.NodeProto) -> bool:
        if n.op_type == "Cast":
            to = next((a.i for a in n.attribute if a.name == "to"), 0)
            return to in FLOAT_TYPES
        return n.op_type in self.transparent

    def root(self, t: str) -> str:
        """The tensor ``t`` is a value-preserving copy of (through Identity, Dropout, float Cast)."""
        while t in self.producer and self.is_transparent(self.producer[t]) and self.producer[t].input:
            t = self.producer[t].input[0]
        return t

    def array(self, name: str) -> np.ndarray | None:
        tp = self.values.get(self.root(name)) if name in self.const else None
        return numpy_helper.to_array(tp) if tp is not None else None

    def compute_consumers(self, t: str, skip: tuple[str, ...]) -> list[onnx.NodeProto]:
        """Nodes reading ``t``, looking through transparent nodes and the op types in ``skip``."""
        out, todo, seen = [], [t], set()
        while todo:
            cur = todo.pop()
            for c in self.consumers.get(cur, []):
                if id(c) in seen:
                    continue
                seen.add(id(c))
                if self.is_transparent(c) or c.op_type in skip:
                    todo.extend(c.output)
                else:
                    out.append(c)
        return out

    def attrs(self, n: onnx.NodeProto) -> dict[str, object]:
        return {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}


def _params(g: _Graph, dq: onnx.NodeProto) -> QuantParams:
    scale = g.array(dq.input[1])
    zp_name = dq.input[2] if len(dq.input) > 2 and dq.input[2] else None
    zp_tp = g.values.get(g.root(zp_name)) if zp_name else None
    if zp_tp is not None:
        dtype = INT_TYPE_NAMES.get(zp_tp.data_type, str(zp_tp.data_type))
        zp = numpy_helper.to_array(zp_tp).astype(np.int64)
    else:
        src = g.values.get(dq.input[0])
        q = g.producer.get(dq.input[0])
        out_dtype = next((a.i for a in q.attribute if a.name == "output_dtype"), 0) if q is not None else 0
        code = src.data_type if src is not None else (out_dtype or TensorProto.UINT8)
        dtype = INT_TYPE_NAMES.get(code, str(code))
        zp = np.zeros_like(np.asarray(scale), dtype=np.int64)
    attrs = g.attrs(dq)
    scale = np.asarray(scale, np.float64)
    axis = int(attrs.get("axis", 1)) if scale.size > 1 else None
    return QuantParams(dtype, tuple(float(v) for v in scale.ravel()), tuple(int(v) for v in np.ravel(zp)),
                       axis, dq.domain if dq.domain not in ("", "ai.onnx") else "",
                       int(attrs.get("block_size", 0)))


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return float(a @ b / (na * nb))


class _Values:
    """Every float tensor of both graphs on one sample, computed once when first needed."""

    def __init__(self, fmodel: onnx.ModelProto, qmodel: onnx.ModelProto, sample: Mapping[str, np.ndarray],
                 qinputs: dict[str, str]) -> None:
        self.float = _run_all(fmodel, dict(sample))
        self.qdq = _run_all(qmodel, {q: sample[f] for q, f in qinputs.items() if f in sample})


def _run_all(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input)}
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    inits = {t.name for t in m.graph.initializer}
    for n in m.graph.node:
        for o in n.output:
            if o and o not in have and o not in inits and types.get(o) == TensorProto.FLOAT:
                m.graph.output.append(onnx.helper.make_tensor_value_info(o, TensorProto.FLOAT, None))
                have.add(o)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feed)))


# ------------------------------------------------------------------------------------------ matcher


@dataclass
class _State:
    origin: dict[str, tuple[str, tuple[int, ...] | None]] = field(default_factory=dict)
    how: dict[str, str] = field(default_factory=dict)
    note: dict[str, str] = field(default_factory=dict)
    reason: dict[str, str] = field(default_factory=dict)  # why a QDQ tensor has no float origin
    used: set[int] = field(default_factory=set)  # ids of float nodes already paired
    folded: dict[int, str] = field(default_factory=dict)  # id(QDQ node) -> which BatchNormalization is folded where
    # id(QDQ BatchNormalization) -> the float node that has it folded in, and that node's output
    unfolded: dict[int, tuple[onnx.NodeProto, str]] = field(default_factory=dict)
    bias_of: dict[int, str] = field(default_factory=dict)  # id(QDQ Gemm) -> float bias of the Add folded in


def match_foreign(float_model: onnx.ModelProto, qdq_model: onnx.ModelProto,
                  sample: Mapping[str, np.ndarray] | None = None) -> ForeignMatch:
    """Pair the float model's tensors with a foreign QDQ model's DequantizeLinear outputs.

    ``sample`` (one input feed of the float model, by its input names) enables the numeric fallback; without
    it, nodes structure cannot place are reported unmatched with the reason.
    """
    fg = _Graph(float_model, ("Identity", "Dropout"))
    qg = _Graph(qdq_model, ("Identity",))
    st = _State()
    qinputs = _match_inputs(fg, qg, st)
    values: list[_Values] = []

    def numeric() -> _Values | None:
        if sample is None:
            return None
        if not values:
            values.append(_Values(float_model, qdq_model, sample, qinputs))
        return values[0]

    pairs: list[TensorPair] = []
    unmatched: list[Unmatched] = []
    nodes: list[tuple[str, str]] = []
    for n in qg.nodes:
        if n.op_type == "Constant":
            continue
        if n.op_type in QDQ_OPS or qg.is_transparent(n):
            _pass_through(n, qg, st)
            if n.op_type == "DequantizeLinear" and n.output[0] not in qg.const:
                _report(n, qg, st, pairs, unmatched)
            continue
        if all(i in qg.const for i in n.input if i):
            continue
        if id(n) in st.unfolded:
            f = _bind_unfolded(n, fg, qg, st, pairs, unmatched)
            nodes.append((fg.label(f), qg.label(n)))
            continue
        f = _match_node(n, fg, qg, st, numeric)
        if f is None:
            continue
        nodes.append((fg.label(f), qg.label(n)))
        _weights(n, f, fg, qg, st, pairs, unmatched)
    reported = {p.qdq_tensor for p in pairs} | {u.qdq_tensor for u in unmatched}
    for n in qg.nodes:  # weights of nodes that found no float partner are listed too
        if n.op_type == "DequantizeLinear" and n.output[0] in qg.const and n.output[0] not in reported:
            users = ", ".join(f"{c.op_type} {qg.label(c)!r}" for c in qg.compute_consumers(n.output[0], ()))
            unmatched.append(Unmatched(n.output[0], f"constant input of {users or 'no node'}, which has no float "
                                                    "counterpart"))
    for n in qg.nodes:  # a Q whose integer output no DequantizeLinear reads (an integer graph output)
        if n.op_type == "QuantizeLinear" and not qg.consumers.get(n.output[0]):
            unmatched.append(Unmatched(n.output[0], "QuantizeLinear output without DequantizeLinear (an integer "
                                                    "graph output): no float value to compare"))
    return ForeignMatch(tuple(pairs), tuple(unmatched), tuple(nodes))


def _match_inputs(fg: _Graph, qg: _Graph, st: _State) -> dict[str, str]:
    """Graph inputs pair by name, else by position when the counts agree (tools rename inputs too)."""
    fnames = [v.name for v in fg.inputs]
    out = {}
    for i, v in enumerate(qg.inputs):
        if v.name in fnames:
            out[v.name] = v.name
        elif len(qg.inputs) == len(fnames):
            out[v.name] = fnames[i]
        else:
            st.reason[v.name] = f"graph input {v.name!r} has no float input of that name"
            continue
        st.origin[v.name] = (out[v.name], None)
        st.how[v.name] = "name"
    return out


def _pass_through(n: onnx.NodeProto, qg: _Graph, st: _State) -> None:
    src = n.input[0]
    for key in ("origin", "how", "note", "reason"):
        d = getattr(st, key)
        if src in d:
            d[n.output[0]] = d[src]


def _report(dq: onnx.NodeProto, qg: _Graph, st: _State, pairs: list, unmatched: list) -> None:
    t = dq.output[0]
    if t in st.origin:
        ft, perm = st.origin[t]
        pairs.append(TensorPair(ft, t, _params(qg, dq), "activation", st.how.get(t, "structure"), perm,
                                st.note.get(t, "")))
    else:
        unmatched.append(Unmatched(t, st.reason.get(t, "no float tensor found for its input")))


def _act_inputs(g: _Graph, n: onnx.NodeProto) -> list[str]:
    return [i for i in n.input if i and i not in g.const]


def _compatible(fop: str, qop: str) -> bool:
    """Same op, or the fused form tools emit: FusedConv for Conv, Gemm for a float MatMul (+ Add)."""
    return fop == qop or (qop == "FusedConv" and fop == "Conv") or (qop == "Gemm" and fop == "MatMul")


def _gemm_weight_perm(n: onnx.NodeProto, qg: _Graph) -> tuple[int, ...] | None:
    """A Gemm with transB holds a MatMul's [K, N] weight as [N, K]: the permutation from float to QDQ."""
    return (1, 0) if qg.attrs(n).get("transB", 0) else None


def _same_shape_consts(f: onnx.NodeProto, n: onnx.NodeProto, fg: _Graph, qg: _Graph) -> bool:
    """Weights at the same input positions have the same shape (a folded BN keeps the weight's shape)."""
    if f.op_type != n.op_type:
        return True
    for fi, qi in zip(f.input, n.input):
        if fi in fg.const and qi in qg.const:
            fa, qa = fg.array(fi), _weight_shape(qg, qi)
            if fa is not None and qa is not None and tuple(fa.shape) != qa:
                return False
    return True


def _weight_source(qg: _Graph, t: str) -> tuple[onnx.NodeProto | None, np.ndarray | None]:
    """The DequantizeLinear feeding input ``t`` (through Identity/Cast) and the float value it stands for."""
    t = qg.root(t)
    dq = qg.producer.get(t)
    if dq is None or dq.op_type != "DequantizeLinear":
        arr = qg.array(t)
        return None, arr
    q = qg.producer.get(dq.input[0])
    if q is not None and q.op_type == "QuantizeLinear":
        return dq, qg.array(q.input[0])
    raw = qg.array(dq.input[0])
    return dq, None if raw is None else dequantize(raw, _params(qg, dq))


def _weight_shape(qg: _Graph, t: str) -> tuple[int, ...] | None:
    _, arr = _weight_source(qg, t)
    return None if arr is None else tuple(arr.shape)


def _weight_cos(f: onnx.NodeProto, n: onnx.NodeProto, fg: _Graph, qg: _Graph) -> float | None:
    """Cosine of the first weight the two nodes share a position for: ties between look-alike nodes."""
    for fi, qi in zip(f.input, n.input):
        if fi in fg.const and qi in qg.const:
            fa, (_, qa) = fg.array(fi), _weight_source(qg, qi)
            if fa is not None and qa is not None and fa.shape == qa.shape:
                return _cos(fa, qa)
    return None


def _candidates(n: onnx.NodeProto, fg: _Graph, qg: _Graph, st: _State, origins: list[str]) -> list:
    pool = None
    for o in origins:
        cons = {id(c): c for c in fg.compute_consumers(o, ())}
        pool = cons if pool is None else {k: v for k, v in pool.items() if k in cons}
    out = []
    for f in (pool or {}).values():
        if id(f) in st.used or not _compatible(f.op_type, n.op_type):
            continue
        fin = [fg.root(i) for i in _act_inputs(fg, f)]
        ok = sorted(fin) == sorted(origins) if n.op_type in COMMUTATIVE else fin == origins
        if ok and _same_shape_consts(f, n, fg, qg):
            out.append(f)
    if len(out) > 1:  # same op on the same inputs: attributes, then the weights' values decide
        want = {k: v for k, v in qg.attrs(n).items() if k != "activation"}
        same = [f for f in out if fg.attrs(f) == want]
        out = same or out
    if len(out) > 1:
        scored = sorted(((_weight_cos(f, n, fg, qg), i, f) for i, f in enumerate(out)),
                        key=lambda s: -(s[0] if s[0] is not None else -2))
        if scored[0][0] is not None and scored[0][0] - (scored[1][0] or -1) > NUMERIC_MARGIN:
            out = [scored[0][2]]
    return out


def _match_node(n, fg: _Graph, qg: _Graph, st: _State, numeric) -> onnx.NodeProto | None:
    label = qg.label(n)
    ins = _act_inputs(qg, n)
    missing = [i for i in ins if i not in st.origin]
    origins, perms = [], []
    for i in ins:
        if i in st.origin:
            origins.append(st.origin[i][0])
            perms.append(st.origin[i][1])
    why = ""
    cands: list = []
    if missing:
        root = st.reason.get(missing[0], f"input {missing[0]!r} is not matched").removeprefix(UPSTREAM)
        why = UPSTREAM + root
    elif any(p is not None for p in perms):
        if n.op_type == "Transpose":
            _carry_transpose(n, qg, st, origins[0], perms[0])
            return None
        cands = _candidates(n, fg, qg, st, origins) if n.op_type in ELEMENTWISE and len(ins) == 1 else []
        if len(cands) == 1:  # an elementwise op on the transposed tensor: its output is transposed alike
            _bind(n, cands[0], fg, qg, st, "structure", perms[0])
            return cands[0]
        cands = []
        why = f"its input is a float tensor transposed by {next(p for p in perms if p is not None)}"
    else:
        cands = _candidates(n, fg, qg, st, origins)
        if not cands and n.op_type == "Transpose":
            _carry_transpose(n, qg, st, origins[0], None)
            return None
        if not cands:
            why = f"no float {n.op_type} node reads {', '.join(repr(o) for o in origins)}"
        elif len(cands) > 1:
            why = f"several float nodes fit ({', '.join(fg.label(c) for c in cands)})"
    if len(cands) == 1:
        f = cands[0]
        _bind(n, f, fg, qg, st, "structure")
        return f
    vals = numeric()
    if vals is not None:
        f = _numeric_bind(n, fg, qg, st, vals, cands)
        if f is not None:
            return f
        why += "; the numeric check on the sample found no clearly matching float tensor"
    elif cands:
        why += "; give a sample for the numeric check"
    for o in n.output:
        st.reason[o] = why if why.startswith(UPSTREAM) else (
            f"produced by {n.op_type} node {label!r}, which has no float counterpart: {why}")
    return None


def _carry_transpose(n, qg: _Graph, st: _State, ft: str, perm: tuple[int, ...] | None) -> None:
    """A Transpose the float model does not have: remember the permutation; an inverse one cancels it."""
    p = tuple(int(v) for v in qg.attrs(n).get("perm", ()))
    total = tuple(perm[i] for i in p) if perm is not None else p
    st.origin[n.output[0]] = (ft, None if total == tuple(range(len(total))) else total)
    st.how[n.output[0]] = st.how.get(n.input[0], "structure")


def _bind(n, f, fg: _Graph, qg: _Graph, st: _State, how: str, perm: tuple[int, ...] | None = None) -> None:
    st.used.add(id(f))
    for fo, qo in zip(f.output, n.output):
        if not qo:
            continue
        after = qg.compute_consumers(qo, QDQ_OPS)
        if (n.op_type in FOLDS_BN and len(after) == 1 and after[0].op_type == "BatchNormalization"
                and not any(c.op_type == "BatchNormalization" for c in fg.compute_consumers(fo, ()))):
            # The float model has this BatchNormalization folded in (float.onnx always does), the QDQ model
            # not: the value before it exists only here, and the BatchNormalization's output is the float one.
            bn = after[0]
            st.reason[qo] = (f"output of {n.op_type} {qg.label(n)!r} before BatchNormalization {qg.label(bn)!r}, "
                             f"which the float model has folded into {fg.label(f)!r}: no float tensor holds it")
            st.folded[id(n)] = f"BatchNormalization {qg.label(bn)!r} after it, folded into the float model's node"
            st.unfolded[id(bn)] = (f, fo)
            continue
        tail, note = _fold_chain(n, f, fo, qo, fg, qg, st)
        st.origin[qo] = (tail, perm)
        st.how[qo] = how
        if note:
            st.note[qo] = note


def _bind_unfolded(bn, fg: _Graph, qg: _Graph, st: _State, pairs: list, unmatched: list) -> onnx.NodeProto:
    """A BatchNormalization the float model has folded into ``f``: its output is ``f``'s; its parameters have
    no float counterpart."""
    f, fo = st.unfolded[id(bn)]
    tail, note = _fold_chain(bn, f, fo, bn.output[0], fg, qg, st)
    st.origin[bn.output[0]] = (tail, None)
    st.how[bn.output[0]] = "structure"
    st.note[bn.output[0]] = "; ".join(x for x in (f"folded into {fg.label(f)!r} in the float model", note) if x)
    for pos, qi in enumerate(bn.input[1:], 1):
        dq = qg.producer.get(qg.root(qi)) if qi in qg.const else None
        if dq is not None and dq.op_type == "DequantizeLinear":
            unmatched.append(Unmatched(dq.output[0], f"input {pos} of BatchNormalization {qg.label(bn)!r}, which the "
                                                     f"float model has folded into {fg.label(f)!r}"))
    return f


def _fold_chain(n, f, fo: str, qo: str, fg: _Graph, qg: _Graph, st: _State) -> tuple[str, str]:
    """Follow float BatchNormalization / Relu / Clip nodes the QDQ model folded away after ``n``."""
    tail, notes = fo, []
    q_next = {c.op_type for c in qg.compute_consumers(qo, QDQ_OPS)}
    while True:
        cons = fg.compute_consumers(tail, ())
        if len(cons) != 1 or id(cons[0]) in st.used:
            break
        g = cons[0]
        if g.op_type == "BatchNormalization" and n.op_type in FOLDS_BN and "BatchNormalization" not in q_next:
            st.folded[id(n)] = f"BatchNormalization {fg.label(g)!r} folded in"
            notes.append(f"BatchNormalization {fg.label(g)!r} folded in")
        elif g.op_type in ("Relu", "Clip") and g.op_type not in q_next and _clips_like(g, n, qo, fg, qg):
            notes.append(f"{g.op_type} {fg.label(g)!r} fused")
        elif (g.op_type == "Add" and n.op_type == "Gemm" and f.op_type == "MatMul" and tail == fo
              and len(n.input) > 2 and n.input[2] and "Add" not in q_next and any(i in fg.const for i in g.input)):
            st.bias_of[id(n)] = next(i for i in g.input if i in fg.const)
            notes.append(f"Add {fg.label(g)!r} is the Gemm's bias")
        else:
            break
        st.used.add(id(g))
        tail = g.output[0]
    return tail, "; ".join(notes)


def _clips_like(g, n, qo: str, fg: _Graph, qg: _Graph) -> bool:
    """The float activation ``g`` is absorbed when FusedConv applies it or every Q/DQ on ``qo`` clips like it."""
    if n.op_type == "FusedConv":
        return qg.attrs(n).get("activation", b"") in (g.op_type.encode(), g.op_type)
    lo, hi = 0.0, np.inf
    if g.op_type == "Clip":
        mn = fg.array(g.input[1]) if len(g.input) > 1 and g.input[1] else None
        mx = fg.array(g.input[2]) if len(g.input) > 2 and g.input[2] else None
        lo = float(mn) if mn is not None else -np.inf
        hi = float(mx) if mx is not None else np.inf
    dqs = [c for c in qg.compute_consumers(qo, ("QuantizeLinear",)) if c.op_type == "DequantizeLinear"]
    if not dqs:
        return False
    for dq in dqs:
        p = _params(qg, dq)
        rlo, rhi = p.real_range()
        step = max(p.scale)
        if rlo < lo - 1e-12 or rhi > hi + step:
            return False
    return True


def _numeric_bind(n, fg: _Graph, qg: _Graph, st: _State, vals: _Values, cands: list):
    """Pick the float tensor of the same shape with the clearly best cosine to the node's first output."""
    qv = vals.qdq.get(n.output[0])
    if qv is None:
        return None
    if cands:
        options = []
        for f in cands:
            t = f.output[0]
            options.append((f, t))
            for g in fg.compute_consumers(t, ()):
                if g.op_type in ("BatchNormalization", "Relu", "Clip"):
                    options.append((f, g.output[0]))
    else:
        options = [(fg.producer[t], t) for t, v in vals.float.items() if t in fg.producer and v.shape == qv.shape]
    scored = sorted(((_cos(vals.float[t], qv), t, f) for f, t in options
                     if t in vals.float and vals.float[t].shape == qv.shape), key=lambda s: -s[0])
    if not scored or scored[0][0] < NUMERIC_MIN_COS:
        return None
    if len(scored) > 1 and scored[1][2] is not scored[0][2] and scored[0][0] - scored[1][0] < NUMERIC_MARGIN:
        return None
    best_cos, tail, f = scored[0]
    st.used.add(id(f))
    st.origin[n.output[0]] = (tail, None)
    st.how[n.output[0]] = "numeric"
    st.note[n.output[0]] = f"cos {best_cos:.6f} on the sample"
    return f


def _weights(n, f, fg: _Graph, qg: _Graph, st: _State, pairs: list, unmatched: list) -> None:
    """Pair the node's DequantizeLinear-fed constant inputs with the float node's weights at the same position."""
    for pos, qi in enumerate(n.input):
        if not qi or qi not in qg.const:
            continue
        dq = qg.producer.get(qg.root(qi))
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        t = dq.output[0]
        fi = f.input[pos] if pos < len(f.input) else ""
        perm = _gemm_weight_perm(n, qg) if (f.op_type, n.op_type, pos) == ("MatMul", "Gemm", 1) else None
        if (f.op_type, n.op_type, pos) == ("MatMul", "Gemm", 2):
            fi = st.bias_of.get(id(n), "")
        if id(n) in st.folded:
            unmatched.append(Unmatched(t, f"input {pos} of {n.op_type} {qg.label(n)!r}, which has "
                                          f"{st.folded[id(n)]}: its values differ "
                                          "from the float model's by design"))
        elif not fi or fi not in fg.const:
            unmatched.append(Unmatched(t, f"input {pos} of {n.op_type} {qg.label(n)!r} is constant, but the "
                                          f"float node {fg.label(f)!r} has no constant there"))
        else:
            fa, shape = fg.array(fi), _weight_shape(qg, qi)
            if fa is not None and perm is not None:
                fa = np.transpose(fa, perm)
            if fa is not None and shape is not None and tuple(fa.shape) != shape:
                unmatched.append(Unmatched(t, f"weight shape {list(shape)} differs from the float weight "
                                              f"{fg.root(fi)!r} {list(fa.shape)}"))
            else:
                pairs.append(TensorPair(fg.root(fi), t, _params(qg, dq), "weight", "structure", perm))


# ------------------------------------------------------------------------------------------ engine layers


@dataclass(frozen=True)
class ForeignLayers:
    """A foreign QDQ model seen the way the engine sees our own conversion.

    ``layers`` has one entry per float layer output (graph order), pointing at the DequantizeLinear output and
    the QuantizeLinear output that carry it, or saying why nothing does; ``float_of`` maps the QDQ model's
    tensors that QuantizeLinear nodes read to the float tensors they stand for (and the permutation that lays
    the float tensor out as the QDQ model holds it), so the own-error pass can feed float values in their place.
    """

    layers: tuple[Layer, ...]
    float_of: Mapping[str, tuple[str, tuple[int, ...] | None]]


NOT_IN_QDQ = ("no QuantizeLinear/DequantizeLinear pair of the quantized model carries this tensor (its tool "
              "left it in float or merged the node into the next one)")


def foreign_layers(float_model: onnx.ModelProto, qdq_model: onnx.ModelProto, match: ForeignMatch) -> ForeignLayers:
    """The engine's layer list from ``match_foreign``'s pairs (activation pairs only; weights are not layers).

    A float tensor quantized several times (a Q/DQ pair per consumer, as TensorRT-style exports do) is compared
    at its first pair in the QDQ model's order, one without a transpose preferred.
    """
    producer = {o: n for n in qdq_model.graph.node for o in n.output}
    best: dict[str, TensorPair] = {}
    for p in match.activations():
        if p.float_tensor not in best or (best[p.float_tensor].perm is not None and p.perm is None):
            best[p.float_tensor] = p
    float_of: dict[str, tuple[str, tuple[int, ...] | None]] = {}
    layers = []
    for position, (name, op_type, tensor) in enumerate(float_layers(float_model)):
        p = best.get(tensor)
        if p is None:
            layers.append(Layer(name, op_type, tensor, position, skip=NOT_IN_QDQ))
            continue
        dq = producer[p.qdq_tensor]
        q = producer.get(dq.input[0])
        quant = dq.input[0] if q is not None and q.op_type.endswith("QuantizeLinear") else None
        if quant is not None:
            float_of[q.input[0]] = (tensor, p.perm)
        float_of[p.qdq_tensor] = (tensor, p.perm)
        qp = p.params
        layers.append(Layer(name, op_type, tensor, position, fixed_tensor=p.qdq_tensor, quant_tensor=quant,
                            qparams=QParams(qp.dtype, qp.scale, qp.zero_point, qp.axis), perm=p.perm))
    return ForeignLayers(tuple(layers), float_of)
