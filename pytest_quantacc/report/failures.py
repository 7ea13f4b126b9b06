"""Failure messages of the pytest items: what broke, where the comparison first diverged, why, what to do.
"""

from __future__ import annotations

from dataclasses import dataclass

from tabulate import tabulate

from ..engine.diagnose import offline_effect, offline_hints
from ..engine.results import SKIPPED, BaselineCheck, Comparison, LayerDelta, LayerResult, ModelResult, PipelineResult
from ..spec.model import ModelSpec
from .numbers import fmt_num


def _row(r: LayerResult, mark: bool) -> list[str]:
    s = r.summary
    status = r.status + (f" (from {r.inherited_from})" if r.inherited_from else "")
    own = r.own
    return ["->" if mark else "", r.layer.name, r.layer.op_type, fmt_num(s["cos"] if s else None),
            fmt_num(s["rmse"] if s else None), fmt_num(own["cos"] if own else None),
            fmt_num(own["rmse"] if own else None),
            status]


def layer_table(comparison: Comparison, around: LayerResult | None = None, context: int = 3) -> str:
    """The compared layers around ``around`` (all when None), skipped layers left out."""
    rows = [r for r in comparison.layers if r.status != SKIPPED]
    if around is not None and around in rows:
        i = rows.index(around)
        rows = rows[max(0, i - context): i + context + 1]
    return tabulate([_row(r, r is around) for r in rows],
                    headers=["", "layer", "op", "cos", "rmse", "own cos", "own rmse", "status"], tablefmt="simple")


def _breaks(r: LayerResult) -> str:
    """What broke, on the metrics the gate judged: the whole tensor's and the worst slice's / channel's."""
    own = r.gate == "own" and r.own is not None
    s, t = (r.own if own else r.summary), r.thresholds
    parts = []
    if s["cos"] < t.cos:
        parts.append(f"cos {fmt_num(s['cos'])} < {t.cos}")
    if s["rmse"] > t.rmse:
        parts.append(f"rmse {fmt_num(s['rmse'])} > {t.rmse}")
    whole = ", ".join(parts) or f"whole tensor cos {fmt_num(s['cos'])}, rmse {fmt_num(s['rmse'])} within thresholds"
    text = ("own error (quantized computation fed float inputs; gate: {layers: own}): " if own else "") + whole
    for kind in ("slice", "channel"):
        found = r.worst_part(kind, own)
        if found is not None and found[1].breaks(t.cos, t.rmse):
            ps, p = found
            text += (f"; worst {ps.label(p)}: cos {fmt_num(p.cos)}, rmse {fmt_num(p.rmse)}"
                     + (f" ({p.near_zero_samples} of {p.samples} samples near zero: rmse on the tensor's scale)"
                        if p.near_zero_samples else ""))
    return text


@dataclass(frozen=True)
class FailureText:
    """A failure message in three lengths, for pytest's ``--tb`` styles.

    ``headline`` is the one line (``--tb=line``, JUnit's ``message``, ``-rf``); ``own`` the item's own lines
    under it (``--tb=short``); ``context`` what the default adds (only the model's root-cause item has any: a
    300-layer model would otherwise print its diagnosis 300 times); ``detail`` what ``--tb=long`` adds instead.
    """

    headline: str
    own: tuple[str, ...] = ()
    context: tuple[str, ...] = ()
    detail: tuple[str, ...] = ()

    @classmethod
    def of(cls, text: str) -> FailureText:
        """A plain message: its first line is the headline, the rest the item's own lines."""
        head, *rest = text.splitlines() or [""]
        return cls(head, tuple(rest))

    def render(self, style: str = "auto") -> str:
        if style == "line":
            return self.headline
        lines = [self.headline, *self.own]
        if style == "long":
            lines += self.detail
        elif style != "short":
            lines += self.context
        return "\n".join(lines)


