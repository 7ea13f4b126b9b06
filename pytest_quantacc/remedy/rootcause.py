"""Why the root-cause layer broke: quantization statistics of the few tensors involved.

Metrics along the graph say *where* the error appears; the engineer then opens the tensors around that layer
and asks what the quantizer did to them. This module answers the usual questions for three tensors only, so
it stays cheap on any model: the layer's output, its input activation (followed back through ops that share
their input's quantization parameters, e.g. MaxPool/Flatten/Reshape, to the tensor whose range was actually
calibrated), and the weights of the node computing the layer (and of the node producing its input).

For each activation: its quantization parameters, the calibrated range vs the range observed on the
evaluation data, the fraction of values clipped and of non-zero values collapsed onto the zero point, and
per-channel statistics (range spread, quantization error per channel): a tensor whose whole-tensor metrics
look fine can have most channels destroyed when one channel sets the range (the outlier-channel signature).
For weights: float vs dequantized weights, per tensor and per output channel.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ..engine.results import TensorStats
from ..engine.runner import Runner
from ..graph.match import Layer, QParams
from ..graph.structure import consumers, producers
from ..samples import Samples

# Ops whose QDQ output reuses its input's scale and zero point (ONNX Runtime's quantizer shares them): the
# range that matters for a consumer is calibrated at the first non-sharing producer upstream.
SHARING_OPS = frozenset({"MaxPool", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity",
                         "Resize", "Slice", "Split", "Gather", "DepthToSpace", "SpaceToDepth", "Expand", "Tile"})
WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
_FUSED_ACTIVATIONS = ("Relu", "Clip")
_QRANGE = {"uint8": (0, 255), "int8": (-128, 127), "uint16": (0, 65535), "int16": (-32768, 32767)}
STATS_SAMPLES = 16  # evaluation samples used for statistics: enough for ranges, cheap on any model


@dataclass(frozen=True)
class Site:
    """Where a layer's quantized computation happens in the float graph.

    ``node`` is the first diverging layer as reported; ``compute`` the node doing the arithmetic (the
    Conv/Gemm the quantizer fused a Relu into, or the node itself); ``input_tensor`` the activation it reads
    whose range was calibrated (after walking back through sharing ops); ``producer`` the node to override so
    that tensor changes precision (its compute node when the tensor is a fused activation's output);
    ``shared`` the sharing ops walked through.
    """

    node: str
    compute: str
    weight: str | None
    input_tensor: str | None
    producer: str | None
    producer_weight: str | None
    shared: tuple[str, ...] = ()


def site(float_model: onnx.ModelProto, layers: list[Layer], node_name: str) -> Site:
    """Locate the computation behind ``node_name`` and the activation it reads (see :class:`Site`)."""
    by_name = {n.name: n for n in float_model.graph.node}
    prod = producers(float_model)
    users = consumers(float_model)
    inits = {i.name for i in float_model.graph.initializer}
    node = by_name[node_name]
    fused = [lay.name for lay in layers if lay.fused_into == node_name]
    compute = by_name[fused[0]] if fused else node
    weight = compute.input[1] if compute.op_type in WEIGHTED_OPS and len(compute.input) > 1 and \
        compute.input[1] in inits else None
    acts = [t for t in compute.input if t and t not in inits]
    tensor = acts[0] if acts else None
    shared: list[str] = []
    while tensor in prod and prod[tensor].op_type in SHARING_OPS:
        shared.append(prod[tensor].name)
        tensor = next((t for t in prod[tensor].input if t and t not in inits), None)
    producer = producer_weight = None
    if tensor in prod:
        p = prod[tensor]
        producer = p.name
        up = prod.get(p.input[0]) if p.op_type in _FUSED_ACTIVATIONS and p.input else None
        if up is not None and up.op_type in WEIGHTED_OPS and len(users.get(p.input[0], [])) == 1:
            producer = up.name  # an override on the Conv follows to the folded Relu's output (convert.py)
            p = up
        if p.op_type in WEIGHTED_OPS and len(p.input) > 1 and p.input[1] in inits:
            producer_weight = p.input[1]
    return Site(node_name, compute.name, weight, tensor, producer, producer_weight, tuple(reversed(shared)))


def _qdq(x: np.ndarray, qp: QParams, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Quantize and dequantize ``x`` with ``qp``; returns (integer values, dequantized values)."""
    lo, hi = _QRANGE.get(qp.dtype, (0, 255))
    scale = np.asarray(qp.scale, dtype=np.float64)
    zp = np.asarray(qp.zero_point, dtype=np.float64)
    if scale.size > 1 and axis is not None:
        shape = [1] * x.ndim
        shape[axis] = scale.size
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    q = np.clip(np.rint(x / scale) + zp, lo, hi)
    return q, (q - zp) * scale


def _rel_rmse(f: np.ndarray, q: np.ndarray, axis: int | None = None):
    err = np.sqrt(np.mean((q - f) ** 2, axis=axis))
    ref = np.sqrt(np.mean(f ** 2, axis=axis))
    return np.where(ref > 0, err / np.maximum(ref, 1e-30), np.where(err > 0, np.inf, 0.0))


def _per_channel(f: np.ndarray, q: np.ndarray, axis: int) -> tuple[float, float]:
    moved_f = np.moveaxis(f, axis, 0).reshape(f.shape[axis], -1)
    moved_q = np.moveaxis(q, axis, 0).reshape(q.shape[axis], -1)
    errs = _rel_rmse(moved_f, moved_q, axis=1)
    finite = errs[np.isfinite(errs)]
    return (float(np.median(finite)) if finite.size else 0.0), (float(finite.max()) if finite.size else 0.0)


def activation_stats(role: str, layer: Layer, node: str, values: np.ndarray,
                     calibration_range: tuple[float, float] | None = None) -> TensorStats | None:
    """Statistics of one quantized activation from its float values over evaluation samples (axis 0).

    ``calibration_range``: the min/max the calibration data itself reaches for this tensor. Only against it can
    clipping be blamed on coverage (evaluation values the calibration data never showed) or on the quantization
    parameters (values the calibration data reaches, cut because the rounded zero point shifts the grid).
    """
    qp = layer.qparams
    if qp is None or values.size == 0:
        return None
    f = values.astype(np.float64)
    q, d = _qdq(f, qp, qp.axis + 1 if qp.axis is not None else None)
    lo, hi = _QRANGE.get(qp.dtype, (0, 255))
    scale, zp = max(qp.scale), qp.zero_point[0]
    nonzero = f != 0
    collapsed = float(np.mean(q[nonzero] == zp)) if nonzero.any() else 0.0
    stats = dict(role=role, tensor=layer.tensor, node=node, dtype=qp.dtype, scale=scale, zero_point=zp,
                 per_channel=len(qp.scale) > 1, error=float(_rel_rmse(f, d)),
                 calibrated=((lo - zp) * scale, (hi - zp) * scale), observed=(float(f.min()), float(f.max())),
                 clipped=float(np.mean((q == lo) & (f < (lo - zp) * scale) | (q == hi) & (f > (hi - zp) * scale))),
                 collapsed=collapsed, levels=int(np.unique(q).size))
    if calibration_range is not None:
        c_lo, c_hi = calibration_range
        covered = (f >= c_lo) & (f <= c_hi)
        clipped = (f < (lo - zp) * scale) | (f > (hi - zp) * scale)
        stats.update(calibration_observed=(float(c_lo), float(c_hi)), uncovered=float(np.mean(~covered)),
                     clipped_covered=float(np.mean(clipped & covered)),
                     zero_point_exact=float(lo - min(c_lo, 0.0) / scale) if len(qp.scale) == 1 else None)
    if f.ndim >= 3:  # samples, batch, channels, ...: channel axis 2 of the stacked array
        amax = np.moveaxis(np.abs(f), 2, 0).reshape(f.shape[2], -1).max(axis=1)
        med = float(np.median(amax))
        stats["channel_spread"] = float(amax.max() / med) if med > 0 else float("inf") if amax.max() > 0 else 1.0
        stats["widest_channel"] = int(amax.argmax())
        stats["channel_error_median"], stats["channel_error_worst"] = _per_channel(f, d, 2)
    return TensorStats(**stats)


def _initializer(model: onnx.ModelProto, name: str, base_dir: str = "") -> np.ndarray | None:
    """One initializer's values; a tensor in external data is read alone from ``base_dir`` (the model's folder)."""
    init = next((i for i in model.graph.initializer if i.name == name), None)
    return numpy_helper.to_array(init, base_dir) if init is not None else None


def weight_stats(role: str, float_model: onnx.ModelProto, fixed_model: onnx.ModelProto, node: str,
                 weight: str, base_dir: str = "") -> TensorStats | None:
    """Float weights vs the dequantized weights the fixed model computes with, per tensor and per channel.

    Both models may be graphs without their external data; ``base_dir`` (their common work folder) is where
    the few tensors needed here are read from.
    """
    f = _initializer(float_model, weight, base_dir)
    dq = next((n for n in fixed_model.graph.node if n.op_type == "DequantizeLinear"
               and n.output[0] in (weight, f"{weight}_DequantizeLinear_Output")), None)
    if f is None or dq is None:
        return None
    q, scale = _initializer(fixed_model, dq.input[0], base_dir), _initializer(fixed_model, dq.input[1], base_dir)
    zp = _initializer(fixed_model, dq.input[2], base_dir) if len(dq.input) > 2 and dq.input[2] else None
    if q is None or scale is None:
        return None
    zp = np.zeros_like(scale, dtype=np.int64) if zp is None else zp.astype(np.int64)
    axis = next((a.i for a in dq.attribute if a.name == "axis"), 1) if scale.size > 1 else None
    shape = [1] * q.ndim
    if axis is not None:
        shape[axis] = scale.size
    d = (q.astype(np.float64) - zp.reshape(shape)) * scale.astype(np.float64).reshape(shape)
    f = f.astype(np.float64)
    out_axis = axis if axis is not None else 0
    med, worst = _per_channel(f, d, out_axis) if f.ndim >= 2 else (None, None)
    nonzero = f != 0
    # Relative errors are dominated by the largest weights; the ones that rounded to zero show what was lost.
    collapsed = float(np.mean(d[nonzero] == 0)) if nonzero.any() else 0.0
    return TensorStats(role, weight, node, str(q.dtype), float(scale.max()), int(np.ravel(zp)[0]), scale.size > 1,
                       float(_rel_rmse(f, d)), med, worst, collapsed=collapsed, levels=int(np.unique(q).size))


def gather(float_model: onnx.ModelProto, fixed_model: onnx.ModelProto, layers: list[Layer], where: Site,
           evals: Samples, float_path, calibration: Samples | None = None) -> tuple[TensorStats, ...]:
    """Statistics of the output, the input activation and the weights at ``where`` (a short float pass, and
    a min/max pass over every ``calibration`` sample: the range the quantizer saw)."""
    by_tensor = {lay.tensor: lay for lay in layers}
    out_layer = next((lay for lay in layers if lay.name == where.node and lay.qparams is not None), None)
    in_layer = by_tensor.get(where.input_tensor) if where.input_tensor else None
    wanted = [lay for lay in (in_layer, out_layer) if lay is not None and lay.qparams is not None]
    values: dict[str, list[np.ndarray]] = {lay.tensor: [] for lay in wanted}
    if wanted:
        run = Runner(float_path, [lay.tensor for lay in wanted], optimize=False)
        for i, sample in enumerate(evals):
            if i >= STATS_SAMPLES:
                break
            got = run.run(sample)
            for lay in wanted:
                values[lay.tensor].append(got[lay.tensor])
    ranges: dict[str, tuple[float, float]] = {}
    if wanted and calibration is not None:
        for sample in calibration:
            got = run.run(sample)
            for lay in wanted:
                v = got[lay.tensor]
                lo, hi = ranges.get(lay.tensor, (np.inf, -np.inf))
                ranges[lay.tensor] = (min(lo, float(v.min())), max(hi, float(v.max())))
    stats: list[TensorStats | None] = []
    if in_layer is not None and values.get(in_layer.tensor):
        stats.append(activation_stats("input", in_layer, where.producer or in_layer.name,
                                      _stack(values[in_layer.tensor]), ranges.get(in_layer.tensor)))
    if out_layer is not None and values.get(out_layer.tensor):
        stats.append(activation_stats("output", out_layer, where.node, _stack(values[out_layer.tensor]),
                                      ranges.get(out_layer.tensor)))
    if where.weight:
        stats.append(weight_stats("weights", float_model, fixed_model, where.compute, where.weight,
                                  str(Path(float_path).parent)))
    if where.producer_weight:
        stats.append(weight_stats("input producer weights", float_model, fixed_model, where.producer,
                                  where.producer_weight, str(Path(float_path).parent)))
    return tuple(s for s in stats if s is not None)


def _stack(arrays: list[np.ndarray]) -> np.ndarray:
    shapes = {a.shape for a in arrays}
    return np.stack(arrays) if len(shapes) == 1 else np.concatenate([a.reshape(1, -1) for a in arrays], axis=1)[None]


def _clipping(s: TensorStats) -> list[str]:
    """Why values are clipped, each cause stated only when the numbers show it."""
    rep = f"[{s.calibrated[0]:.4g}, {s.calibrated[1]:.4g}]"
    if s.calibration_observed is None:
        return [f"{s.tensor}: {100 * s.clipped:.2f}% of the evaluation values fall outside the representable range "
                f"{rep}"]
    own = f"[{s.calibration_observed[0]:.4g}, {s.calibration_observed[1]:.4g}]"
    lines = []
    if s.uncovered > 0.001:
        lines.append(f"{s.tensor}: {100 * s.uncovered:.2f}% of the evaluation values fall outside the calibration "
                     f"data's own range {own}: the calibration data does not cover the evaluation data")
    if s.clipped_covered > 0.001:
        (c_lo, c_hi), (r_lo, r_hi) = s.calibration_observed, s.calibrated
        steps = max(r_lo - c_lo, c_hi - r_hi, 0.0) / s.scale
        cause = "the representable range is narrower than the range calibration measured"
        if s.zero_point_exact is not None and abs(s.zero_point_exact - s.zero_point) > 0.01:
            cause = (f"the zero point rounds {s.zero_point_exact:.2f} -> {s.zero_point} (scale {s.scale:.4g}), "
                     f"which shifts the representable range to {rep}")
        cause += f"; values are cut by at most {steps:.2f} of a step"
        lines.append(f"{s.tensor}: {100 * s.clipped_covered:.2f}% of the values are clipped although the calibration "
                     f"data reaches them (its own range {own}): {cause}")
    return lines


def explain(stats: tuple[TensorStats, ...]) -> list[str]:
    """Plain-language findings from the statistics (the 'why' lines of the diagnosis)."""
    lines = [s.describe() for s in stats]
    for s in stats:
        if s.channel_spread is not None and s.channel_spread >= 20 and (s.channel_error_median or 0) > 0.1:
            lines.append(f"{s.tensor}: one channel ({s.widest_channel}) sets the per-tensor range, the other "
                         f"channels lose their resolution (median per-channel error {s.channel_error_median:.2f}) "
                         f"while whole-tensor metrics stay good: the outlier-channel signature")
        elif s.clipped is not None and s.clipped > 0.001:
            lines += _clipping(s)
        if s.role.endswith("weights") and max(s.channel_error_median or s.error, s.collapsed or 0.0) > 0.1:
            per_channel = "" if s.channel_error_median is None else f", per channel median {s.channel_error_median:.2f}"
            lines.append(f"{s.tensor}: the weights themselves lose their precision at {s.dtype} (relative error "
                         f"{s.error:.2f}{per_channel}, {100 * (s.collapsed or 0.0):.0f}% of non-zero weights round "
                         f"to zero)")
    return lines
