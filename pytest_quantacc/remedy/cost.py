"""Deployment cost of a remedy: MACs and parameters per precision, and the measured latency.

"16-bit everywhere" passes on most failing models and runs slower than float on ONNX Runtime's CPU kernels,
so a remedy is only worth offering with its cost: the share of MACs and parameters left at 8 bits, raised to
16 or kept in float, and the median latency of its deployable model beside int8 and float on this machine.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

COUNTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_SIXTEEN = (onnx.TensorProto.INT16, onnx.TensorProto.UINT16)


@dataclass(frozen=True)
class NodeCost:
    node: str
    op_type: str
    macs: int
    params: int


@dataclass(frozen=True)
class Shares:
    """Fractions of MACs and parameters (of the counted ops) at each precision; each triple sums to 1."""

    macs_8: float
    macs_16: float
    macs_float: float
    params_8: float
    params_16: float
    params_float: float


@dataclass(frozen=True)
class Latency:
    """Median milliseconds per run, batch as fed, the same thread count for all three models."""

    ms: float
    int8_ms: float
    float_ms: float

    @property
    def slower_than_float(self) -> bool:
        return self.ms > self.float_ms * 1.05  # beyond timing noise


def cost_json(s: Shares, lat: Latency | None) -> dict:
    """``diagnosis.cost`` / an attempt's ``cost`` (docs/CONTRACT.md): the shares, and the latency if measured."""
    out = {"shares": {k: round(v, 4) for k, v in asdict(s).items()}}
    if lat is not None:
        out.update(latency_ms=round(lat.ms, 3), latency_int8_ms=round(lat.int8_ms, 3),
                   latency_float_ms=round(lat.float_ms, 3), slower_than_float=lat.slower_than_float)
    return out


def _shapes(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]]) -> dict[str, list[int]]:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for vi in m.graph.input:
        if vi.name in input_shapes:
            dims = vi.type.tensor_type.shape.dim
            del dims[:]
            dims.extend(onnx.TensorShapeProto.Dimension(dim_value=int(d)) for d in input_shapes[vi.name])
    m = onnx.shape_inference.infer_shapes(m)
    out = {}
    for vi in [*m.graph.input, *m.graph.value_info, *m.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            out[vi.name] = [d.dim_value for d in dims]
    for init in m.graph.initializer:
        out[init.name] = list(init.dims)
    return out


def node_costs(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]]) -> list[NodeCost]:
    """MACs (at ``input_shapes``) and parameters (initializer elements read) of every counted node."""
    shapes = _shapes(model, input_shapes)
    inits = {i.name for i in model.graph.initializer}
    costs = []
    for n in model.graph.node:
        if n.op_type not in COUNTED_OPS:
            continue
        params = sum(int(np.prod(shapes[t])) for t in n.input if t in inits)
        a = shapes.get(n.input[0])
        b = shapes.get(n.input[1])
        y = shapes.get(n.output[0])
        attrs = {x.name: helper.get_attribute_value(x) for x in n.attribute}
        if n.op_type == "Conv" and b and y:  # every output element: Cin/group * kernel products
            macs = int(np.prod(y)) * int(np.prod(b[1:]))
        elif n.op_type == "ConvTranspose" and a and b:  # every input element scatters Cout/group * kernel
            macs = int(np.prod(a)) * int(np.prod(b[1:]))
        elif n.op_type == "Gemm" and a and b:
            k = a[0] if attrs.get("transA", 0) else a[1]
            cols = b[0] if attrs.get("transB", 0) else b[1]
            rows = a[1] if attrs.get("transA", 0) else a[0]
            macs = rows * k * cols
        elif n.op_type == "MatMul" and a and y:
            macs = int(np.prod(y)) * a[-1]
        else:
            macs = 0
        costs.append(NodeCost(n.name, n.op_type, macs, params))
    return costs


def shares(costs: Sequence[NodeCost], raised: set[str] = frozenset(), excluded: set[str] = frozenset()) -> Shares:
    """Shares at 8 / 16 bits / float when the nodes in ``raised`` run at 16 bits and ``excluded`` in float."""
    def split(field: str) -> tuple[float, float, float]:
        total = sum(getattr(c, field) for c in costs) or 1
        f = sum(getattr(c, field) for c in costs if c.node in excluded) / total
        w = sum(getattr(c, field) for c in costs if c.node in raised and c.node not in excluded) / total
        return 1.0 - w - f, w, f
    m, p = split("macs"), split("params")
    return Shares(*m, *p)


def precisions(qdq_model: onnx.ModelProto) -> dict[str, int]:
    """Bits of every counted node of a QDQ model: 16 when an input is dequantized from a 16-bit type, 8 when
    from an 8-bit one; nodes without a dequantized input are absent (they run in float)."""
    inits = {i.name: i.data_type for i in qdq_model.graph.initializer}
    made = {t: n for n in qdq_model.graph.node for t in n.output}

    def bits(dq: onnx.NodeProto) -> int:
        q = made.get(dq.input[0])
        zp = dq.input[2] if len(dq.input) > 2 and dq.input[2] else (
            q.input[2] if q is not None and q.op_type == "QuantizeLinear" and len(q.input) > 2 else "")
        dtype = inits.get(zp) or inits.get(dq.input[0]) or onnx.TensorProto.UINT8
        return 16 if dtype in _SIXTEEN else 8

    out = {}
    for n in qdq_model.graph.node:
        if n.op_type not in COUNTED_OPS:
            continue
        found = [bits(made[t]) for t in n.input if t in made and made[t].op_type == "DequantizeLinear"]
        if found:
            out[n.name] = max(found)
    return out


def shares_of(costs: Sequence[NodeCost], bits: Mapping[str, int]) -> Shares:
    """Shares with each node at its ``bits`` (from :func:`precisions`; absent: float)."""
    return shares(costs, {c.node for c in costs if bits.get(c.node) == 16},
                  {c.node for c in costs if c.node not in bits})


def latency_ms(model: onnx.ModelProto | Path, feeds: Mapping[str, np.ndarray], runs: int = 20, threads: int = 1,
               warmup: int = 3) -> float:
    """Median wall time of ``runs`` runs with all ONNX Runtime optimizations (integer kernels for QDQ). A path
    is handed to ONNX Runtime as is, so a model with external data is not loaded into Python."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    sess = ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
    fed = {i.name for i in sess.get_inputs()}
    feed = {k: v for k, v in feeds.items() if k in fed}
    for _ in range(warmup):
        sess.run(None, feed)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def compare_latency(remedy: onnx.ModelProto | Path, int8: onnx.ModelProto | Path, float_model: onnx.ModelProto | Path,
                    feeds: Mapping[str, np.ndarray], runs: int = 20, threads: int = 1) -> Latency:
    """The remedy's deployable model beside the int8 (fixed.onnx) and float models, measured the same way."""
    return Latency(*(latency_ms(m, feeds, runs, threads) for m in (remedy, int8, float_model)))
