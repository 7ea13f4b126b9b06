"""The mixed-precision remedy through the real deepen path (and the plugin): planted models whose minimal set
of sites is known in advance, its verification by a real re-conversion, cost, harm, time budget and cache."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import yaml
from planted_remedies import chain_entry, input_spike_entry

from conftest import write_spec
from pytest_quantacc import evaluate_model, load_spec
from pytest_quantacc.remedy.search import _apply, deepen
from pytest_quantacc.report.jsonreport import model_json
from pytest_quantacc.report.summary import model_summary


def _deepened(tmp_path, entry, **kw):
    mspec = load_spec(write_spec(tmp_path / f"{entry['name']}.yaml", [entry])).models[0]
    result = deepen(evaluate_model(mspec, tmp_path / "work"), **kw)
    return mspec, result, result.comparison("float", "fixed").diagnosis


# (name, weight outliers, activation outliers, the minimal set, evaluations allowed, its patch, MAC share at 16
# bits: every Gemm has 32x32 MACs, a Gemm runs at 16 bits when its weights are 16-bit or it reads a 16-bit h)
CASES = [
    ("two_break_alone", [8, 0, 0, 0], [0, 0, 80, 0], {"w0", "h2"}, 5,
     {"overrides": {"fc0": {"weights": "int16"}, "fc2": {"activations": "int16"}}}, 0.5),
    # w0 breaks alone; h1 and w2 pass alone but not together: one of them goes with w0 (h1, more sensitive)
    ("only_together", [8, 0, 6, 0], [0, 60, 0, 0], {"w0", "h1"}, 5,
     {"overrides": {"fc0": {"weights": "int16"}, "fc1": {"activations": "int16"}}}, 0.5),
    # 16 bits everywhere passes (the search's second evaluation), one site suffices
    ("one_suffices", [0, 0, 10, 0], [0, 0, 0, 0], {"w2"}, 3, {"overrides": {"fc2": {"weights": "int16"}}}, 0.25),
]


@pytest.mark.parametrize(("name", "wo", "ao", "sites", "evaluations", "patch", "macs_16"), CASES,
                         ids=[c[0] for c in CASES])
def test_planted_minimal_set_through_deepen(tmp_path, name, wo, ao, sites, evaluations, patch, macs_16):
    mspec, _, d = _deepened(tmp_path, chain_entry(tmp_path / name, name, wo, ao), use_cache=False)
    s = d.search
    assert {x["site"] for x in s["chosen"]} == sites and s["level"] == "int16"
    # 9 sites; the graph input x has no setting to raise it, the other 8 are measured
    assert s["evaluations"] <= evaluations and (s["ranked"], s["sites"], s["samples"]) == (8, 9, 4)
    # the ranking (most sensitive first) puts the planted sites on top
    assert {r["site"] for r in d.sensitivity[:len(sites)]} == sites
    assert [r["score"] for r in d.sensitivity] == sorted((r["score"] for r in d.sensitivity), reverse=True)
    assert {"node", "site", "kind", "metric", "alone", "raised", "left_float", "local_error"} <= set(d.sensitivity[0])
    if name == "only_together":  # the higher-ranked w0 alone is not enough on the gates
        assert next(c for c in s["curve"] if c["sites"] == ["w0"])["passes"] is False
    mixed = d.attempts[0]
    assert mixed.patch == patch and mixed.passes and s["verified"]  # one real re-conversion, all samples
    assert mixed.cost["shares"]["macs_16"] == pytest.approx(macs_16)
    assert mixed.cost["shares"]["macs_8"] == pytest.approx(1 - macs_16)
    # a weight site in the set: per-channel weights (int8 everywhere) gets one conversion; when it passes it is
    # the cheaper deployment and is offered instead
    assert [a.patch for a in d.attempts[1:]] == [{"per_channel": True}]
    offered = d.attempts[1] if d.attempts[1].passes else mixed
    assert d.remedy == offered.patch and d.cost["label"] == offered.label
    assert {"latency_ms", "latency_int8_ms", "latency_float_ms", "slower_than_float"} <= set(d.cost)
    assert not any(a.harmful for a in d.attempts)
    # independent check: a fresh evaluation of the spec with the set's patch applied passes every layer
    patched = replace(mspec, quantization=_apply(mspec.quantization, patch))
    assert evaluate_model(patched, tmp_path / "verify").comparison("float", "fixed").first_diverging is None


def test_harmful_attempt_is_marked_in_json_and_report(tmp_path):
    """Percentile calibration clips the input's informative spike: outputs far worse than the default."""
    _, result, d = _deepened(tmp_path, input_spike_entry(tmp_path / "spike", "spike"), use_cache=False)
    assert d.search["found"] is False and d.search["chosen"] == []  # the input site has no setting to raise
    by_label = {a.label: a for a in d.attempts}
    default_cos = result.comparison("float", "fixed").layers[-1].summary["cos"]
    pct = by_label["percentile calibration"]
    assert pct.harmful and pct.outputs_cos < default_cos - 0.1
    assert [a.label for a in d.attempts if a.harmful] == ["percentile calibration"]
    attempts = model_json(result)["comparisons"][0]["diagnosis"]["remedy_attempts"]
    assert [a["harmful"] for a in attempts] == [a.harmful for a in d.attempts]
    assert "harmful: percentile calibration" in model_summary(result)


