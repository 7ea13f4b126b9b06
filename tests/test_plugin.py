"""The pytest layer, driven through pytester on the example project and zoo models."""

from __future__ import annotations

import json
import re
import shutil
import xml.etree.ElementTree as ET

import onnx
import pytest
import yaml

from conftest import EXAMPLE, write_spec, zoo_entry


@pytest.fixture
def project(pytester):
    """A copy of the example project in pytester's directory."""
    for sub in ("models", "data"):
        shutil.copytree(EXAMPLE / sub, pytester.path / sub)
    for spec in ("quantacc.yaml", "quantacc_outlier.yaml"):
        shutil.copy(EXAMPLE / spec, pytester.path / spec)
    return pytester


def run(pytester, *args):
    return pytester.runpytest("--quantacc", *args, "--quantacc-workdir", str(pytester.path / "work"), "-p",
                              "no:randomly")


def test_items_in_topological_order(project):
    result = run(project, "quantacc.yaml", "--collect-only", "-q")
    ids = [line for line in result.outlines if "::" in line]
    assert ids == [
        "quantacc.yaml::digits_cnn::convert",
        "quantacc.yaml::digits_cnn::float-vs-fixed[conv1/Conv]",
        "quantacc.yaml::digits_cnn::float-vs-fixed[relu1/Relu]",
        "quantacc.yaml::digits_cnn::float-vs-fixed[conv2/Conv]",
        "quantacc.yaml::digits_cnn::float-vs-fixed[relu2/Relu]",
        "quantacc.yaml::digits_cnn::float-vs-fixed[pool/MaxPool]",
        "quantacc.yaml::digits_cnn::float-vs-fixed[flatten/Flatten]",
        "quantacc.yaml::digits_cnn::float-vs-fixed[fc1/Gemm]",
        "quantacc.yaml::digits_cnn::float-vs-fixed[relu3/Relu]",
        "quantacc.yaml::digits_cnn::float-vs-fixed[fc2/Gemm]",
        "quantacc.yaml::digits_cnn::float-vs-fixed[softmax/Softmax]",
        "quantacc.yaml::digits_cnn::float-vs-offline[logits]",
        "quantacc.yaml::digits_cnn::float-vs-offline[probs]",
        "quantacc.yaml::digits_cnn::fixed-vs-offline",
        "quantacc.yaml::digits_cnn::accuracy",
    ]
    # collection reads graphs only: nothing was quantized yet
    assert not list((project.path / "work").rglob("fixed.onnx"))


def test_yaml_left_alone_without_the_flag(project):
    result = project.runpytest(".")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED


def test_directory_collection_uses_patterns(project):
    (project.path / "other.yaml").write_text("not: a spec\n")
    result = run(project, ".", "--collect-only", "-q")
    out = result.stdout.str()
    assert "quantacc.yaml::digits_cnn::convert" in out
    assert "quantacc_outlier.yaml::digits_outlier::convert" in out
    assert "other.yaml" not in out


def test_healthy_example_passes(project):
    result = run(project, "quantacc.yaml")
    result.assert_outcomes(passed=12, skipped=3)
    out = result.stdout.str()
    assert "digits_cnn (quantacc.yaml): PASSED" in out
    assert "first diverging layer: none" in out


def test_outlier_example_fails_at_the_planted_layer(project):
    text = (project.path / "quantacc_outlier.yaml").read_text()
    (project.path / "quantacc_outlier.yaml").write_text(text[:text.index("    known_bad:")])
    result = run(project, "quantacc_outlier.yaml")
    result.assert_outcomes(passed=6, failed=5, skipped=3)
    out = result.stdout.str()
    assert "first diverging layer: relu3 (Relu)" in out
    assert re.search(r"^->\s+relu3\s+Relu", out, re.M)  # the table marks it
    assert "own cos" in out
    assert "diagnosis (abrupt)" in out
    assert "Traceback" not in out and "pytest_quantacc/" not in out


def test_known_bad_layer_and_what_it_causes_are_xfail(project):
    result = run(project, "quantacc_outlier.yaml", "-rxX")
    result.assert_outcomes(passed=6, skipped=3, xfailed=5)
    out = result.stdout.str()
    assert "XFAIL quantacc_outlier.yaml::digits_outlier::float-vs-fixed[relu3/Relu] - relu2 output channel 5" in out
    assert "XFAIL quantacc_outlier.yaml::digits_outlier::float-vs-fixed[fc2/Gemm] - inherits the error of " \
           "known_bad layer relu3" in out
    assert "XFAIL quantacc_outlier.yaml::digits_outlier::float-vs-offline[logits] - inherits" in out


