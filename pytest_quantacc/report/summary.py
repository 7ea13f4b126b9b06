"""The terminal summary: one block per model, the status including the CI gates (accuracy, baseline).
"""

from __future__ import annotations

import json

from ..engine.diagnose import inherited_note
from ..engine.judge import model_verdict
from ..engine.results import PASSED, SKIPPED, BaselineCheck, Evaluated, ModelResult, Status
from ..remedy.search import search_line
from .numbers import fmt_num


def model_summary(result: ModelResult, status: Status | None = None) -> str:
    """A few lines per model for the terminal summary (``status``: the verdict including the CI gates)."""
    name = f"{result.spec.name} ({result.spec.spec_path.name})"
    if result.error is not None:
        return f"{name}: ERROR {result.error.message}"
    compared = "dumped tensors compared" if result.spec.dumps else "quantized tensors"
    lines = [f"{name}: {(status or result.status).upper()}, {result.quantized_layers} {compared}, "
             f"{result.samples} samples"]
    if result.memory:
        lines.append(f"  memory: {result.memory}")
    if result.foreign is not None:
        f = result.foreign
        lines.append(f"  quantized by another tool: {f.path.name}, {f.kind}"
                     + (f"; {len(f.unmatched)} QDQ tensors unmatched" if f.unmatched else ""))
        lines += [f"    unmatched {t}: {why}" for t, why in f.unmatched]
    if result.outputs_only is not None:
        lines.append(f"  outputs only: {result.outputs_only}")
    if result.pipeline is not None:
        p = result.pipeline
        fits = [x.mistake for x in p.suspects if x.fits]
        lines.append(f"  original vs float: {'passed' if p.passed else 'FAILED'}; worst output cos "
                     f"{min(s['cos'] for _, s in p.outputs):.6f}" + (f"; fits: {', '.join(fits)}" if fits else ""))
    for c in result.comparisons:
        counts: dict[str, int] = {}
        for r in c.layers:
            counts[r.status] = counts.get(r.status, 0) + 1
        first = c.first_diverging.layer.name if c.first_diverging else "none"
        measured = [r for r in c.layers if r.summary is not None and r.status != SKIPPED]
        worst = sorted(measured, key=lambda r: r.lowest_cos()[0])[:3]  # a masked slice counts as what it is

        def named(r) -> str:
            cos, part = r.lowest_cos()
            return f"{r.layer.name}{f' {part}' if part else ''} cos {fmt_num(cos)}"

        lines.append(f"  {c.reference} vs {c.target}: first diverging layer: {first}; "
                     + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
                     + ("; worst: " + ", ".join(named(r) for r in worst) if worst else ""))
        if c.diagnosis is not None:
            lines.append(f"    diagnosis: {c.diagnosis.kind} at {c.diagnosis.layer}"
                         + (f"; roots (own error beyond thresholds): {', '.join(x.layer for x in c.diagnosis.roots)}"
                            if c.diagnosis.roots else ""))
            note = inherited_note(c)
            if note is not None:
                lines.append(f"    {note}")
            if c.diagnosis.remedy is not None and not any(t.startswith("verified:") for t in c.diagnosis.todo):
                lines.append(f"    verified remedy ({len(c.diagnosis.attempts)} tried): quantization: "
                             + json.dumps(c.diagnosis.remedy, separators=(", ", ": ")).replace('"', ""))
            if c.diagnosis.search is not None:
                lines.append(f"    {search_line(c.diagnosis)}")
            for t in c.diagnosis.todo:  # printed here only, not on each failing layer
                lines += [f"    what to do: {t}".splitlines()[0], *t.splitlines()[1:]]
    if result.agreement is not None and result.agreement.worst is not None:
        w = result.agreement.worst
        first = result.agreement.first_failing
        lines.append(f"  {result.agreement.reference} vs {result.agreement.target}: "
                     f"{'passed' if result.agreement.passed else 'FAILED'}; "
                     + (f"first {first.tensor}; " if first is not None and first is not w else "")
                     + f"worst {w.tensor}: {100 * w.mismatch_rate:.2f}% beyond {result.agreement.tolerance_steps} "
                       f"steps, max {w.max_steps}")
    if result.artifacts is not None and (status or result.status) != PASSED:
        lines.append(f"  open in Netron: netron {result.artifacts.fixed_model}")
    return "\n".join(lines)


def extra_lines(ev: Evaluated, check: BaselineCheck | None) -> list[str]:
    """Summary lines under a model's ``model_summary``: accuracy, baseline, whether inference ran."""
    lines = []
    a = ev.accuracy
    if a is not None:
        lines.append(f"  accuracy ({a.metric}, {a.output}): float {a.float_value:.4f}, offline {a.offline_value:.4f}, "
                     f"drop {a.drop:.4f} (max {a.max_drop}): {'passed' if a.passed else 'FAILED'}")
    elif ev.accuracy_error is not None:
        lines.append(f"  accuracy: ERROR {ev.accuracy_error.message}")
    if check is not None and ev.result.error is None:
        if check.error is not None:
            lines.append(f"  baseline: ERROR {check.error}")
        elif not check.found:
            lines.append(f"  baseline: none recorded ({check.path.name}); record with --quantacc-baseline-update")
        else:
            lines.append(f"  baseline: {len(check.regressed)} regressed, {len(check.improved)} improved, "
                         f"{len(check.deltas) - len(check.regressed) - len(check.improved)} unchanged, "
                         f"{len(check.stale)} stale (tolerance cos {check.tolerance_cos}, rmse {check.tolerance_rmse})")
            lines += [f"    regressed {d.comparison}: {d.text()}" for d in check.regressed]
            lines += [f"    improved {d.comparison}: {d.text()}" for d in check.improved]
            lines += [f"    stale (no longer compared): {s}" for s in check.stale]
    if ev.cache == "reused":
        lines.append("  cache: stored metrics re-checked, no inference")
    return lines


def summary_head(ev: Evaluated, check: BaselineCheck | None) -> str:
    """``model_summary`` with the model's verdict including the CI gates."""
    return model_summary(ev.result, model_verdict(ev, check))