def _first_diverging_block(result: ModelResult, comparison: Comparison, r: LayerResult) -> list[str]:
    """The table around the first diverging layer and the diagnosis's reasons (the root cause's full report)."""
    first = comparison.first_diverging
    if first is None:
        return []
    this = " - this layer" if first.layer.tensor == r.layer.tensor else ""
    lines = [f"first diverging layer: {first.layer.name} ({first.layer.op_type}){this}", "",
             layer_table(comparison, first)]
    d = comparison.diagnosis
    if d is not None:
        lines += ["", f"diagnosis ({d.kind}):"] + [f"  - {w}" for w in d.why]
    return lines


def _todo(comparison: Comparison) -> list[str]:
    d = comparison.diagnosis
    return ["what to do:"] + [f"  - {t}" for t in d.todo] if d is not None else []


def layer_failure(result: ModelResult, comparison: Comparison, r: LayerResult) -> FailureText:
    """The failure of one layer item: the full report on the first diverging layer, 2-3 lines on the others.

    Every later failing layer either inherits the first one's error (its own error, the layer fed float inputs,
    is within the thresholds) or is a root cause of its own; saying which is what the engineer needs there.
    """
    s = r.summary
    headline = (f"{result.spec.name}: {comparison.reference} vs {comparison.target}: layer {r.layer.name} "
                f"({r.layer.op_type}, tensor {r.layer.tensor}): {_breaks(r)}")
    own = [f"  mean over {s.samples} samples; worst sample cos {fmt_num(s.worst['cos'])}, "
           f"rmse {fmt_num(s.worst['rmse'])}"
           + (f"; own error cos {fmt_num(r.own['cos'])}, rmse {fmt_num(r.own['rmse'])}" if r.own is not None else "")]
    first = comparison.first_diverging
    full = _first_diverging_block(result, comparison, r)
    workdir = [f"models (open in Netron): {result.artifacts.workdir}"] if result.artifacts is not None else []
    detail = (full + ([""] + _todo(comparison) if comparison.diagnosis is not None else [])
              + ([""] + workdir if workdir else []))
    if first is None or first.layer.tensor == r.layer.tensor:  # by tensor: cached results are copies
        return FailureText(headline, tuple(own), tuple(full), tuple(detail))
    if r.own_breaks:
        own.append(f"  own error breaks the thresholds: a root cause of its own (first diverging layer: "
                   f"{first.layer.name})")
    elif r.own is not None:
        own.append(f"  inherits from {first.layer.name}: its own error is within the thresholds")
    else:
        own.append(f"  first diverging layer: {first.layer.name} (own error not measured here)")
    return FailureText(headline, tuple(own), (), tuple(detail))


def outputs_failure(result: ModelResult, comparison: Comparison, r: LayerResult) -> FailureText:
    s = r.summary
    headline = (f"{result.spec.name}: float vs offline (deployable integer model): output {r.layer.tensor}: "
                f"{_breaks(r)}")
    lines = [f"  mean over {s.samples} samples; worst sample cos {fmt_num(s.worst['cos'])}, "
             f"rmse {fmt_num(s.worst['rmse'])}"]
    if result.outputs_only is not None:
        lines.append(f"  outputs only: {result.outputs_only}")
    fx = result.comparison("float", "fixed")
    if fx is not None:
        lines.append("  the same output in the fixed (fake-quant) model: " + ", ".join(
            f"cos {fmt_num(x.summary['cos'])} rmse {fmt_num(x.summary['rmse'])}"
            for x in fx.layers if x.layer.tensor == r.layer.tensor and x.summary))
        if fx.first_diverging is not None:
            lines.append(f"  float vs fixed first diverges at {fx.first_diverging.layer.name}: start there")
    return FailureText(headline, tuple(lines))


AGREEMENT_ROWS = 5  # tensors the fixed-vs-offline failure lists; the JSON and HTML reports hold all of them


