"""Every pass/fail rule: a layer's status from its metrics, inheritance from known_bad layers, the model's
verdict.

The engine, the cache's re-check of stored metrics and the reports all decide through these functions, so
a threshold means the same thing wherever a result comes from.
"""

from __future__ import annotations

from dataclasses import replace

import onnx

from ..graph.match import Layer
from ..graph.structure import ancestors
from ..spec.model import KnownBad, ModelSpec, Thresholds
from .metrics import Accumulator, Parts, Summary
from .results import (
    FAILED,
    PASSED,
    SKIPPED,
    XFAILED,
    XPASSED,
    BaselineCheck,
    Comparison,
    Evaluated,
    LayerResult,
    Status,
)
from .slices import PartsSummary


def metrics_break(summary: Summary, parts: tuple[PartsSummary, ...], thresholds: Thresholds) -> bool:
    """The whole tensor or any of its parts (Concat slices, channels) breaks the thresholds: the worst part
    decides, so boxes in 0..320 cannot hide destroyed scores concatenated beside them."""
    return not thresholds.passes(summary["cos"], summary["rmse"]) or any(
        p.breaks(thresholds.cos, thresholds.rmse) for ps in parts for p in ps.parts)


def layer_status(summary: Summary, thresholds: Thresholds, known_bad: KnownBad | None,
                 parts: tuple[PartsSummary, ...] = ()) -> str:
    ok = not metrics_break(summary, parts, thresholds)
    if known_bad is not None:
        return XPASSED if ok else XFAILED
    return PASSED if ok else FAILED


def judge_layer(r: LayerResult, mspec: ModelSpec, on_own: bool) -> LayerResult:
    """A layer's status from its measured metrics and the spec's thresholds, known_bad and gate.

    ``diverges`` is always decided on the accumulated metrics (it locates the first diverging layer). The status
    is decided on the own error when ``on_own`` (``gate: {layers: own}``, not a model output) and the own error
    was measured; a layer the quantizer left in float adds no error of its own and passes there.
    """
    thresholds = mspec.thresholds_for(r.layer.name)
    kb = mspec.known_bad_for(r.layer.name)
    r = replace(r, thresholds=thresholds, known_bad=kb, inherited_from=None)
    if r.status == SKIPPED or r.summary is None:
        return replace(r, status=SKIPPED, diverges=False)
    diverges = metrics_break(r.summary, r.parts, thresholds)
    reason = kb.reason if kb else None
    if on_own and r.own is not None:
        status = layer_status(r.own, thresholds, kb, r.own_parts)
        return replace(r, status=status, diverges=diverges, gate="own", reason=reason)
    if on_own and r.layer.quant_tensor is None:
        return replace(r, status=XPASSED if kb else PASSED, diverges=diverges, gate="own", reason=reason)
    status = layer_status(r.summary, thresholds, kb, r.parts)
    return replace(r, status=status, diverges=diverges, gate="accumulated", reason=reason)


def judge_comparison(c: Comparison, mspec: ModelSpec, outputs: set[str]) -> Comparison:
    """Every layer of ``c`` judged (see :func:`judge_layer`); model outputs always on accumulated metrics.

    The own gate applies to float vs fixed only, and only once an own-error pass has measured something (the
    dump backend measures none: its layers stay on accumulated metrics).
    """
    own = (mspec.gate.layers == "own" and (c.reference, c.target) == ("float", "fixed")
           and any(r.own is not None for r in c.layers))
    return c.with_layers(tuple(judge_layer(r, mspec, own and r.layer.tensor not in outputs) for r in c.layers))


def finish(layers: list[Layer], accs: dict[str, Accumulator], skips: dict[str, str], mspec: ModelSpec,
           reference: str, target: str, parts: Parts | None = None, outputs: set[str] | None = None) -> Comparison:
    """The comparison of ``reference`` vs ``target`` from accumulated metrics, judged."""
    results = []
    for layer in layers:
        thresholds = mspec.thresholds_for(layer.name)
        reason = layer.skip or skips.get(layer.tensor)
        acc = accs.get(layer.tensor)
        if reason or acc is None or acc.samples == 0:
            results.append(LayerResult(layer, acc.summary() if acc and acc.samples else None, thresholds, SKIPPED,
                                       reason or "no samples compared"))
            continue
        split = tuple(a.summary() for a in (parts or {}).get(layer.tensor, ()) if a is not None and a.samples)
        results.append(LayerResult(layer, acc.summary(), thresholds, PASSED, parts=split))
    return judge_comparison(Comparison(reference, target, tuple(results)), mspec, outputs or set())


def inherit_outputs(outputs: Comparison, fixed: Comparison) -> Comparison:
    """An output that fails only because of an acknowledged known_bad layer upstream is xfailed, not red."""
    layers = []
    for r in outputs.layers:
        twin = fixed.get(r.layer.tensor)
        source = twin.inherited_from or (twin.layer.name if twin.known_bad else None) if twin else None
        if r.status == FAILED and twin is not None and twin.status == XFAILED and source:
            r = replace(r, status=XFAILED, inherited_from=source, reason=twin.reason)
        layers.append(r)
    return outputs.with_layers(tuple(layers))

def apply_inheritance(float_model: onnx.ModelProto, comparison: Comparison) -> Comparison:
    """Mark failures that only carry error from an upstream known_bad layer.

    A failing layer whose own error is within thresholds did nothing wrong itself; if the nearest upstream
    layer whose own error breaks is a known_bad one, the failure is that layer's, already acknowledged, and
    must not turn the run red again: it becomes xfailed with ``inherited_from`` naming the source.
    """
    results = list(comparison.layers)
    for i, r in enumerate(results):
        if r.status != FAILED or r.own is None or r.own_breaks:
            continue
        upstream = ancestors(float_model, r.layer.tensor)
        sources = [a for a in results if a.layer.tensor in upstream and a.own_breaks]
        source = max(sources, key=lambda a: a.layer.position, default=None)
        if source is not None and source.known_bad is not None:
            results[i] = replace(r, status=XFAILED, inherited_from=source.layer.name,
                                 reason=f"inherits the error of known_bad layer {source.layer.name}: "
                                        f"{source.known_bad.reason}")
    return comparison.with_layers(tuple(results))


def gates_fail(ev: Evaluated, check: BaselineCheck | None) -> bool:
    """The accuracy gate or the baseline fails (the model is failed even when every layer passes)."""
    if ev.accuracy_error is not None or (ev.accuracy is not None and not ev.accuracy.passed):
        return True
    if check is None or ev.result.error is not None:
        return False
    return bool(check.regressed or check.error or (not check.found and ev.result.spec.baseline.required))


def model_verdict(ev: Evaluated, check: BaselineCheck | None) -> Status:
    """The model's status wherever it is shown (terminal, JSON, HTML): its comparisons, plus the accuracy and
    baseline gates."""
    return FAILED if ev.result.status == FAILED or gates_fail(ev, check) else PASSED
