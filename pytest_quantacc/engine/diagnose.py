"""Why the first diverging layer broke, and what to try, from the per-layer results.

The vendor workflow stops at "the first layer with COS < 0.99"; the engineer then asks whether the error
appeared there (abrupt: the layer's inputs were fine) or built up over many layers (gradual), and which
knob to turn. This module answers from what evaluation already measured: metrics along the graph, the
quantization parameters of the tensors involved, and the graph structure.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from ..graph.parts import QRANGE, value_source
from ..graph.structure import producers
from .results import FAILED, SKIPPED, Comparison, Diagnosis, Drop, LayerResult, Root
from .slices import PartMetrics, PartsSummary

_DROPS = 5  # single-step drops listed
_MIN_DROP = 1e-3  # smaller steps are rounding noise, not a place to look


def upstream(float_model: onnx.ModelProto, comparison: Comparison, target: LayerResult) -> list[LayerResult]:
    """The nearest compared layers feeding ``target`` (walking back through skipped/fused layers)."""
    return _feeders(float_model, comparison)(target)


def _feeders(float_model: onnx.ModelProto, comparison: Comparison):
    """``upstream`` for many layers of one comparison: the graph maps are built once."""
    prod = producers(float_model)
    by_tensor = {r.layer.tensor: r for r in comparison.layers}
    nodes = {n.name: n for n in float_model.graph.node}

    def feeding(target: LayerResult) -> list[LayerResult]:
        node = nodes.get(target.layer.name)
        out: list[LayerResult] = []
        seen: set[str] = set()
        stack = [t for t in (node.input if node is not None else []) if t]
        while stack:
            t = stack.pop()
            if t in seen:
                continue
            seen.add(t)
            r = by_tensor.get(t)
            if r is not None and r.summary is not None and r.status != SKIPPED:
                out.append(r)
            elif t in prod:
                stack.extend(i for i in prod[t].input if i)
        return sorted(out, key=lambda r: r.layer.position)

    return feeding


def find_roots(comparison: Comparison) -> tuple[Root, ...]:
    """Every layer whose own error breaks its thresholds, in graph order (whole tensor or a part)."""
    out = []
    for r in comparison.layers:
        if r.summary is None or r.status == SKIPPED or not r.own_breaks:
            continue
        part = None
        t = r.thresholds
        if t.passes(r.own["cos"], r.own["rmse"]):  # the whole passes: say which part breaks
            part = next((found for kind in ("slice", "channel")
                         if (found := r.worst_part(kind, own=True)) is not None and found[1].breaks(t.cos, t.rmse)),
                        None)
        out.append(Root(r.layer.name, r.layer.op_type, r.layer.position, r.own["cos"], r.own["rmse"],
                        *((part[0].label(part[1]), part[1].cos, part[1].rmse) if part else ())))
    return tuple(out)


def find_drops(float_model: onnx.ModelProto, comparison: Comparison, limit: int = _DROPS) -> tuple[Drop, ...]:
    """The ``limit`` largest single-step drops of accumulated cos: each layer against its worst input (a graph
    input counts as exact), the worst part's cos where a layer is split."""
    feeding = _feeders(float_model, comparison)
    steps = []
    for r in comparison.layers:
        if r.summary is None or r.status == SKIPPED:
            continue
        before = min((i.lowest_cos()[0] for i in feeding(r)), default=1.0)
        after, part = r.lowest_cos()
        if before - after >= _MIN_DROP:
            steps.append(Drop(r.layer.name, r.layer.op_type, r.layer.position, before, after, part))
    return tuple(sorted(steps, key=lambda d: (-d.drop, d.position))[:limit])


def _span(x: LayerResult) -> tuple[float, float]:
    """The range a quantized layer's output can represent."""
    q = x.layer.qparams
    lo, hi = QRANGE.get(q.dtype, (0, 255))
    return (lo - q.zero_point[0]) * q.scale[0], (hi - q.zero_point[0]) * q.scale[0]


def concat_inputs(float_model: onnx.ModelProto, comparison: Comparison,
                  r: LayerResult) -> tuple[PartsSummary, PartMetrics, list[LayerResult | None]] | None:
    """A Concat's breaking slice (own error first, where measured) and, per slice, the quantized layer whose values
    it carries (walking back through reshapes); None when no slice breaks."""
    found = r.worst_part("slice", own=r.own_parts != ()) or r.worst_part("slice")
    if r.layer.qparams is None or found is None or not found[1].breaks(r.thresholds.cos, r.thresholds.rmse):
        return None
    ps, part = found
    by_tensor = {x.layer.tensor: x for x in comparison.layers if x.layer.qparams is not None}
    return ps, part, [by_tensor.get(value_source(float_model, name, set(by_tensor)) or "") for name in ps.names]


