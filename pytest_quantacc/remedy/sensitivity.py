"""Per-site sensitivity of a QDQ model, from one float model and one set of calibrated ranges.

Changing a site's precision needs no re-calibration: the calibrated range of a tensor does not depend on the
precision of the others. So every quantized site of ``fixed.onnx`` (an activation's QuantizeLinear ->
DequantizeLinear pair, or a weight's pre-quantized initializer -> DequantizeLinear) is re-created on the
*float* graph behind a switch: ``Where(on[i], Where(wide[i], DQ16(Q16(x)), DQ8(Q8(x))), x)``, the switches
being two boolean vector inputs of the graph. One ONNX Runtime session then evaluates any mix of float /
8-bit / 16-bit sites: "quantize this site alone", "the fixed model with this site left in float", "... raised
to 16 bits", without a new session per site (a session over a large graph costs more than a run).

The 8-bit branch uses fixed.onnx's own scales, zero points and quantized weights, so all switches on
reproduces the fixed model (bit for bit on the planted and example models; tests check it). The 16-bit
branch re-quantizes the same represented range, ``[(qmin - zp) * s, (qmax - zp) * s]``, to int16 / uint16
(scale = range / 65535), with ONNX Runtime's com.microsoft Q/DQ ops, which take 16-bit types at any opset.
A bias (int32, scale = input scale x weight scale) follows its weight's switch and stays as fixed.onnx has it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..engine.metrics import tensor_metrics
from ..engine.runner import Runner

FLOAT, INT8, INT16 = 0, 8, 16  # per-site levels of a configuration
ON_INPUT, WIDE_INPUT = "quantacc_on", "quantacc_wide"
DEFAULT_SAMPLES = 4  # evaluation samples a ranking uses: enough to order sites, cheap on any model
_MS = "com.microsoft"
_F = "__quantacc_f"
_RANGES = {onnx.TensorProto.UINT8: (0, 255), onnx.TensorProto.INT8: (-128, 127),
           onnx.TensorProto.UINT16: (0, 65535), onnx.TensorProto.INT16: (-32768, 32767)}
_WIDE = {onnx.TensorProto.UINT8: onnx.TensorProto.UINT16, onnx.TensorProto.INT8: onnx.TensorProto.INT16}


@dataclass(frozen=True)
class QuantSite:
    """One quantized tensor of fixed.onnx, named in the float graph.

    ``node`` is the node an override acts on: an activation's producer ("" for a graph input), a weight's
    consumer. ``consumers`` are the float-graph nodes that read the quantized value.
    """

    index: int
    tensor: str
    kind: str  # "activation" | "weight"
    node: str
    consumers: tuple[str, ...]
    dtype: str  # the 8-bit type of fixed.onnx
    # tensors quantized with this site's scale (MaxPool/Reshape/... outputs): they follow it
    shared: tuple[str, ...] = ()


@dataclass(frozen=True)
class Effect:
    """Model outputs of one configuration against float: worst over samples per output, then over outputs."""

    cos: float
    rmse: float
    per_output: tuple[tuple[str, float, float], ...]  # (output, worst cos, worst relative rmse)

    def as_json(self) -> dict:
        return {"cos": self.cos, "rmse": self.rmse,
                "per_output": [{"output": o, "cos": c, "rmse": r} for o, c, r in self.per_output]}


@dataclass(frozen=True)
class Sensitivity:
    """One site's measured effect; ``score`` (1 - cos of quantizing it alone) orders the ranking."""

    site: QuantSite
    alone: Effect  # float model with only this site quantized (8-bit)
    left_float: Effect | None  # fixed model with this site in float (None: not measured)
    raised: Effect | None  # fixed model with this site at 16 bits (None: not measured)
    metric: str
    score: float

    def as_json(self) -> dict:
        return {"node": self.site.node, "site": self.site.tensor, "kind": self.site.kind, "metric": self.metric,
                "score": self.score, "alone": self.alone.as_json(),
                "left_float": self.left_float.as_json() if self.left_float else None,
                "raised": self.raised.as_json() if self.raised else None}


@dataclass(frozen=True)
class _Params:
    """What fixed.onnx holds for a site: 8-bit scale/zero point (and quantized weight), axis."""

    scale: np.ndarray
    zero_point: np.ndarray
    axis: int | None
    quantized: np.ndarray | None = None  # weights: fixed.onnx's quantized initializer
    bias: tuple[str, int, np.ndarray, np.ndarray, np.ndarray] | None = None  # (float name, input index, q, s, zp)


