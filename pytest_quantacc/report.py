"""Human and machine renderings of results: failure messages, terminal summary, JSON, JUnit properties."""

from __future__ import annotations

import json
import math
from pathlib import Path

from tabulate import tabulate

from .diagnose import offline_hints
from .engine import FAILED, PASSED, Comparison, LayerResult, ModelResult
from .metrics import NAMES

REPORT_VERSION = 1


def fmt_num(v: float | None, digits: int = 4) -> str:
    if v is None:
        return "-"
    if math.isinf(v) or math.isnan(v):
        return str(v)
    return f"{v:.{digits}f}"


def _row(r: LayerResult, mark: bool) -> list[str]:
    s = r.summary
    status = r.status + (f" (from {r.inherited_from})" if r.inherited_from else "")
    own = r.own
    return ["->" if mark else "", r.layer.name, r.layer.op_type, fmt_num(s["cos"] if s else None),
            fmt_num(s["rmse"] if s else None), fmt_num(own["cos"] if own else None), fmt_num(own["rmse"] if own else None),
            status]


def layer_table(comparison: Comparison, around: LayerResult | None = None, context: int = 3) -> str:
    """The compared layers around ``around`` (all when None), skipped layers left out."""
    rows = [r for r in comparison.layers if r.status != "skipped"]
    if around is not None and around in rows:
        i = rows.index(around)
        rows = rows[max(0, i - context): i + context + 1]
    return tabulate([_row(r, r is around) for r in rows],
                    headers=["", "layer", "op", "cos", "rmse", "own cos", "own rmse", "status"], tablefmt="simple")


def _breaks(r: LayerResult) -> str:
    s, t = r.summary, r.thresholds
    parts = []
    if s["cos"] < t.cos:
        parts.append(f"cos {fmt_num(s['cos'])} < {t.cos}")
    if s["rmse"] > t.rmse:
        parts.append(f"rmse {fmt_num(s['rmse'])} > {t.rmse}")
    return ", ".join(parts) or f"cos {fmt_num(s['cos'])}, rmse {fmt_num(s['rmse'])} within thresholds"


def layer_failure(result: ModelResult, comparison: Comparison, r: LayerResult) -> str:
    """The failure message of one layer item: what broke, where the comparison first diverged, why, what to do."""
    s = r.summary
    lines = [
        f"{result.spec.name}: {comparison.reference} vs {comparison.target}: layer {r.layer.name} "
        f"({r.layer.op_type}, tensor {r.layer.tensor}): {_breaks(r)}",
        f"  mean over {s.samples} samples; worst sample cos {fmt_num(s.worst['cos'])}, rmse {fmt_num(s.worst['rmse'])}",
    ]
    first = comparison.first_diverging
    if first is not None:
        lines.append(f"first diverging layer: {first.layer.name} ({first.layer.op_type})"
                     + (" - this layer" if first is r else ""))
        lines.append("")
        lines.append(layer_table(comparison, first))
    d = comparison.diagnosis
    if d is not None:
        lines.append("")
        lines.append(f"diagnosis ({d.kind}):")
        lines += [f"  - {w}" for w in d.why]
        lines.append("what to do:")
        lines += [f"  - {t}" for t in d.todo]
    if result.artifacts is not None:
        lines.append("")
        lines.append(f"models (open in Netron): {result.artifacts.workdir}")
    return "\n".join(lines)


def outputs_failure(result: ModelResult, comparison: Comparison, r: LayerResult) -> str:
    s = r.summary
    lines = [f"{result.spec.name}: float vs offline (deployable integer model): output {r.layer.tensor}: {_breaks(r)}",
             f"  mean over {s.samples} samples; worst sample cos {fmt_num(s.worst['cos'])}, rmse {fmt_num(s.worst['rmse'])}"]
    fx = result.comparison("float", "fixed")
    if fx is not None:
        lines.append("  the same output in the fixed (fake-quant) model: " + ", ".join(
            f"cos {fmt_num(x.summary['cos'])} rmse {fmt_num(x.summary['rmse'])}"
            for x in fx.layers if x.layer.tensor == r.layer.tensor and x.summary))
        if fx.first_diverging is not None:
            lines.append(f"  float vs fixed first diverges at {fx.first_diverging.layer.name}: start there")
    return "\n".join(lines)