def concat_levels(float_model: onnx.ModelProto, comparison: Comparison, r: LayerResult) -> list[str]:
    """For a Concat whose slice breaks: which input's values lose their levels to the per-tensor scale the
    larger input sets, with the numbers ("cls_sigmoid's values ... get 2 of 256 levels of output0's scale")."""
    found = concat_inputs(float_model, comparison, r)
    if found is None:
        return []
    ps, part, sources = found
    qp = r.layer.qparams
    lo_q, hi_q = QRANGE.get(qp.dtype, (0, 255))
    scale = qp.scale[0]
    small = sources[part.index] if part.index < len(sources) else None
    if small is None or len(qp.scale) > 1:
        return [f"{r.layer.name} (Concat) quantizes all its inputs with one {qp.dtype} scale {scale:.4g}; "
                f"{ps.label(part)} breaks"]
    lo, hi = _span(small)
    levels = int(round(hi / scale) - round(lo / scale)) + 1
    wide = max((x for x in sources if x is not None and x is not small), key=lambda x: _span(x)[1] - _span(x)[0],
               default=None)
    set_by = (f", a scale set by {wide.layer.name}'s range [{_span(wide)[0]:.4g}, {_span(wide)[1]:.4g}]"
              if wide is not None else "")
    return [f"{r.layer.name} (Concat) quantizes its inputs with one per-tensor {qp.dtype} scale {scale:.4g} "
            f"(the scale of {r.layer.tensor}){set_by}: {small.layer.name}'s values (range [{lo:.4g}, {hi:.4g}]) "
            f"get {levels} of {hi_q - lo_q + 1} levels of {r.layer.tensor}'s scale {scale:.4g}"]


def _concat_todo(float_model: onnx.ModelProto, comparison: Comparison, r: LayerResult) -> str:
    """More levels where the breaking slice loses them: at the Concat's output while its scale leaves the small
    input fewer levels than the input's own quantization has (16 bits, or float once it is 16-bit already),
    else at the small input's own quantization."""
    found = concat_inputs(float_model, comparison, r)
    qp = r.layer.qparams
    small = found[2][found[1].index] if found and found[1].index < len(found[2]) else None
    in_float = (f"leave it in float: quantization.exclude_nodes: [{r.layer.name}] (or export the concatenated "
                f"parts as separate outputs)")
    if small is None or len(qp.scale) > 1:
        return f"give {r.layer.name}'s output more levels: activations: int16 for it, or {in_float}"
    lo, hi = _span(small)
    kept = int(round(hi / qp.scale[0]) - round(lo / qp.scale[0])) + 1
    own_lo, own_hi = QRANGE.get(small.layer.qparams.dtype, (0, 255))
    if kept >= own_hi - own_lo + 1:
        return (f"{small.layer.name}'s own quantization ({small.layer.qparams.dtype}) is what limits the slice: "
                f"quantization.overrides: {{{small.layer.name}: {{activations: int16}}}}")
    if "16" in qp.dtype:
        return (f"{r.layer.name}'s output is already {qp.dtype} and still leaves {small.layer.name} {kept} levels: "
                f"{in_float}")
    return (f"give {r.layer.name}'s output more levels: quantization.overrides: {{{r.layer.name}: {{activations: "
            f"int16}}}}, or {in_float}")


def inherited_note(comparison: Comparison) -> str | None:
    """When most failing layers only carry error from upstream, say so and point to the own gate."""
    failing = [r for r in comparison.layers if r.status == FAILED and r.gate == "accumulated" and r.own is not None]
    carried = [r for r in failing if not r.own_breaks]
    if len(failing) < 3 or 2 * len(carried) <= len(failing):
        return None
    roots = find_roots(comparison)
    named = ", ".join(x.layer for x in roots[:5]) or "none"
    return (f"{len(carried)} of {len(failing)} failing layers inherit their error (their own error is within "
            f"thresholds); layers whose own error breaks: {named}. gate: {{layers: own}} judges each layer on its "
            f"own error (model outputs stay on accumulated error)")