def _attr(node: onnx.NodeProto, name: str) -> int | None:
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), None)


class NotSwitchable(ValueError):
    """fixed.onnx has a site the switchboard cannot re-create at 8 and 16 bits (4-bit, already 16-bit)."""


def wide_params(scale: np.ndarray, zero_point: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """16-bit scale and zero point representing the same range as the 8-bit ``scale``/``zero_point``."""
    dtype = helper.np_dtype_to_tensor_dtype(zero_point.dtype)
    if dtype not in _WIDE:
        raise NotSwitchable(f"a {onnx.TensorProto.DataType.Name(dtype).lower()} site has no 8/16-bit switch")
    qmin, qmax = _RANGES[dtype]
    wide = _WIDE[dtype]
    wmin, wmax = _RANGES[wide]
    s = scale.astype(np.float64)
    lo, hi = (qmin - zero_point.astype(np.float64)) * s, (qmax - zero_point.astype(np.float64)) * s
    s16 = ((hi - lo) / (wmax - wmin)).astype(np.float32)
    zp16 = np.clip(np.rint(wmin - lo / s16.astype(np.float64)), wmin, wmax)
    return s16, zp16.astype(helper.tensor_dtype_to_np_dtype(wide))


def _quantize_np(w: np.ndarray, s: np.ndarray, zp: np.ndarray, axis: int | None) -> np.ndarray:
    """QuantizeLinear in numpy (float32 division, round half to even, saturate), as ONNX Runtime computes it."""
    if axis is not None and s.ndim == 1:
        shape = [1] * w.ndim
        shape[axis] = -1
        s, zp = s.reshape(shape), zp.reshape(shape)
    lo, hi = _RANGES[helper.np_dtype_to_tensor_dtype(zp.dtype)]
    q = np.rint(w.astype(np.float32) / s.astype(np.float32)) + zp.astype(np.float32)
    return np.clip(q, lo, hi).astype(zp.dtype)


def find_sites(float_model: onnx.ModelProto, fixed_model: onnx.ModelProto) -> tuple[list[QuantSite], list[_Params]]:
    """The quantized sites of ``fixed_model`` that exist in ``float_model``, in fixed.onnx's node order."""
    fixed_inits = {i.name: i for i in fixed_model.graph.initializer}
    float_inits = {i.name for i in float_model.graph.initializer}
    f_nodes = {n.name: n for n in float_model.graph.node}
    f_prod = {t: n.name for n in float_model.graph.node for t in n.output}
    f_users: dict[str, list[str]] = {}
    for n in float_model.graph.node:
        for t in n.input:
            f_users.setdefault(t, []).append(n.name)
    graph_inputs = {i.name for i in float_model.graph.input}
    users: dict[str, list[onnx.NodeProto]] = {}
    for n in fixed_model.graph.node:
        for t in n.input:
            users.setdefault(t, []).append(n)

    def arr(name: str) -> np.ndarray:
        return numpy_helper.to_array(fixed_inits[name])

    sites: list[QuantSite] = []
    params: list[_Params] = []
    seen: set[str] = set()
    shared_by: dict[tuple[str, str], int] = {}  # (scale, zero point) initializer names -> activation site
    weights: dict[str, int] = {}  # compute node -> index of its weight site
    biases: list[tuple[onnx.NodeProto, onnx.NodeProto, int]] = []
    for n in fixed_model.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] not in fixed_inits:
            t = n.input[0].removesuffix("_QuantizeLinear_Input")
            if t in seen or not (t in f_prod or t in graph_inputs) or \
                    not any(d.op_type == "DequantizeLinear" for d in users.get(n.output[0], [])):
                continue
            seen.add(t)
            owner = shared_by.get((n.input[1], n.input[2]))
            if owner is not None:  # the quantizer shares the range: the tensor follows the site that owns it
                sites[owner] = replace(sites[owner], shared=sites[owner].shared + (t,),
                                       consumers=sites[owner].consumers + tuple(f_users.get(t, [])))
                continue
            shared_by[(n.input[1], n.input[2])] = len(sites)
            zp = arr(n.input[2])
            sites.append(QuantSite(len(sites), t, "activation", f_prod.get(t, ""), tuple(f_users.get(t, [])),
                                   onnx.TensorProto.DataType.Name(helper.np_dtype_to_tensor_dtype(zp.dtype)).lower()))
            params.append(_Params(arr(n.input[1]), zp, _attr(n, "axis")))
        elif n.op_type == "DequantizeLinear" and n.input[0] in fixed_inits:
            for user in users.get(n.output[0], []):
                k = list(user.input).index(n.output[0])
                fn = f_nodes.get(user.name)
                if fn is None or k >= len(fn.input) or fn.input[k] not in float_inits:
                    continue
                q = arr(n.input[0])
                if q.dtype == np.int32:  # a bias: attached to its node's weight site below
                    biases.append((n, fn, k))
                    continue
                weights[fn.name] = len(sites)
                sites.append(QuantSite(len(sites), fn.input[k], "weight", fn.name, (fn.name,),
                                       onnx.TensorProto.DataType.Name(helper.np_dtype_to_tensor_dtype(q.dtype)).lower()))
                zp = arr(n.input[2]) if len(n.input) > 2 and n.input[2] else np.zeros((), q.dtype)
                params.append(_Params(arr(n.input[1]), zp, _attr(n, "axis"), q))
    for dq, fn, k in biases:
        i = weights.get(fn.name)
        if i is not None:
            zp = arr(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else np.zeros((), np.int32)
            params[i] = _Params(params[i].scale, params[i].zero_point, params[i].axis, params[i].quantized,
                                (fn.input[k], k, arr(dq.input[0]), arr(dq.input[1]), zp))
    return sites, params


def build(float_model: onnx.ModelProto, fixed_model: onnx.ModelProto, levels: Sequence[int] | None = None,
          wide: bool = True) -> tuple[onnx.ModelProto, list[QuantSite]]:
    """The float graph with fixed.onnx's sites re-created: behind switches (``levels`` None) or fixed at
    ``levels`` (one per site: FLOAT, INT8 or INT16), the latter being a plain QDQ model ONNX Runtime can fuse.
    A switched graph without ``wide`` has no 16-bit branch (float / int8 only): a run computes every branch
    of every switch, and the 16-bit one is half of that work."""
    sites, params = find_sites(float_model, fixed_model)
    model = onnx.ModelProto()
    model.CopyFrom(float_model)
    g = model.graph
    float_values = {i.name: numpy_helper.to_array(i) for i in float_model.graph.initializer}
    if not any(o.domain == _MS for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(_MS, 1))
    inits: list[onnx.TensorProto] = []
    head: list[onnx.NodeProto] = []  # nodes that read only initializers and switches
    after: dict[str, list[onnx.NodeProto]] = {}  # producer node name -> nodes inserted right after it
    rename: dict[tuple[str, int], str] = {}  # (node, input index) -> new input name
    switched = levels is None
    if switched:
        n = len(sites)
        g.input.extend([helper.make_tensor_value_info(ON_INPUT, onnx.TensorProto.BOOL, [n]),
                        helper.make_tensor_value_info(WIDE_INPUT, onnx.TensorProto.BOOL, [n])])

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def pick(site: QuantSite, x: str, d8: str, d16: str, out: str, nodes: list[onnx.NodeProto], q: str) -> None:
        """``out`` = the site's value at its level (switched: selected at run time by the site's flags)."""
        p = f"quantacc_s{site.index}"
        if switched:
            if wide:
                nodes.append(helper.make_node("Where", [f"{p}_wide", d16, d8], [f"{q}_bits"], name=f"{q}_pick_bits"))
            bits = f"{q}_bits" if wide else d8
            nodes.append(helper.make_node("Where", [f"{p}_on", bits, x], [out], name=f"{q}_pick"))
        else:
            src = {FLOAT: x, INT8: d8, INT16: d16}[levels[site.index]]
            nodes.append(helper.make_node("Identity", [src], [out], name=f"{q}_pick"))

    f_prod = {t: n.name for n in g.node for t in n.output}
    wrapped: set[str] = set()  # activation tensors whose producer now writes ``<tensor>__quantacc_f``
    for site, par in zip(sites, params):
        p = f"quantacc_s{site.index}"
        level = None if switched else levels[site.index]
        sixteen = level == INT16 or (level is None and wide)
        if switched:  # the site's two flags, read once from the switch vectors
            idx = const(f"{p}_index", np.array(site.index, np.int64))
            head.append(helper.make_node("Gather", [ON_INPUT, idx], [f"{p}_on"], name=f"{p}_on"))
            if wide:
                head.append(helper.make_node("Gather", [WIDE_INPUT, idx], [f"{p}_wide"], name=f"{p}_wide"))
        axis = {} if par.axis is None else {"axis": par.axis}
        s16, zp16 = wide_params(par.scale, par.zero_point)
        nodes: list[onnx.NodeProto] = []
        if site.kind == "activation":
            s, zp = const(f"{p}_scale", par.scale), const(f"{p}_zp", par.zero_point)
            if sixteen:
                w_s, w_zp = const(f"{p}_scale16", s16), const(f"{p}_zp16", zp16)
            for j, t in enumerate((site.tensor, *site.shared)):
                producer, nodes, q = f_prod.get(t, ""), [], f"{p}_{j}"
                x = t + _F if producer else t
                d8 = d16 = x
                if level in (None, INT8):
                    nodes += [helper.make_node("QuantizeLinear", [x, s, zp], [f"{q}_q8"], name=f"{q}_q8", **axis),
                              helper.make_node("DequantizeLinear", [f"{q}_q8", s, zp], [f"{q}_d8"], name=f"{q}_d8",
                                               **axis)]
                    d8 = f"{q}_d8"
                if sixteen:
                    nodes += [helper.make_node("QuantizeLinear", [x, w_s, w_zp], [f"{q}_q16"], name=f"{q}_q16",
                                               domain=_MS, **axis),
                              helper.make_node("DequantizeLinear", [f"{q}_q16", w_s, w_zp], [f"{q}_d16"],
                                               name=f"{q}_d16", domain=_MS, **axis)]
                    d16 = f"{q}_d16"
                if producer:  # the producer writes x; the switch writes the tensor its consumers read
                    pick(site, x, d8, d16, t, nodes, q)
                    after[producer] = after.get(producer, []) + nodes
                    wrapped.add(t)
                else:  # a graph input keeps its name: its consumers are pointed at the switch
                    pick(site, x, d8, d16, f"{q}_value", nodes, q)
                    head += nodes
                    for fn in g.node:
                        for k, name in enumerate(fn.input):
                            if name == t:
                                rename[(fn.name, k)] = f"{q}_value"
            continue
        fn = next(n for n in g.node if n.name == site.node)
        k = list(fn.input).index(site.tensor)
        d8 = d16 = site.tensor
        if level in (None, INT8):
            ins = [const(f"{p}_w8", par.quantized), const(f"{p}_scale", par.scale), const(f"{p}_zp", par.zero_point)]
            nodes.append(helper.make_node("DequantizeLinear", ins, [f"{p}_d8"], name=f"{p}_d8", **axis))
            d8 = f"{p}_d8"
        if sixteen:
            w16 = _quantize_np(float_values[site.tensor], s16, zp16, par.axis)
            ins = [const(f"{p}_w16", w16), const(f"{p}_scale16", s16), const(f"{p}_zp16", zp16)]
            nodes.append(helper.make_node("DequantizeLinear", ins, [f"{p}_d16"], name=f"{p}_d16", domain=_MS, **axis))
            d16 = f"{p}_d16"
        pick(site, site.tensor, d8, d16, f"{p}_value", nodes, p)
        rename[(fn.name, k)] = f"{p}_value"
        if par.bias is not None:
            b_float, bk, bq, bs, bzp = par.bias
            bias_nodes: list[onnx.NodeProto] = []
            b8 = b_float
            if level != FLOAT:
                ins = [const(f"{p}_b32", bq), const(f"{p}_bscale", bs), const(f"{p}_bzp", bzp)]
                bias_nodes.append(helper.make_node("DequantizeLinear", ins, [f"{p}_b"], name=f"{p}_b"))
                b8 = f"{p}_b"
            if switched:
                bias_nodes.append(helper.make_node("Where", [f"{p}_on", b8, b_float], [f"{p}_bias"],
                                                   name=f"{p}_pick_bias"))
            else:
                bias_nodes.append(helper.make_node("Identity", [b8], [f"{p}_bias"], name=f"{p}_pick_bias"))
            nodes += bias_nodes
            rename[(fn.name, bk)] = f"{p}_bias"
        head += nodes

    out_nodes: list[onnx.NodeProto] = list(head)
    for fn in g.node:
        node = onnx.NodeProto()
        node.CopyFrom(fn)
        for k in range(len(node.input)):
            node.input[k] = rename.get((fn.name, k), node.input[k])
        for k, t in enumerate(node.output):
            if t in wrapped:
                node.output[k] = t + _F
        out_nodes.append(node)
        out_nodes += after.get(fn.name, [])
    del g.node[:]
    g.node.extend(out_nodes)
    g.initializer.extend(inits)
    return model, sites


def effect(reference: Sequence[dict[str, np.ndarray]], values: Sequence[dict[str, np.ndarray]],
           outputs: Sequence[str]) -> Effect:
    """Worst-sample cos and relative rmse of each output of ``values`` against ``reference``."""
    per = []
    for o in outputs:
        ms = [tensor_metrics(r[o], v[o]) for r, v in zip(reference, values)]
        per.append((o, min(m["cos"] for m in ms), max(m["rmse"] for m in ms)))
    return Effect(min(c for _, c, _ in per), max(r for _, _, r in per), tuple(per))


class Switchboard:
    """One session over the switched graph: run any per-site configuration on a few evaluation samples.

    ``tensors`` (float-graph names) are exposed beside the model outputs, so a configuration can be judged
    layer by layer as the float-vs-fixed comparison judges fixed.onnx. ``runs`` and ``seconds`` count the
    inference spent, which the search reports.
    """

    def __init__(self, float_model: onnx.ModelProto, fixed_model: onnx.ModelProto, samples: Sequence[dict],
                 threads: int = 1, data_dir: Path | None = None, tensors: Sequence[str] = (),
                 wide: bool = True) -> None:
        model, self.sites = build(float_model, fixed_model, wide=wide)
        self.wide = wide
        self.outputs = [o.name for o in float_model.graph.output]
        self.kept = set(self.outputs) | set(tensors)
        self.samples = list(samples)
        self._runner = Runner(model, list(tensors), optimize=False, threads=threads, data_dir=data_dir)
        self.threads = threads
        self.runs = 0
        self.seconds = 0.0
        self.reference = self.run([FLOAT] * len(self.sites))

    def run(self, levels: Sequence[int]) -> list[dict[str, np.ndarray]]:
        """Model outputs (and exposed tensors) per sample with each site at its level (FLOAT, INT8, INT16)."""
        return list(self.each(levels))

    def each(self, levels: Sequence[int]) -> Iterator[dict[str, np.ndarray]]:
        """``run`` one sample at a time, so a consumer that reduces as it goes holds one sample's tensors."""
        for s in self.samples:
            yield self.run_one(levels, s)

    def run_one(self, levels: Sequence[int], sample: dict) -> dict[str, np.ndarray]:
        """One configuration on one sample (any sample, not only the board's)."""
        lv = np.asarray(levels)
        if not self.wide and (lv == INT16).any():
            raise ValueError("this switchboard was built without 16-bit branches")
        t0 = time.perf_counter()
        out = {o: v for o, v in self._runner.run({**sample, ON_INPUT: lv != FLOAT, WIDE_INPUT: lv == INT16}).items()
               if o in self.kept}
        self.runs += 1
        self.seconds += time.perf_counter() - t0
        return out

    def add_samples(self, samples: Sequence[dict]) -> None:
        """Judge every configuration on these samples too (their float reference is run now)."""
        for s in samples:
            self.samples.append(s)
            self.reference.append(self.run_one([FLOAT] * len(self.sites), s))

    def effect(self, levels: Sequence[int]) -> Effect:
        return effect(self.reference, self.run(levels), self.outputs)

    def fixed_levels(self, raised: frozenset[int] = frozenset(), level: int = INT16) -> list[int]:
        """fixed.onnx's configuration with the sites in ``raised`` set to ``level``."""
        return [level if i in raised else INT8 for i in range(len(self.sites))]


def _dequantize_np(q: np.ndarray, s: np.ndarray, zp: np.ndarray, axis: int | None) -> np.ndarray:
    if axis is not None and s.ndim == 1:
        shape = [1] * q.ndim
        shape[axis] = -1
        s, zp = s.reshape(shape), zp.reshape(shape)
    return ((q.astype(np.float64) - zp.astype(np.float64)) * s.astype(np.float64)).astype(np.float32)


def local_errors(float_model: onnx.ModelProto, fixed_model: onnx.ModelProto, board: Switchboard) -> list[float]:
    """Per site, the relative rmse its own int8 quantize-dequantize adds to its float tensor, whole or per
    channel, whichever is worse (activations: on
    the board's samples, from the float run it already holds, so the board must expose them (a site it does
    not expose counts 0); weights: the initializer): no run at all.

    Not the effect on the gates (downstream layers amplify or absorb it), but a free first order for models
    with too many sites to measure each one alone."""
    _, params = find_sites(float_model, fixed_model)
    weights = {i.name: i for i in float_model.graph.initializer}
    out = []
    for site, par in zip(board.sites, params):
        if site.kind == "weight":
            x = numpy_helper.to_array(weights[site.tensor]).astype(np.float32)
            pairs = [(x, _dequantize_np(par.quantized, par.scale, par.zero_point, par.axis))]
            axis = 0
        else:
            xs = [r.get(site.tensor, sample.get(site.tensor)) for r, sample in zip(board.reference, board.samples)]
            pairs = [(x, _dequantize_np(_quantize_np(x, par.scale, par.zero_point, par.axis), par.scale,
                                        par.zero_point, par.axis)) for x in xs if x is not None]
            axis = 1
        out.append(max(_relative_rmse(pairs, None), _relative_rmse(pairs, axis)))
    return out


def _relative_rmse(pairs: list[tuple[np.ndarray, np.ndarray]], axis: int | None) -> float:
    """Relative rmse of the pairs (float, dequantized) as a whole (``axis`` None) or the median over the
    channels of ``axis``: an outlier channel that sets the range also dominates the whole tensor's norm and
    hides the damage to the others (the masking the per-layer gates exist for), the median does not."""
    if not pairs:
        return 0.0
    if axis is None or pairs[0][0].ndim <= axis:
        num = sum(float(np.sum((q.astype(np.float64) - x) ** 2)) for x, q in pairs)
        den = sum(float(np.sum(x.astype(np.float64) ** 2)) for x, _ in pairs)
        return float(np.sqrt(num / den)) if den > 0 else 0.0
    axes = tuple(k for k in range(pairs[0][0].ndim) if k != axis)
    num = sum(np.sum((q.astype(np.float64) - x) ** 2, axis=axes) for x, q in pairs)
    den = sum(np.sum(x.astype(np.float64) ** 2, axis=axes) for x, _ in pairs)
    live = den > 0
    return float(np.median(np.sqrt(num[live] / den[live]))) if live.any() else 0.0


def rank(board: Switchboard, metric: str = "cos",
         gates: Callable[[Sequence[int], list[dict]], float] | None = None,
         deadline: float | None = None, both_ways: bool = True,
         only: Sequence[int] | None = None) -> tuple[list[Sensitivity], int]:
    """Every site measured three ways, most sensitive (to being quantized alone) first; returns the ranking and
    how many sites were measured before ``deadline`` (``time.monotonic()``; the rest are left out).

    ``metric`` "cos" scores by 1 - cos of the outputs, "rmse" by their relative rmse; ``gates`` (a function of
    one configuration's levels, filling the list with its outputs: the worst normalized margin of the gated
    layers, below 0 when one fails)
    scores by how far quantizing the site alone pushes the gates ("gate margin": 1 - margin), which sees a
    layer the outputs hide. Ties keep fixed.onnx's order. ``both_ways`` False measures only "alone" (one
    run per site instead of three: what a large model's search can afford). ``only`` (site indices) measures
    just those, in that order.
    """
    n = len(board.sites)
    found = []
    for site in (board.sites if only is None else [board.sites[i] for i in only]):
        if deadline is not None and time.monotonic() > deadline:
            break
        levels = [INT8 if i == site.index else FLOAT for i in range(n)]
        if gates is not None:  # one pass: the gates reduce every tensor, the outputs are kept for the effect
            kept: list[dict] = []
            gate_margin = gates(levels, kept)
            alone = effect(board.reference, kept, board.outputs)
        else:
            alone = board.effect(levels)
        left = board.effect([FLOAT if i == site.index else INT8 for i in range(n)]) if both_ways else None
        raised = board.effect(board.fixed_levels(frozenset({site.index}))) if both_ways else None
        if gates is not None:
            score, name = 1.0 - gate_margin, "gate margin"
        else:
            score, name = (1.0 - alone.cos if metric == "cos" else alone.rmse), metric
        found.append(Sensitivity(site, alone, left, raised, name, score))
    return sorted(found, key=lambda s: -s.score), len(found)