def test_remedy_time_bounds_the_search_and_says_what_was_cut(tmp_path):
    _, result, d = _deepened(tmp_path, chain_entry(tmp_path / "c", "c", [8, 0, 0, 0], [0, 0, 80, 0]),
                             remedy_time=0.0, use_cache=False)
    assert d.attempts == () and d.remedy is None
    assert len(d.sensitivity) == 8 and {r["metric"] for r in d.sensitivity} == {"local rmse"}  # none measured
    cut = d.search["cut"]
    assert any("sensitivity measured for 0 of 8 sites" in c for c in cut)
    assert any("not tried: per-channel weights" in c for c in cut)
    assert "cut: remedy time spent" in model_summary(result)


def test_fix_file_passes_and_a_warm_rerun_reuses_the_search(pytester, tmp_path):
    entry = chain_entry(tmp_path / "m", "chain", [8, 0, 0, 0], [0, 0, 80, 0])
    spec = write_spec(pytester.path / "quantacc_chain.yaml", [entry])
    args = [spec.name, "--quantacc", "--quantacc-workdir", str(pytester.path / "work"), "-p", "no:randomly"]
    first = pytester.runpytest(*args, "--quantacc-report", "r1.json", "--quantacc-fix",
                               "--quantacc-remedy-samples", "3", "--quantacc-html", "r1.html")
    first.assert_outcomes(failed=3, passed=2)
    assert "remedy search: 8/9 sites ranked on 3 samples" in first.stdout.str()
    r1 = json.loads((pytester.path / "r1.json").read_text())["models"][0]
    d1 = r1["comparisons"][0]["diagnosis"]
    assert r1["cache"] == "computed" and d1["search"]["cache"] == "computed" and d1["search"]["samples"] == 3
    page = (pytester.path / "r1.html").read_text()
    assert "Sensitivity (gate margin" in page and "int8 MACs" in page and "Sets judged" in page
    remedies = sorted((pytester.path / "work").glob("*/*/remedies/**/*"))
    stamps = {p: p.stat().st_mtime_ns for p in remedies if p.is_file()}
    second = pytester.runpytest(*args, "--quantacc-report", "r2.json", "--quantacc-remedy-samples", "3")
    second.assert_outcomes(failed=3, passed=2)
    r2 = json.loads((pytester.path / "r2.json").read_text())["models"][0]
    d2 = r2["comparisons"][0]["diagnosis"]
    assert r2["cache"] == "reused" and d2["search"]["cache"] == "reused"
    assert {k: v for k, v in d2.items() if k != "search"} == {k: v for k, v in d1.items() if k != "search"}
    assert d2["remedy_attempts"] and d2["sensitivity"] and d2["search"]["curve"] == d1["search"]["curve"]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # no attempt re-converted, nothing rewritten
    assert "cached (no inference)" in second.stdout.str()
    fix = pytester.path / "quantacc_chain.fix.yaml"
    assert yaml.safe_load(fix.read_text())["models"][0]["quantization"] == {"overrides": d1["remedy"]["overrides"]}
    pytester.runpytest(fix.name, *args[1:]).assert_outcomes(passed=5)