def agreement_text(result: ModelResult) -> str:
    a = result.agreement
    q = result.spec.quantization
    rows = [[t.tensor, t.max_steps, f"{100 * t.mismatch_rate:.2f}%"] + [t.histogram[k] for k in t.histogram]
            for t in a.tensors]
    keys = list(a.tensors[0].histogram) if a.tensors else []
    table = tabulate(rows, headers=["tensor", "max steps", f"> {a.tolerance_steps} steps"] + [f"{k}" for k in keys],
                     tablefmt="simple")
    worst, first = a.worst, a.first_failing
    head = (f"{result.spec.name}: fixed vs offline: worst tensor {worst.tensor}: "
            f"{100 * worst.mismatch_rate:.2f}% of elements differ by more than {a.tolerance_steps} steps "
            f"(gate {100 * a.max_mismatch_rate:.2f}%), max {worst.max_steps} steps") if worst else "nothing compared"
    if first is not None and first is not worst:
        head += (f"\nfirst tensor beyond the gate (graph order; later tensors inherit its difference): "
                 f"{first.tensor}: {100 * first.mismatch_rate:.2f}%, max {first.max_steps} steps")
    hints = offline_hints(worst.max_steps if worst else 0, q.activations, q.weights, q.reduce_range)
    return "\n".join([head, "", "step differences per tensor (element counts):", table]
                     + ([""] + [f"hint: {h}" for h in hints] if hints else []))


def model_summary(result: ModelResult) -> str:
    """A few lines per model for the terminal summary."""
    name = f"{result.spec.name} ({result.spec.spec_path.name})"
    if result.error is not None:
        return f"{name}: ERROR {result.error.message}"
    compared = "dumped tensors compared" if result.spec.dumps else "quantized tensors"
    lines = [f"{name}: {result.status.upper()}, {result.quantized_layers} {compared}, {result.samples} samples"]
    if result.memory:
        lines.append(f"  memory: {result.memory}")
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
        measured = [r for r in c.layers if r.summary is not None and r.status != "skipped"]
        worst = sorted(measured, key=lambda r: r.summary["cos"])[:3]
        lines.append(f"  {c.reference} vs {c.target}: first diverging layer: {first}; "
                     + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
                     + ("; worst: " + ", ".join(f"{r.layer.name} cos {fmt_num(r.summary['cos'])}" for r in worst)
                        if worst else ""))
        if c.diagnosis is not None:
            lines.append(f"    diagnosis: {c.diagnosis.kind} at {c.diagnosis.layer}")
            if c.diagnosis.remedy is not None:
                lines.append(f"    verified remedy ({len(c.diagnosis.attempts)} tried): quantization: "
                             + json.dumps(c.diagnosis.remedy, separators=(", ", ": ")).replace('"', ""))
    if result.agreement is not None and result.agreement.worst is not None:
        w = result.agreement.worst
        first = result.agreement.first_failing
        lines.append(f"  fixed vs offline: {'passed' if result.agreement.passed else 'FAILED'}; "
                     + (f"first {first.tensor}; " if first is not None and first is not w else "")
                     + f"worst {w.tensor}: {100 * w.mismatch_rate:.2f}% beyond {result.agreement.tolerance_steps} "
                       f"steps, max {w.max_steps}")
    return "\n".join(lines)


def _finite(v: float) -> float | str:
    return v if math.isfinite(v) else str(v)  # JSON has no inf/nan


def layer_json(r: LayerResult) -> dict:
    d: dict = {"layer": r.layer.name, "op_type": r.layer.op_type, "tensor": r.layer.tensor}
    if r.summary is not None:
        d.update({k: _finite(r.summary.mean[k]) for k in NAMES})
        d["worst"] = {k: _finite(v) for k, v in r.summary.worst.items()}
    if r.own is not None:
        d["own_cos"], d["own_rmse"] = _finite(r.own["cos"]), _finite(r.own["rmse"])
    d["status"] = r.status
    if r.reason:
        d["reason"] = r.reason
    if r.inherited_from:
        d["inherited_from"] = r.inherited_from
    return d