def spec_with_known_bad(pytester, layer, strict):
    text = (pytester.path / "quantacc.yaml").read_text()
    text += f"    known_bad:\n      - layer: {layer}\n        reason: tracked in issue 42\n        strict: {strict}\n"
    (pytester.path / "quantacc.yaml").write_text(text)


def test_known_bad_that_passes_is_xpass_strict_failure(project):
    spec_with_known_bad(project, "relu1", "true")
    result = run(project, "quantacc.yaml")
    result.assert_outcomes(passed=11, failed=1, skipped=3)
    assert "XPASS(strict)" in result.stdout.str()


def test_known_bad_that_passes_non_strict_is_xpassed(project):
    spec_with_known_bad(project, "relu*", "false")
    result = run(project, "quantacc.yaml")
    result.assert_outcomes(passed=9, xpassed=3, skipped=3)


def test_junit_xml_carries_metrics(project):
    result = run(project, "quantacc.yaml", "--junitxml", "out.xml")
    result.assert_outcomes(passed=12, skipped=3)
    root = ET.parse(project.path / "out.xml").getroot()
    cases = {c.get("name"): c for c in root.iter("testcase")}
    relu1 = cases["float-vs-fixed[relu1/Relu]"]
    props = {p.get("name"): p.get("value") for p in relu1.iter("property")}
    assert props["quantacc.layer"] == "relu1"
    assert 0.99 <= float(props["quantacc.cos"]) <= 1.0
    assert 0.0 < float(props["quantacc.rmse"]) < 0.1
    assert {"quantacc.mse", "quantacc.sqnr_db", "quantacc.max_abs", "quantacc.worst_cos"} <= set(props)
    agreement = {p.get("name"): p.get("value") for p in cases["fixed-vs-offline"].iter("property")}
    assert "quantacc.max_steps" in agreement


def test_json_report_follows_the_contract(project):
    result = run(project, "quantacc.yaml", "quantacc_outlier.yaml", "--quantacc-report", "report.json")
    assert result.ret == pytest.ExitCode.OK
    report = json.loads((project.path / "report.json").read_text())
    assert report["quantacc_report"] == 1
    by_name = {m["name"]: m for m in report["models"]}
    assert by_name["digits_cnn"]["status"] == "passed"
    assert by_name["digits_outlier"]["status"] == "passed"  # its only failure is acknowledged known_bad
    assert by_name["digits_cnn"]["spec"] == "quantacc.yaml"
    comp = by_name["digits_outlier"]["comparisons"][0]
    assert (comp["reference"], comp["target"]) == ("float", "fixed")
    assert comp["first_diverging_layer"] == "relu3"
    layers = comp["layers"]
    assert [layer["layer"] for layer in layers] == ["conv1", "relu1", "conv2", "relu2", "pool", "flatten", "fc1",
                                                   "relu3", "fc2", "softmax"]
    relu3 = next(layer for layer in layers if layer["layer"] == "relu3")
    assert relu3["status"] == "xfailed" and relu3["op_type"] == "Relu" and relu3["tensor"] == "relu3_out"
    assert set(relu3) >= {"cos", "rmse", "mse", "sqnr_db", "max_abs", "own_cos", "own_rmse"}
    assert relu3["own_cos"] < 0.99  # its own computation is broken ...
    fc2 = next(layer for layer in layers if layer["layer"] == "fc2")
    assert fc2["own_cos"] > 0.99 and fc2["inherited_from"] == "relu3"  # ... fc2 only carries relu3's error
    assert comp["diagnosis"]["kind"] == "abrupt" and comp["diagnosis"]["layer"] == "relu3"
    assert {layer["status"] for layer in layers} <= {"passed", "failed", "xfailed", "xpassed", "skipped"}
    targets = [(c["reference"], c["target"]) for c in by_name["digits_cnn"]["comparisons"]]
    assert targets == [("float", "fixed"), ("float", "offline"), ("fixed", "offline")]


