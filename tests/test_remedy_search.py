"""The mixed-precision remedy through the real deepen path (and the plugin): planted models whose minimal set
of sites is known in advance, its verification by a real re-conversion, cost, harm, time budget and cache."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from planted_remedies import chain_entry, input_spike_entry
from verdict_models import detection_head

from conftest import write_spec
from pytest_quantacc import evaluate_model, load_spec
from pytest_quantacc.convert.prepare import PreparedModel
from pytest_quantacc.remedy.search import deepen
from pytest_quantacc.remedy.settings import apply_patch
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
    patched = replace(mspec, quantization=apply_patch(mspec.quantization, patch))
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
    chart = page[page.index('<svg class="curve"'):]
    chart = chart[:chart.index("</svg>")]
    curve = d1["search"]["curve"]
    assert chart.count("<circle") == len(curve)  # one dot per set judged, green when it passes
    assert chart.count('fill="#2e7d32"') == sum(c["passes"] for c in curve) >= 1
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


def _scores(model, images, optimize: bool):
    """The detector's class scores (rows 4-9 of output0), as the float model or the deployable model gives them."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    return ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"]).run(
        None, {"images": images})[0][:, 4:]


def test_a_set_left_in_float_when_16_bits_cannot_help(tmp_path):
    """Boxes up to 1e5 beside sigmoid scores in one Concat: even at 16 bits the Concat's step (1e5 / 65535, about
    1.5) leaves the scores no level, so the search must leave the Concat in float, and its patch must really
    keep output0 in float (excluding the producer alone leaves a tensor quantized for quantized consumers). The
    verdict is checked on the task: the detections (score >= 0.2) of the offered remedy's deployable model."""
    vm = detection_head(tmp_path / "m", box_max=1e5, stem="wide_head")
    entry = {"name": "wide_head", "model": str(vm.model), "calibration": {"data": str(vm.calib)},
             "evaluation": {"data": str(vm.eval)}, "modes": ["float", "fixed"]}
    mspec, result, d = _deepened(tmp_path, entry, use_cache=False)
    s = d.search
    assert s["first"]["level"] == "int16" and s["first"]["chosen"] == []  # not even every site at 16 bits passes
    assert s["level"] == "float" and [x["node"] for x in s["chosen"]] == ["head_concat"]
    assert s["evaluations"] + s["first"]["evaluations"] <= 3  # the int16 ceiling fails: no int16 search at all
    offered = next(a for a in d.attempts if a.patch == d.remedy)
    assert offered.passes and offered.patch == {"exclude_nodes": ["head_concat"]}
    fixed = onnx.load(offered.model)
    assert not [n for n in fixed.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "output0"]
    assert offered.outputs_cos is not None and offered.outputs_cos > 0.999  # output0 measured, not skipped
    images = np.load(vm.eval)["images"]
    want = int((_scores(vm.model, images, False) >= 0.2).sum())
    assert int((_scores(result.artifacts.fixed_model, images, True) >= 0.2).sum()) < 0.5 * want  # the default
    assert abs(int((_scores(offered.model, images, True) >= 0.2).sum()) - want) <= 0.05 * want