def model_json(result: ModelResult, root: Path | None = None) -> dict:
    spec = result.spec.spec_path
    if root is not None:
        try:
            spec = spec.relative_to(root)
        except ValueError:
            pass
    out: dict = {"name": result.spec.name, "spec": str(spec), "status": result.status, "samples": result.samples,
                 "quantized_layers": result.quantized_layers, "passes": result.passes}
    if result.error is not None:
        out["error"] = result.error.message
    if result.artifacts is not None:
        out["artifacts"] = str(result.artifacts.workdir)
    if result.command is not None:
        c = result.command
        out["command"] = {"argv": list(c.argv), "returncode": c.returncode, "seconds": round(c.seconds, 3),
                          "stdout_tail": c.stdout, "stderr_tail": c.stderr}
    if result.pipeline is not None:
        p = result.pipeline
        out["pipeline"] = {"status": PASSED if p.passed else FAILED, "cos_threshold": p.cos,
                           "outputs": [{"tensor": n, "cos": _finite(s["cos"]), "rmse": _finite(s["rmse"]),
                                        "worst_cos": _finite(s.worst["cos"])} for n, s in p.outputs],
                           "suspects": [{"mistake": x.mistake, "cos": x.cos, "fits": x.fits} for x in p.suspects]}
    comps = []
    for c in result.comparisons:
        comps.append({
            "reference": c.reference,
            "target": c.target,
            "first_diverging_layer": c.first_diverging.layer.name if c.first_diverging else None,
            "layers": [layer_json(r) for r in c.layers],
            **({"diagnosis": {"layer": c.diagnosis.layer, "kind": c.diagnosis.kind,
                              "contributors": list(c.diagnosis.contributors), "why": list(c.diagnosis.why),
                              "todo": list(c.diagnosis.todo), **diagnosis_json(c.diagnosis)}} if c.diagnosis else {}),
        })
    if result.agreement is not None:
        a = result.agreement
        comps.append({
            "reference": "fixed", "target": "offline",
            "first_diverging_layer": a.first_failing.tensor if a.first_failing else None,
            "tolerance_steps": a.tolerance_steps, "max_mismatch_rate": a.max_mismatch_rate,
            "status": PASSED if a.passed else FAILED,
            "layers": [{"tensor": t.tensor, "max_steps": t.max_steps, "mismatch_rate": t.mismatch_rate,
                        "elements": t.elements, "histogram": t.histogram,
                        "status": PASSED if t.mismatch_rate <= a.max_mismatch_rate else FAILED} for t in a.tensors],
        })
    out["comparisons"] = comps
    return out


def diagnosis_json(d) -> dict:
    """The remedy keys of a diagnosis (docs/CONTRACT.md, "Diagnosis and verified remedies")."""
    return {"remedy": d.remedy, "remedy_result": _finite_tree(d.remedy_result),
            "remedy_attempts": [_finite_tree(a.as_json()) for a in d.attempts],
            "root_cause": [_finite_tree(s.as_json()) for s in d.stats]}


def _finite_tree(v):
    if isinstance(v, float):
        return _finite(v)
    if isinstance(v, dict):
        return {k: _finite_tree(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite_tree(x) for x in v]
    return v


def report_json(results: list[ModelResult], root: Path | None = None) -> dict:
    return {"quantacc_report": REPORT_VERSION, "models": [model_json(r, root) for r in results]}


def write_json(path: Path, results: list[ModelResult], root: Path | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report_json(results, root), indent=2) + "\n")
    tmp.replace(path)


def junit_properties(r: LayerResult) -> list[tuple[str, object]]:
    """``quantacc.<metric>`` properties of one layer item, for dashboards reading JUnit XML."""
    props: list[tuple[str, object]] = [("quantacc.layer", r.layer.name), ("quantacc.op_type", r.layer.op_type),
                                       ("quantacc.tensor", r.layer.tensor)]
    if r.summary is not None:
        props += [(f"quantacc.{k}", round(r.summary.mean[k], 6) if math.isfinite(r.summary.mean[k])
                   else str(r.summary.mean[k])) for k in NAMES]
        props += [("quantacc.worst_cos", round(r.summary.worst["cos"], 6)),
                  ("quantacc.worst_rmse", round(r.summary.worst["rmse"], 6) if math.isfinite(r.summary.worst["rmse"])
                   else str(r.summary.worst["rmse"]))]
    if r.own is not None:
        props += [("quantacc.own_cos", round(r.own["cos"], 6)), ("quantacc.own_rmse", round(r.own["rmse"], 6))]
    props.append(("quantacc.status", r.status))
    return props