def diagnose(float_model: onnx.ModelProto, comparison: Comparison) -> Diagnosis | None:
    first = comparison.first_diverging
    if first is None or first.summary is None:
        return None
    ins = upstream(float_model, comparison, first)
    roots = find_roots(comparison)
    drops = find_drops(float_model, comparison)
    if first.own is not None:
        abrupt = first.own_breaks
    else:
        # No own error measured (dump backend): abrupt when the layer's inputs are within thresholds and the
        # largest step of the graph is at this layer.
        worst_in = max((r.summary["rmse"] for r in ins), default=0.0)
        abrupt = (not any(r.diverges for r in ins)
                  and first.summary["rmse"] > max(2.0 * worst_in, first.thresholds.rmse)
                  or bool(drops) and drops[0].layer == first.layer.name and not any(r.diverges for r in ins))
    kind = "abrupt" if abrupt else "gradual"
    why: list[str] = []
    todo: list[str] = []
    s = first.summary
    why.append(f"{first.layer.name} ({first.layer.op_type}): cos {s['cos']:.4f}, rmse {s['rmse']:.4f} "
               f"(thresholds cos >= {first.thresholds.cos}, rmse <= {first.thresholds.rmse})")
    part = next((found for kind_ in ("slice", "channel") if (found := first.worst_part(kind_)) is not None
                 and found[1].breaks(first.thresholds.cos, first.thresholds.rmse)), None)
    if part is not None:
        why.append(f"worst {part[0].label(part[1])}: cos {'-' if part[1].cos is None else f'{part[1].cos:.4f}'}, "
                   f"rmse {part[1].rmse:.4f}" + (" while the whole tensor passes"
                                                 if first.thresholds.passes(s["cos"], s["rmse"]) else ""))
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
    if roots:
        why.append("roots (own error beyond thresholds, graph order): " + "; ".join(x.text() for x in roots))
    elif any(r.own is not None for r in comparison.layers):
        why.append("no layer's own error breaks the thresholds: the error accumulates")
    if drops:
        why.append("largest single-step drops of accumulated cos: " + ", ".join(d.text() for d in drops))
    concats = [r for r in comparison.layers if r.layer.op_type == "Concat" and r.parts
               and (r.layer.name in {x.layer for x in roots} or r is first)]
    for r in concats:
        why += concat_levels(float_model, comparison, r)
    if abrupt:
        why.append("the error appears at this layer: " + ("its own quantized computation breaks the thresholds"
                                                          if first.own is not None
                                                          else "its inputs are within thresholds"))
    else:
        why.append("error builds up over several layers: this layer's own error is within thresholds"
                   if first.own is not None else "error builds up over several layers")
    todo += _root_todo(float_model, comparison, roots, first, ins, abrupt, concats)
    contributors = tuple(x.layer for x in roots) or _largest_own(comparison, first) or (first.layer.name,)
    return Diagnosis(first.layer.name, kind, tuple(r.layer.name for r in ins), tuple(why), tuple(todo), contributors,
                     roots, drops)


def _largest_own(comparison: Comparison, first: LayerResult) -> tuple[str, ...]:
    before = [r for r in comparison.layers if r.own is not None and r.layer.position <= first.layer.position]
    return tuple(r.layer.name for r in sorted(before, key=lambda r: r.own["rmse"], reverse=True)[:3])


_WEIGHTED = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


def _root_todo(float_model: onnx.ModelProto, comparison: Comparison, roots: tuple[Root, ...], first: LayerResult,
               ins: list[LayerResult], abrupt: bool, concats: list[LayerResult]) -> list[str]:
    """What to try, aimed at the roots when there are any, else at the first diverging layer.

    A root's own error is made by its quantized inputs and its quantized weights: the hint raises the weights of
    the root and the activations where its inputs are quantized (the producers' outputs), not the root's output.
    """
    todo = []
    todo += [_concat_todo(float_model, comparison, r) for r in concats if r.layer.qparams is not None]
    others = [x for x in roots if x.layer not in {r.layer.name for r in concats}]
    if others:
        feeding = _feeders(float_model, comparison)
        by_name = {r.layer.name: r for r in comparison.layers}
        wanted: dict[str, list[str]] = {}
        for x in others:
            if x.op_type in _WEIGHTED:
                wanted.setdefault(x.layer, []).append("weights: int16")
            feeders = feeding(by_name[x.layer]) if x.layer in by_name else []
            for f in feeders or ([by_name[x.layer]] if x.layer in by_name and x.op_type not in _WEIGHTED else []):
                if "activations: int16" not in wanted.setdefault(f.layer.name, []):
                    wanted[f.layer.name].append("activations: int16")
        if wanted:
            settings = {n: "{" + ", ".join(v) + "}" for n, v in wanted.items()}
            todo.append(f"start at the roots, where the error is made ({', '.join(x.layer for x in others)}): their "
                        f"weights and the activations they read at 16 bits: quantization.overrides: "
                        f"{{{', '.join(f'{n}: {v}' for n, v in settings.items())}}}")
    if abrupt:
        names = [first.layer.name] + [r.layer.name for r in ins]
        todo.append(f"raise the precision of the input activations: quantization.overrides: "
                    f"{{{', '.join(f'{n}: {{activations: int16}}' for n in names[1:] or names)}}}")
        todo += ["try per_channel: true (weights) and method: percentile or entropy (activations)",
                 f"leave the layer in float: quantization.exclude_nodes: [{first.layer.name}]"]
    else:
        todo += ["try method: entropy or percentile, per_channel: true",
                 "try 16-bit activations for the whole model (activations: int16) to confirm it is accumulation"]
    if inherited_note(comparison) is not None:
        todo.append("most failing layers only carry upstream error: gate: {layers: own} gates each layer on its own "
                    "error")
    return todo