def test_a_float_site_excludes_its_producer_and_consumers(tmp_path):
    """ONNX Runtime's quantizer keeps h1 quantized for fc2 when only its producer fc1 is excluded; the float
    knob names fc1 and fc2, and with both excluded h1 (and fc2's weights) stay float, as the switchboard's
    closure predicts."""
    from pytest_quantacc.remedy.mixed import closure, float_nodes
    from pytest_quantacc.remedy.sensitivity import Switchboard

    entry = chain_entry(tmp_path / "c", "c", [0, 0, 0, 0], [0, 0, 0, 0])
    mspec = load_spec(write_spec(tmp_path / "c.yaml", [entry])).models[0]

    def quantized(exclude: list[str]) -> set[str]:
        patched = replace(mspec, quantization=apply_patch(mspec.quantization, {"exclude_nodes": exclude}))
        fixed = onnx.load(str(evaluate_model(patched, tmp_path / "-".join(exclude)).artifacts.fixed_model))
        return {n.input[0].removesuffix("_QuantizeLinear_Input").removesuffix("_quantized")
                for n in fixed.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")}

    assert "h1" in quantized(["fc1"])  # the producer alone is not enough
    default = evaluate_model(mspec, tmp_path / "default").artifacts
    board = Switchboard(onnx.load(str(default.float_model)), onnx.load(str(default.fixed_model)), [])
    h1 = next(x for x in board.sites if x.tensor == "h1")
    nodes = float_nodes(h1, h1.node)
    assert nodes == ("fc1", "fc2")
    left = quantized(list(nodes))
    assert "h1" not in left and "w2" not in left and "w1" not in left
    expanded = {board.sites[i].tensor for i in closure(board.sites, [float_nodes(x, x.node) for x in board.sites])(
        frozenset({h1.index}))}
    assert expanded == {"h1", "w1", "w2"}
    assert {x.tensor for x in board.sites} - expanded <= left  # what the closure keeps quantized stays so


def test_attempts_are_scored_on_the_task_with_an_accuracy_gate(tmp_path):
    """The example's outlier CNN with the digits labels and an accuracy gate: every re-converted attempt carries
    its deployable model's top-1 accuracy, computed here independently with numpy; the offered remedy keeps
    the float accuracy within max_drop; harm follows the rule (more than half of max_drop below the default)."""
    from pathlib import Path

    from pytest_quantacc.engine.accuracy import task_accuracy
    from pytest_quantacc.remedy.search import harmful

    example = Path(__file__).resolve().parent.parent / "example_project"
    entry = {"name": "outlier", "model": str(example / "models/digits_cnn_outlier.onnx"),
             "calibration": {"data": str(example / "data/calib.npz")},
             "evaluation": {"data": str(example / "data/eval.npz"), "labels": str(example / "data/eval_labels.npy")},
             "quantization": {"reduce_range": True}, "modes": ["float", "fixed"], "accuracy": {"max_drop": 0.01}}
    mspec = load_spec(write_spec(tmp_path / "outlier.yaml", [entry])).models[0]
    result = evaluate_model(mspec, tmp_path / "work")
    default = task_accuracy(mspec, result.artifacts, PreparedModel(mspec, result.artifacts.float_model).evaluation)
    d = deepen(result, use_cache=False, accuracy=default).comparison("float", "fixed").diagnosis
    images = np.load(example / "data/eval.npz")
    name = next(iter(images.files))
    labels = np.load(example / "data/eval_labels.npy")
    scored = [a for a in d.attempts if a.model]
    assert scored and all(a.accuracy is not None for a in scored)
    for a in scored:
        session = ort.InferenceSession(a.model, providers=["CPUExecutionProvider"])
        top1 = np.mean([session.run(None, {name: x[None]})[0].argmax() == y for x, y in zip(images[name], labels)])
        assert a.accuracy == pytest.approx(top1, abs=1e-12)
        if harmful(a, None, None, default):  # the accuracy rule alone (outputs may make an attempt harmful too)
            assert a.harmful
    offered = next(a for a in d.attempts if a.patch == d.remedy)
    assert offered.passes and default.float_value - offered.accuracy <= 0.01


def test_under_the_own_gate_a_remedy_is_verified_on_own_error(tmp_path):
    """The deep stack under gate: {layers: own}, its output allowed a wider error: only the two planted roots
    fail. A remedy is verified as the evaluation judges (own error), so raising the roots' sites suffices
    although the gradual accumulated error still breaks the thresholds of layers after them; a fresh
    evaluation of the patched spec passes under the same gate."""
    from verdict_models import DEEP_CULPRITS, deep_stack

    vm = deep_stack(tmp_path / "m")
    entry = {"name": "deep", "model": str(vm.model), "calibration": {"data": str(vm.calib)},
             "evaluation": {"data": str(vm.eval)}, "modes": ["float", "fixed"], "gate": {"layers": "own"},
             "layers": {"fc": {"cos": 0.9, "rmse": 0.5}}}
    mspec, result, d = _deepened(tmp_path, entry, use_cache=False)
    roots = [f"conv{k}" for k in DEEP_CULPRITS]
    assert [r.layer.name for r in result.comparison("float", "fixed").layers if r.status == "failed"] == roots
    offered = next(a for a in d.attempts if a.patch == d.remedy)
    assert offered.passes
    # The roots' own sites only (their weights, the inputs they read), where accumulated judging needed 44.
    assert {x["site"] for x in d.search["chosen"]} == {"conv14_w", "conv26_w", "conv13_out", "conv25_out"}
    assert d.search["evaluations"] <= 40
    patched = replace(mspec, quantization=apply_patch(mspec.quantization, d.remedy))
    again = evaluate_model(patched, tmp_path / "verify").comparison("float", "fixed")
    assert [r.layer.name for r in again.layers if r.status == "failed"] == []
    assert any(r.gate == "own" and r.diverges for r in again.layers)  # accumulated error alone would fail it


def test_own_error_on_the_switchboard_equals_the_evaluations_own_error_pass(tmp_path):
    """Gates' own error (a layer's own sites quantized, every other site float) against the evaluation's
    own-error pass (fixed.onnx rewired to read float values), on the default conversion of the deep stack."""
    from verdict_models import deep_stack

    from pytest_quantacc.remedy.gates import Gates
    from pytest_quantacc.remedy.sensitivity import Switchboard

    vm = deep_stack(tmp_path / "m")
    entry = {"name": "deep", "model": str(vm.model), "calibration": {"data": str(vm.calib)},
             "evaluation": {"data": str(vm.eval)}, "modes": ["float", "fixed"], "gate": {"layers": "own"}}
    mspec = load_spec(write_spec(tmp_path / "deep.yaml", [entry])).models[0]
    result = evaluate_model(mspec, tmp_path / "work")
    fixed = result.comparison("float", "fixed")
    fl, fx = onnx.load(str(result.artifacts.float_model)), onnx.load(str(result.artifacts.fixed_model))
    images = np.load(vm.eval)["input"]
    board = Switchboard(fl, fx, [{"input": images[i:i + 1]} for i in range(len(images))],
                        tensors=[r.layer.tensor for r in fixed.layers if r.layer.skip is None])
    own = Gates(board, [r.layer for r in fixed.layers], mspec, fl).own_metrics(board.fixed_levels())
    measured = [r for r in fixed.layers if r.own is not None and r.layer.tensor in own]
    assert len(measured) >= 32
    for r in measured:
        got = own[r.layer.tensor]
        assert got["cos"] == pytest.approx(r.own["cos"], abs=1e-6), r.layer.name
        assert got["rmse"] == pytest.approx(r.own["rmse"], rel=1e-5, abs=1e-7), r.layer.name


def test_a_released_session_is_rebuilt_with_the_same_result(tmp_path):
    """MixedSearch frees its session while a re-conversion runs; the next level's search rebuilds it on the
    samples it had and finds the same set as a search that never released it."""
    from pytest_quantacc.remedy.mixed import MixedSearch
    from pytest_quantacc.remedy.sensitivity import FLOAT, INT16

    entry = chain_entry(tmp_path / "c", "c", [8, 0, 0, 0], [0, 0, 80, 0])
    mspec = load_spec(write_spec(tmp_path / "c.yaml", [entry])).models[0]
    result = evaluate_model(mspec, tmp_path / "work")
    art = result.artifacts
    prepared = PreparedModel(mspec, art.float_model)

    def searched(release: bool) -> list:
        ms = MixedSearch(str(art.float_model), str(art.fixed_model), art.workdir, mspec,
                         result.comparison("float", "fixed").layers, prepared.evaluation, 4, 1, None)
        found = [ms.find(INT16).patch]
        if release:
            ms.release()
            assert ms.board is None
        found.append(ms.find(FLOAT).patch)
        return found

    assert searched(True) == searched(False) and all(searched(False))


def test_the_verified_patch_is_printed_once(tmp_path):
    _, result, d = _deepened(tmp_path, chain_entry(tmp_path / "c", "c", [8, 0, 0, 0], [0, 0, 80, 0]),
                             use_cache=False)
    text = model_summary(result)
    assert d.remedy is not None and "paste into the model entry" in text
    assert "verified remedy (" not in text  # the one-line JSON repeated the snippet
