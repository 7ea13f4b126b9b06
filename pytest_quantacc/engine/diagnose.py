"""Why the first diverging layer broke, and what to try, from the per-layer results.

The vendor workflow stops at "the first layer with COS < 0.99"; the engineer then asks whether the error
appeared there (abrupt: the layer's inputs were fine) or built up over many layers (gradual), and which
knob to turn. This module answers from what evaluation already measured: metrics along the graph, the
quantization parameters of the tensors involved, and the graph structure.
"""

from __future__ import annotations

import onnx

from ..graph.structure import producers
from .results import Comparison, Diagnosis, LayerResult





_MIXING_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "Attention", "Einsum"}


def upstream(float_model: onnx.ModelProto, comparison: "Comparison", target: "LayerResult") -> list["LayerResult"]:
    """The nearest compared layers feeding ``target`` (walking back through skipped/fused layers)."""
    prod = producers(float_model)
    by_tensor = {r.layer.tensor: r for r in comparison.layers}
    node = next((n for n in float_model.graph.node if n.name == target.layer.name), None)
    out: list["LayerResult"] = []
    seen: set[str] = set()
    stack = [t for t in (node.input if node is not None else []) if t]
    while stack:
        t = stack.pop()
        if t in seen:
            continue
        seen.add(t)
        r = by_tensor.get(t)
        if r is not None and r.summary is not None and r.status != "skipped":
            out.append(r)
        elif t in prod:
            stack.extend(i for i in prod[t].input if i)
    return sorted(out, key=lambda r: r.layer.position)


def diagnose(float_model: onnx.ModelProto, comparison: "Comparison") -> Diagnosis | None:
    first = comparison.first_diverging
    if first is None or first.summary is None:
        return None
    ins = upstream(float_model, comparison, first)
    if first.own is not None:
        abrupt = first.own_breaks
    else:
        worst_in = max((r.summary["rmse"] for r in ins), default=0.0)
        abrupt = not any(r.breaks for r in ins) and first.summary["rmse"] > max(2.0 * worst_in, first.thresholds.rmse)
    kind = "abrupt" if abrupt else "gradual"
    contributors: tuple[str, ...] = (first.layer.name,)
    why: list[str] = []
    todo: list[str] = []
    s = first.summary
    why.append(f"{first.layer.name} ({first.layer.op_type}): cos {s['cos']:.4f}, rmse {s['rmse']:.4f} "
               f"(thresholds cos >= {first.thresholds.cos}, rmse <= {first.thresholds.rmse})")
    if first.own is not None:
        why.append(f"its own error (quantized computation fed with float inputs): cos {first.own['cos']:.4f}, "
                   f"rmse {first.own['rmse']:.4f}")
    if ins:
        why.append("its inputs: " + ", ".join(f"{r.layer.name} cos {r.summary['cos']:.4f} rmse {r.summary['rmse']:.4f}"
                                              for r in ins))
    qp = first.layer.qparams
    if qp is not None:
        why.append(f"output quantized as {qp.dtype}, scale {qp.scale[0]:.4g}, zero point {qp.zero_point[0]}"
                   + (" (per-channel)" if len(qp.scale) > 1 else ""))
    if abrupt:
        why.append("the error appears at this layer: " + ("its own quantized computation breaks the thresholds"
                                                          if first.own is not None else "its inputs are within thresholds"))
        fused = [r.layer.op_type for r in comparison.layers if r.layer.fused_into == first.layer.name]
        if first.layer.op_type in _MIXING_OPS or _MIXING_OPS.intersection(fused):
            why.append("a layer that mixes channels breaks while its input looks fine when one input channel has a "
                       "much larger range than the others (the outlier-channel signature): whole-tensor metrics "
                       "of the input are dominated by that channel, but the other channels lost their resolution")
        names = [first.layer.name] + [r.layer.name for r in ins]
        todo += [
            f"raise the precision of the input activations: quantization.overrides: "
            f"{{{', '.join(f'{n}: {{activations: int16}}' for n in names[1:] or names)}}}",
            "try per_channel: true (weights) and method: percentile or entropy (activations)",
            f"leave the layer in float: quantization.exclude_nodes: [{first.layer.name}]",
        ]
    else:
        before = [r for r in comparison.layers if r.own is not None and r.layer.position <= first.layer.position]
        top = sorted(before, key=lambda r: r.own["rmse"], reverse=True)[:3]
        contributors = tuple(r.layer.name for r in top)
        why.append("error builds up over several layers: each layer's own error is within thresholds"
                   if first.own is not None else "error builds up over several layers")
        if top:
            why.append("largest own errors: " + ", ".join(f"{r.layer.name} rmse {r.own['rmse']:.4f}" for r in top))
        todo += [
            "try method: entropy or percentile, per_channel: true",
            "try 16-bit activations for the whole model (activations: int16) to confirm it is accumulation",
        ]
    return Diagnosis(first.layer.name, kind, tuple(r.layer.name for r in ins), tuple(why), tuple(todo), contributors)


def offline_hints(max_steps: int, activations: str, weights: str, reduce_range: bool) -> list[str]:
    """Why fixed and offline disagree, for the common case ONNX Runtime's CPU kernels are known for."""
    hints = []
    if activations == "uint8" and weights == "int8" and not reduce_range and not _cpu_has_vnni():
        hints.append("uint8 activations x int8 weights on a CPU without VNNI: ONNX Runtime's integer kernels "
                     "saturate 16-bit intermediate sums, so the deployable model computes something else than "
                     "the simulator. Set quantization.reduce_range: true (7-bit weights) or activations: int8.")
    if max_steps <= 2:
        hints.append("differences of 1-2 steps are rounding differences between fused kernels and fake-quant")
    return hints


def _cpu_has_vnni() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return True  # unknown: do not blame the CPU
    return "avx512_vnni" in flags or "avx_vnni" in flags or "amx_int8" in flags or "avx2" not in flags