@dataclass(frozen=True)
class CpuInt8:
    """The CPU's integer dot-product support, which decides how ONNX Runtime's integer kernels add up products.

    ``arch`` is ``x86``, ``arm`` or ``unknown``; ``dot`` names the instructions found (None: none).
    """

    arch: str
    dot: str | None

    def describe(self) -> str:
        return f"{self.arch} CPU with {self.dot}" if self.dot else f"{self.arch} CPU without integer dot-product " \
            f"instructions" if self.arch != "unknown" else "a CPU whose features could not be read"


_X86_DOT = (("amx_int8", "AMX-INT8"), ("avx512_vnni", "AVX512-VNNI"), ("avx_vnni", "AVX-VNNI"))


def cpu_int8(cpuinfo: str | None = None) -> CpuInt8:
    """Integer dot-product support from ``/proc/cpuinfo`` (or the given text): x86 VNNI / AMX, ARM asimddp."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return CpuInt8("unknown", None)
    flags: set[str] = set()
    arch = "unknown"
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "flags":
            arch = "x86"
            flags |= set(value.split())
        elif key == "features":
            arch = "arm"
            flags |= set(value.split())
    if arch == "x86":
        found = [label for flag, label in _X86_DOT if flag in flags]
        return CpuInt8(arch, " + ".join(found) if found else None)
    if arch == "arm":
        found = [label for flag, label in (("asimddp", "dotprod (asimddp)"), ("i8mm", "i8mm")) if flag in flags]
        return CpuInt8(arch, " + ".join(found) if found else None)
    return CpuInt8(arch, None)


def offline_hints(max_steps: int, activations: str, weights: str, reduce_range: bool,
                  cpu: CpuInt8 | None = None) -> list[str]:
    """Why fixed and offline disagree, for what ONNX Runtime's CPU kernels do on this CPU."""
    cpu = cpu or cpu_int8()
    hints = []
    u8s8 = activations == "uint8" and weights == "int8"
    if cpu.arch == "x86" and cpu.dot is None and u8s8 and not reduce_range:
        hints.append("uint8 activations x int8 weights on an x86 CPU without VNNI: ONNX Runtime's integer kernels "
                     "add pairs of products in 16 bits, which saturate, so the deployable model computes something "
                     "else than the simulator. Set quantization.reduce_range: true (7-bit weights) or "
                     "activations: int8.")
    elif cpu.arch == "x86" and cpu.dot is not None and max_steps > 2:
        hints.append(f"this is an {cpu.describe()}: its integer dot products do not saturate, so reduce_range: true "
                     f"would only take a bit from the weights without removing the difference; try activations: "
                     f"int8{' (signed activations run other kernels)' if activations == 'uint8' else ''}, or leave "
                     f"the layers where the difference starts in float (quantization.exclude_nodes)")
    elif cpu.arch == "arm" and max_steps > 2:
        hints.append(f"this is an {cpu.describe()}: ONNX Runtime's ARM integer kernels "
                     f"{'use the' if cpu.dot else 'widen products without'} dot-product instructions"
                     f"; try activations: int8, or leave the layers where the difference starts in float "
                     f"(quantization.exclude_nodes)")
    if max_steps <= 2:
        hints.append("differences of 1-2 steps are rounding differences between fused kernels and fake-quant")
    return hints


def offline_effect(fixed: Comparison | None, offline: Comparison | None) -> str | None:
    """Whether the integer kernels' differences reach the model outputs: float vs offline against float vs fixed
    for each output both measured."""
    if fixed is None or offline is None:
        return None
    rows = []
    worse = []
    for r in offline.layers:
        twin = fixed.get(r.layer.tensor)
        if r.summary is None or twin is None or twin.summary is None:
            continue
        o, x = r.summary, twin.summary
        rows.append(f"{r.layer.tensor} cos {o['cos']:.4f} rmse {o['rmse']:.4f} (fixed: cos {x['cos']:.4f} "
                    f"rmse {x['rmse']:.4f})")
        if (r.diverges and not twin.diverges) or o["rmse"] > 1.1 * x["rmse"] + 1e-3:
            worse.append(r.layer.tensor)
    if not rows:
        return None
    verdict = (f"the deployable model's outputs are worse than the simulation's ({', '.join(worse)}): the "
               f"difference matters" if worse else "the deployable model's outputs are as close to float as the "
               "simulation's: the difference does not degrade them")
    return f"float vs offline: {'; '.join(rows)}: {verdict}"
