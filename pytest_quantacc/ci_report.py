"""The CI additions to the terminal summary and the JSON report: task accuracy, baseline, cache use.

``report.py`` renders a ``ModelResult``; the gates added for CI (accuracy, baseline) and the cache live
beside it, so this module extends each model's JSON object (contract section 5 stays as it is, with
additive fields) and adds summary lines. A model whose accuracy gate or baseline fails is ``failed``.
"""

from __future__ import annotations

import json
from pathlib import Path

from .baseline import BaselineCheck
from .cache import Evaluated
from .engine import FAILED
from .report import REPORT_VERSION, model_json, model_summary


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


def gates_fail(ev: Evaluated, check: BaselineCheck | None) -> bool:
    """The accuracy gate or the baseline fails (the model is failed even when every layer passes)."""
    if ev.accuracy_error is not None or (ev.accuracy is not None and not ev.accuracy.passed):
        return True
    if check is None or ev.result.error is not None:
        return False
    return bool(check.regressed or check.error or (not check.found and ev.result.spec.baseline.required))


def summary_head(ev: Evaluated, check: BaselineCheck | None) -> str:
    """``report.model_summary`` with the model's status including the CI gates."""
    text = model_summary(ev.result)
    return text.replace(": PASSED,", ": FAILED,", 1) if gates_fail(ev, check) else text


def model_json_ci(ev: Evaluated, check: BaselineCheck | None, root: Path | None) -> dict:
    """``report.model_json`` plus ``accuracy``, ``baseline`` and ``cache``; status includes both gates."""
    out = model_json(ev.result, root)
    if gates_fail(ev, check):
        out["status"] = FAILED
    a = ev.accuracy
    if a is not None:
        out["accuracy"] = {"metric": a.metric, "output": a.output, "float": a.float_value, "offline": a.offline_value,
                           "drop": a.drop, "max_drop": a.max_drop, "samples": a.samples,
                           "status": "passed" if a.passed else FAILED}
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
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"quantacc_report": REPORT_VERSION, "models": models}, indent=2) + "\n")
    tmp.replace(path)
