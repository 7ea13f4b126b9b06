"""The JSON report (contract section 5, with the additive fields of later sections).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..engine.judge import model_verdict
from ..engine.metrics import NAMES
from ..engine.results import FAILED, PASSED, SKIPPED, BaselineCheck, Evaluated, LayerResult, ModelResult
from ..files import write_text
from .numbers import finite, finite_tree

REPORT_VERSION = 1


def layer_json(r: LayerResult) -> dict:
    d: dict = {"layer": r.layer.name, "op_type": r.layer.op_type, "tensor": r.layer.tensor}
    if r.summary is not None:
        d.update({k: finite(r.summary.mean[k]) for k in NAMES})
        d["worst"] = {k: finite(v) for k, v in r.summary.worst.items()}
    if r.own is not None:
        d["own_cos"], d["own_rmse"] = finite(r.own["cos"]), finite(r.own["rmse"])
    for kind in ("slice", "channel"):
        found = r.worst_part(kind)
        if found is not None:
            d[f"worst_{kind}"] = part_json(r, kind, *found)
    slices = next((ps for ps in r.parts if ps.kind == "slice"), None)
    if slices is not None:
        d["slices"] = [part_json(r, "slice", slices, p) for p in slices.parts]
    if r.status != SKIPPED:
        d["gate"] = r.gate
    d["status"] = r.status
    if r.reason:
        d["reason"] = r.reason
    if r.inherited_from:
        d["inherited_from"] = r.inherited_from
    return d


def part_json(r: LayerResult, kind: str, ps, p) -> dict:
    """One slice or channel: its index range, metrics, rule, whether it breaks, and its own error if measured."""
    d = finite_tree(p.as_json())
    d["axis"] = ps.axis
    if kind == "slice" and p.index < len(ps.names):
        d["input"], d["concat"] = ps.names[p.index], ps.node
    d["breaks"] = p.breaks(r.thresholds.cos, r.thresholds.rmse)
    own = next((o for o in r.own_parts if o.kind == kind and o.axis == ps.axis and len(o.parts) == len(ps.parts)),
               None)
    if own is not None:
        d["own_cos"], d["own_rmse"] = finite(own.parts[p.index].cos), finite(own.parts[p.index].rmse)
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
                           "outputs": [{"tensor": n, "cos": finite(s["cos"]), "rmse": finite(s["rmse"]),
                                        "worst_cos": finite(s.worst["cos"])} for n, s in p.outputs],
                           "suspects": [{"mistake": x.mistake, "cos": x.cos, "fits": x.fits} for x in p.suspects]}
    if result.foreign is not None:
        f = result.foreign
        out["quantized"] = {"model": str(f.path), "kind": f.kind}
        out["unmatched"] = [{"tensor": t, "reason": why} for t, why in f.unmatched]
    if result.outputs_only is not None:
        out["outputs_only"] = result.outputs_only
    comps = []
    for c in result.comparisons:
        comps.append({
            "reference": c.reference,
            "target": c.target,
            "first_diverging_layer": c.first_diverging.layer.name if c.first_diverging else None,
            "layers": [layer_json(r) | _foreign_tensor(result, r) for r in c.layers],
            **({"diagnosis": {"layer": c.diagnosis.layer, "kind": c.diagnosis.kind,
                              "roots": [finite_tree(x.as_json()) for x in c.diagnosis.roots],
                              "drops": [finite_tree(x.as_json()) for x in c.diagnosis.drops],
                              "contributors": list(c.diagnosis.contributors), "why": list(c.diagnosis.why),
                              "todo": list(c.diagnosis.todo), **diagnosis_json(c.diagnosis)}} if c.diagnosis else {}),
        })
    if result.agreement is not None:
        a = result.agreement
        comps.append({
            "reference": a.reference, "target": a.target,
            "first_diverging_layer": a.first_failing.tensor if a.first_failing else None,
            "tolerance_steps": a.tolerance_steps, "max_mismatch_rate": a.max_mismatch_rate,
            "status": PASSED if a.passed else FAILED,
            "layers": [{"tensor": t.tensor, "max_steps": t.max_steps, "mismatch_rate": t.mismatch_rate,
                        "elements": t.elements, "histogram": t.histogram,
                        "status": PASSED if t.mismatch_rate <= a.max_mismatch_rate else FAILED} for t in a.tensors],
        })
    out["comparisons"] = comps
    return out


def _foreign_tensor(result: ModelResult, r: LayerResult) -> dict:
    """Where a layer is in the user's own quantized model (``quantized:``): its tensor names are the tool's."""
    if result.foreign is None or r.layer.fixed_tensor is None:
        return {}
    return {"qdq_tensor": r.layer.fixed_tensor, **({"perm": list(r.layer.perm)} if r.layer.perm else {})}


def diagnosis_json(d) -> dict:
    """The remedy keys of a diagnosis (docs/CONTRACT.md, "Diagnosis and verified remedies")."""
    return {"remedy": d.remedy, "remedy_result": finite_tree(d.remedy_result),
            "remedy_attempts": [finite_tree(a.as_json()) for a in d.attempts],
            "root_cause": [finite_tree(s.as_json()) for s in d.stats],
            "sensitivity": [finite_tree(s) for s in d.sensitivity], "search": finite_tree(d.search),
            "cost": finite_tree(d.cost)}

def model_json_ci(ev: Evaluated, check: BaselineCheck | None, root: Path | None) -> dict:
    """``report.model_json`` plus ``accuracy``, ``baseline`` and ``cache``; status includes both gates."""
    out = model_json(ev.result, root)
    out["status"] = model_verdict(ev, check)
    a = ev.accuracy
    if a is not None:
        out["accuracy"] = {"metric": a.metric, "output": a.output, "float": a.float_value, "offline": a.offline_value,
                           "drop": a.drop, "max_drop": a.max_drop, "samples": a.samples,
                           "status": PASSED if a.passed else FAILED}
    elif ev.accuracy_error is not None:
        out["accuracy"] = {"status": FAILED, "error": ev.accuracy_error.message}
    if check is not None and ev.result.error is None:
        out["baseline"] = {
            "file": str(check.path), "found": check.found,
            "tolerance": {"cos": check.tolerance_cos, "rmse": check.tolerance_rmse},
            "regressed": [{"comparison": d.comparison, "layer": d.layer, "baseline": d.baseline, "now": d.now}
                          for d in check.regressed],
            "improved": [{"comparison": d.comparison, "layer": d.layer, "baseline": d.baseline, "now": d.now}
                         for d in check.improved],
            "stale": list(check.stale),
            **({"error": check.error} if check.error else {}),
        }
    out["cache"] = ev.cache
    return out


def write_report(path: Path, run, root: Path | None = None) -> None:
    """The JSON report (contract section 5 plus the additive CI fields) of every model the run evaluated."""
    models = [model_json_ci(ev, run.baseline_check(ev.result.spec), root) for ev in run.ordered()]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps({"quantacc_report": REPORT_VERSION, "models": models}, indent=2) + "\n")
