"""Baselines (the ratchet): per-layer metrics recorded next to the spec, and regressions against them.

Absolute thresholds catch a broken model; they do not catch a healthy model getting worse (cos 0.9995 ->
0.9920 still passes 0.99). ``--quantacc-baseline-update`` records each compared layer's cos and rmse in
``<spec stem>.baseline.json`` beside the spec: sorted keys, values rounded to 6 decimals, one layer per line,
so a model change shows as a small, reviewable diff. A normal run then fails a layer that got worse than
its recorded value by more than a tolerance, and reports layers that improved and recorded layers that no
longer exist. Baselines are written only when asked, never in CI (``CI`` set).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from ..engine.results import IMPROVED, REGRESSED, SAME, SKIPPED, BaselineCheck, Comparison, LayerDelta, ModelResult
from ..files import write_text
from ..spec.model import ModelSpec

VERSION = 1
DIGITS = 6


def baseline_path(spec_path: Path) -> Path:
    return spec_path.with_name(f"{spec_path.stem}.baseline.json")


def in_ci() -> bool:
    """CI systems set ``CI`` (GitHub Actions, GitLab, CircleCI, Travis, Buildkite, ...)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _labels(c: Comparison) -> dict[str, str]:
    """tensor -> baseline key: the node name, plus ``:tensor`` for nodes with several compared outputs."""
    names = [r.layer.name for r in c.layers]
    return {r.layer.tensor: r.layer.name if names.count(r.layer.name) == 1 else f"{r.layer.name}:{r.layer.tensor}"
            for r in c.layers}


def _value(v: float) -> float | str:
    return round(v, DIGITS) if math.isfinite(v) else str(v)


def _comparison_name(c: Comparison) -> str:
    return f"{c.reference}-vs-{c.target}"


def record(result: ModelResult) -> dict:
    """The baseline entry of one model: ``{comparison: {layer: {cos, rmse}}}``."""
    out: dict = {}
    for c in result.comparisons:
        labels = _labels(c)
        out[_comparison_name(c)] = {labels[r.layer.tensor]: {"cos": _value(r.summary["cos"]),
                                                             "rmse": _value(r.summary["rmse"])}
                                    for r in c.layers if r.summary is not None and r.status != SKIPPED}
    return out


def write(spec_path: Path, results: list[ModelResult]) -> Path:
    """Record ``results`` (models of one spec) into its baseline file, keeping other models' entries."""
    path = baseline_path(spec_path)
    models = {}
    if path.is_file():
        try:
            models = json.loads(path.read_text()).get("models", {})
        except (OSError, ValueError, AttributeError):
            models = {}  # unreadable: it is being replaced on purpose
    for r in results:
        models[r.spec.name] = record(r)
    text = json.dumps({"quantacc_baseline": VERSION, "models": models}, indent=1, sort_keys=True) + "\n"
    write_text(path, text)
    return path


def _verdict(base: dict[str, float], now: dict[str, float], tol_cos: float, tol_rmse: float) -> str:
    if now["cos"] < base["cos"] - tol_cos or now["rmse"] > base["rmse"] + tol_rmse:
        return REGRESSED
    if now["cos"] > base["cos"] + tol_cos or now["rmse"] < base["rmse"] - tol_rmse:
        return IMPROVED
    return SAME


def check_baseline(mspec: ModelSpec, result: ModelResult, tolerance_cos: float, tolerance_rmse: float) -> BaselineCheck:
    """Compare ``result`` with the recorded baseline; spec tolerances override the given (ini) ones."""
    tol_cos = mspec.baseline.cos if mspec.baseline.cos is not None else tolerance_cos
    tol_rmse = mspec.baseline.rmse if mspec.baseline.rmse is not None else tolerance_rmse
    path = baseline_path(mspec.spec_path)
    if not path.is_file():
        return BaselineCheck(path, False, tol_cos, tol_rmse)
    try:
        data = json.loads(path.read_text())
        entry = data["models"].get(mspec.name) if data.get("quantacc_baseline") == VERSION else None
        if data.get("quantacc_baseline") != VERSION:
            raise ValueError(f"expected quantacc_baseline: {VERSION}")
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as exc:
        return BaselineCheck(path, False, tol_cos, tol_rmse, error=f"{path}: not a readable baseline file ({exc}); "
                             f"re-create it with --quantacc-baseline-update")
    if not isinstance(entry, dict):
        return BaselineCheck(path, False, tol_cos, tol_rmse)
    deltas, seen = [], set()
    for c in result.comparisons:
        name = _comparison_name(c)
        recorded = entry.get(name, {})
        labels = _labels(c)
        for r in c.layers:
            label = labels[r.layer.tensor]
            base = recorded.get(label)
            if r.summary is None or r.status == SKIPPED or not isinstance(base, dict):
                continue
            seen.add((name, label))
            b = {k: float(base[k]) for k in ("cos", "rmse")}
            now = {"cos": r.summary["cos"], "rmse": r.summary["rmse"]}
            deltas.append(LayerDelta(name, r.layer.name, r.layer.tensor, b, now, _verdict(b, now, tol_cos, tol_rmse)))
    stale = tuple(f"{name}: {label}" for name in sorted(entry) for label in sorted(entry[name])
                  if (name, label) not in seen)
    return BaselineCheck(path, True, tol_cos, tol_rmse, tuple(deltas), stale)