def agreement_text(result: ModelResult, rows: int | None = AGREEMENT_ROWS) -> FailureText:
    """The fixed-vs-offline failure: the worst ``rows`` tensors (all of them with ``--tb=long``)."""
    a = result.agreement
    q = result.spec.quantization
    keys = list(a.tensors[0].histogram) if a.tensors else []

    def table(tensors) -> str:
        body = [[t.tensor, t.max_steps, f"{100 * t.mismatch_rate:.2f}%"] + [t.histogram[k] for k in t.histogram]
                for t in tensors]
        headers = ["tensor", "max steps", f"> {a.tolerance_steps} steps"] + [f"{k}" for k in keys]
        return tabulate(body, headers=headers, tablefmt="simple")

    worst, first = a.worst, a.first_failing
    headline = (f"{result.spec.name}: {a.reference} vs {a.target}: worst tensor {worst.tensor}: "
                f"{100 * worst.mismatch_rate:.2f}% of elements differ by more than {a.tolerance_steps} steps "
                f"(gate {100 * a.max_mismatch_rate:.2f}%), max {worst.max_steps} steps"
                ) if worst else "nothing compared"
    own = []
    if first is not None and first is not worst:
        own.append(f"first tensor beyond the gate (graph order; later tensors inherit its difference): "
                   f"{first.tensor}: {100 * first.mismatch_rate:.2f}%, max {first.max_steps} steps")
    # The hints name our conversion's settings: they say nothing about a model another tool quantized.
    hints = offline_hints(worst.max_steps if worst else 0, q.activations, q.weights, q.reduce_range) \
        if result.foreign is None and a.target != "board" else []
    effect = offline_effect(result.comparison("float", "fixed"), result.comparison("float", "offline"))
    if effect is not None:
        hints.append(effect)
    ranked = sorted(a.tensors, key=lambda t: (-t.mismatch_rate, -t.max_steps))
    shown = ranked[:rows]
    beyond = sum(t.mismatch_rate > a.max_mismatch_rate for t in a.tensors)
    more = (f"({len(a.tensors) - len(shown)} more tensors, {beyond} beyond the gate in all: the JSON and HTML "
            f"reports list every one)") if len(shown) < len(a.tensors) else ""
    hint_lines = [""] + [f"hint: {h}" for h in hints] if hints else []
    context = ["", f"the worst {len(shown)} tensors (step differences, element counts):", table(shown)] \
        + ([more] if more else []) + hint_lines
    detail = ["", "step differences per tensor (element counts):", table(a.tensors)] + hint_lines
    return FailureText(headline, tuple(own), tuple(context), tuple(detail))


def pipeline_text(name: str, r: PipelineResult) -> str:
    """The failure message of the original-vs-float item."""
    lines = [f"{name}: original vs float: the original model on your preprocessing (preprocess.hook) does not "
             f"match the model with the deployment preprocessing folded in (cos >= {r.cos})"]
    for out, s in r.outputs:
        lines.append(f"  output {out}: cos {s['cos']:.6f} (worst sample {s.worst['cos']:.6f}), rmse {s['rmse']:.4f}")
    fits = [s for s in r.suspects if s.fits]
    lines.append("")
    if fits:
        lines.append("what fits: your preprocessing behaves like the spec's preprocessing with this mistake:")
        lines += [f"  - {s.mistake} (cos {s.cos:.6f})" for s in fits]
    else:
        lines.append("no usual mistake explains the difference alone; check the spec's mean/std/scale, color and "
                     "layout against the hook")
    lines.append("suspects tested (original model on the simulated mistake vs on your preprocessing):")
    lines += [f"  {'*' if s.fits else ' '} {s.mistake}: cos {s.cos:.6f}" for s in r.suspects]
    return "\n".join(lines)

def regression_text(mspec: ModelSpec, check_: BaselineCheck, d: LayerDelta) -> str:
    return (f"{mspec.name}: {d.comparison}: layer {d.text()}\n"
            f"  got worse than its baseline by more than the tolerance (cos {check_.tolerance_cos}, "
            f"rmse {check_.tolerance_rmse}); it still meets the absolute thresholds.\n"
            f"baseline: {check_.path}\n"
            f"If the change is intended, re-record it locally with --quantacc-baseline-update and commit the diff.")