def test_per_layer_thresholds_by_glob(project):
    text = (project.path / "quantacc.yaml").read_text()
    text += '    layers:\n      "relu*": {cos: 0.99999999}\n'
    (project.path / "quantacc.yaml").write_text(text)
    result = run(project, "quantacc.yaml")
    result.assert_outcomes(passed=9, failed=3, skipped=3)
    assert "cos 0.99" in result.stdout.str() and "< 0.99999999" in result.stdout.str()


def test_nothing_quantized_is_a_loud_failure(pytester, zoo_models):
    zm = zoo_models["healthy_cnn"]
    nodes = ["conv1", "relu1", "conv2", "relu2", "conv3", "relu3", "conv4", "relu4", "conv5", "relu5", "gap",
             "flatten", "fc"]
    write_spec(pytester.path / "quantacc.yaml",
               [zoo_entry("none", zm, quantization={"exclude_nodes": nodes})])
    result = run(pytester, "quantacc.yaml")
    result.assert_outcomes(failed=1, skipped=len(nodes) + 2)
    assert "quantized no tensor" in result.stdout.str()


def test_conversion_runs_once_per_model(project):
    """All items of a model share one evaluation: the quantized model is written once."""
    result = run(project, "quantacc.yaml", "-v")
    result.assert_outcomes(passed=12, skipped=3)
    fixed = list((project.path / "work").rglob("fixed.onnx"))
    assert len(fixed) == 1
    mtime = fixed[0].stat().st_mtime_ns
    run(project, "quantacc.yaml").assert_outcomes(passed=12, skipped=3)
    assert fixed[0].stat().st_mtime_ns == mtime  # reused on a second run with unchanged inputs


def test_plugin_import_is_light():
    """pytest loads the plugin in every run; onnx, onnxruntime and numpy must wait for --quantacc."""
    import subprocess
    import sys

    code = ("import sys, pytest_quantacc.plugin.hooks; "
            "print(sorted(m for m in ('numpy', 'onnx', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_directory_run_skips_written_fix_files(project):
    shutil.copy(project.path / "quantacc.yaml", project.path / "quantacc.fix.yaml")
    out = run(project, ".", "--collect-only", "-q").stdout.str()
    assert "quantacc.yaml::digits_cnn::convert" in out and "quantacc.fix.yaml" not in out
    named = run(project, "quantacc.fix.yaml", "--collect-only", "-q").stdout.str()
    assert "quantacc.fix.yaml::digits_cnn::convert" in named


def test_fixed_vs_offline_failure_names_the_first_tensor_beyond_the_gate(pytester):
    """Without reduce_range, ONNX Runtime's u8s8 kernels saturate on CPUs without VNNI and the deployable model
    disagrees with fake-quant; the report must point at the first tensor (graph order) where that starts."""
    shutil.copytree(EXAMPLE / "models", pytester.path / "models")
    shutil.copytree(EXAMPLE / "data", pytester.path / "data")
    raw = yaml.safe_load((EXAMPLE / "quantacc.yaml").read_text())
    raw["models"][0]["quantization"]["reduce_range"] = False
    raw["models"][0].pop("accuracy", None)
    (pytester.path / "quantacc.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    result = pytester.runpytest("--quantacc", "quantacc.yaml", "--quantacc-report", "r.json", "-p", "no:randomly",
                                "-p", "no:cacheprovider")
    report = json.loads((pytester.path / "r.json").read_text())["models"][0]
    agreement = next(c for c in report["comparisons"] if c["reference"] == "fixed")
    if agreement["status"] == "passed":
        pytest.skip("this CPU's integer kernels agree with fake-quant without reduce_range (VNNI)")
    failing = [t["tensor"] for t in agreement["layers"] if t["status"] == "failed"]
    assert agreement["first_diverging_layer"] == failing[0]
    # graph order, checked against the quantized model itself: the first failing tensor's QuantizeLinear comes
    # before every other failing tensor's
    fixed = onnx.load(report["artifacts"] + "/fixed.onnx", load_external_data=False)
    position = {t: i for i, n in enumerate(fixed.graph.node) for t in n.output}
    assert position[failing[0]] == min(position[t] for t in failing)
    out = result.stdout.str()
    worst = max(agreement["layers"], key=lambda t: (t["mismatch_rate"], t["max_steps"]))["tensor"]
    if worst != failing[0]:
        assert f"first tensor beyond the gate (graph order; later tensors inherit its difference): {failing[0]}" in out
        assert f"fixed vs offline: FAILED; first {failing[0]}; worst {worst}" in out
