"""Diagnosis: why the first diverging layer broke, and a remedy verified by re-converting the model.

Planted faults (tests/zoo.py) with a known cause: the diagnosis must name the layer, classify abrupt vs
gradual, and the remedy it offers must be local to that layer (or its input producer) for an abrupt fault,
whole-model for a gradual one, and must really make every layer pass when applied to the spec."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import onnx
import pytest
import yaml

from conftest import EXAMPLE, write_spec, zoo_entry
from pytest_quantacc import evaluate_model, load_spec
from pytest_quantacc.graph.match import Layer, QParams
from pytest_quantacc.remedy.fixfile import patch_yaml, write_fix
from pytest_quantacc.remedy.rootcause import activation_stats, site
from pytest_quantacc.remedy.search import deepen
from pytest_quantacc.remedy.settings import apply_patch

_GLOBAL_KEYS = {"per_channel", "method", "activations", "weights"}


def diagnosed(tmp_path, name, zm, attempts=8):
    spec = load_spec(write_spec(tmp_path / f"{name}.yaml", [zoo_entry(name, zm, modes=["float", "fixed"])]))
    result = deepen(evaluate_model(spec.models[0], tmp_path / "work"), attempts=attempts)
    return spec.models[0], result, result.comparison("float", "fixed")


@pytest.mark.parametrize(("builder", "layer", "local"), [
    ("weight_outlier_cnn", "relu2", {"conv2", "relu2", "conv1", "relu1"}),  # its own weights are broken
    ("outlier_channel_cnn", "relu4", {"conv4", "relu4", "conv3", "relu3"}),  # its input's range is broken
])
def test_abrupt_fault_gets_a_local_verified_remedy(tmp_path, zoo_models, builder, layer, local):
    mspec, result, fx = diagnosed(tmp_path, builder, zoo_models[builder])
    d = fx.diagnosis
    assert (d.layer, d.kind) == (layer, "abrupt")
    assert d.remedy is not None and d.remedy_result["passes"], [a.as_json() for a in d.attempts]
    # Local: only per-node precision or exclusions, on the layer's computation or the producer of its input.
    assert set(d.remedy) <= {"overrides", "exclude_nodes"}
    touched = set(d.remedy.get("overrides", {})) | set(d.remedy.get("exclude_nodes", []))
    assert touched and touched <= local
    assert len(d.attempts) <= 8
    # Independent check: a fresh evaluation of the spec with the patch applied passes every layer.
    patched = replace(mspec, quantization=apply_patch(mspec.quantization, d.remedy))
    again = evaluate_model(patched, tmp_path / "verify").comparison("float", "fixed")
    assert again.first_diverging is None


def test_weight_fault_is_explained_by_its_weights_and_the_budget_holds(tmp_path, zoo_models):
    mspec, result, fx = diagnosed(tmp_path, "weight_outlier_cnn", zoo_models["weight_outlier_cnn"], attempts=2)
    d = fx.diagnosis
    weights = next(s for s in d.stats if s.role == "weights")
    assert weights.tensor == "conv2_w" and weights.collapsed > 0.5 and weights.levels <= 8
    assert not any("outlier-channel signature" in w for w in d.why)  # ruled out by the input's statistics
    # The set search names the broken weights; with a weight site in the set, per-channel weights (int8
    # everywhere, cheaper when it passes) gets the second conversion and does not fix a broken weight tensor.
    assert [a.patch for a in d.attempts] == [{"overrides": {"conv2": {"weights": "int16"}}}, {"per_channel": True}]
    assert d.remedy == {"overrides": {"conv2": {"weights": "int16"}}} and d.remedy_result["passes"]
    assert [a.passes for a in d.attempts] == [True, False]
    off = deepen(evaluate_model(mspec, tmp_path / "work"), attempts=0).comparison("float", "fixed").diagnosis
    assert off.attempts == () and off.remedy is None and off.remedy_result is None and off.stats
    assert off.sensitivity == () and off.search is None


def test_gradual_fault_blames_no_single_layer(tmp_path, zoo_models):
    _, _, fx = diagnosed(tmp_path, "gradual_cnn", zoo_models["gradual_cnn"])
    d = fx.diagnosis
    assert d.kind == "gradual" and len(d.contributors) > 1
    assert d.remedy is not None and set(d.remedy) <= _GLOBAL_KEYS, d.remedy
    assert d.remedy_result["passes"]


def test_input_producer_is_found_through_sharing_ops():
    """relu3 reads flatten <- pool <- relu2 (folded into conv2): the range is set on conv2, not flatten."""
    float_model = onnx.load(str(EXAMPLE / "models" / "digits_cnn_outlier.onnx"))
    names = {n.name for n in float_model.graph.node}
    assert {"fc1", "relu3", "flatten", "pool", "relu2", "conv2"} <= names
    layers = [Layer(n.name, n.op_type, n.output[0], i, fused_into="relu3" if n.name == "fc1" else None)
              for i, n in enumerate(float_model.graph.node)]
    where = site(float_model, layers, "relu3")
    assert (where.compute, where.weight) == ("fc1", "fc1.weight")
    assert (where.input_tensor, where.producer, where.producer_weight) == ("relu2_out", "conv2", "conv2.weight")
    assert where.shared == ("pool", "flatten")


def test_activation_stats_see_the_outlier_channel():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, size=(4, 1, 8, 5, 5)).astype(np.float32)  # samples, batch, channels, h, w
    x[:, :, 3] *= 400.0
    scale = float(x.max()) / 255
    stats = activation_stats("input", Layer("r", "Relu", "t", 0, qparams=QParams("uint8", (scale,), (0,))), "r", x)
    assert stats.widest_channel == 3 and stats.channel_spread > 300
    q = np.clip(np.rint(x / scale), 0, 255)
    assert stats.collapsed == pytest.approx(float(np.mean(q[x != 0] == 0)))
    assert stats.error < 0.01 < 0.5 < stats.channel_error_median  # whole tensor fine, channels destroyed
    assert stats.clipped == 0.0 and stats.levels == len(np.unique(q))


@pytest.fixture
def failing_example(pytester):
    """The example's outlier spec without its known_bad block, in pytester's directory."""
    for sub in ("models", "data"):
        shutil.copytree(EXAMPLE / sub, pytester.path / sub)
    raw = yaml.safe_load((EXAMPLE / "quantacc_outlier.yaml").read_text())
    del raw["models"][0]["known_bad"]
    spec = pytester.path / "quantacc_outlier.yaml"
    spec.write_text(yaml.safe_dump(raw, sort_keys=False))
    return pytester, spec


def test_example_diagnosis_patch_and_fix_file(failing_example):
    pytester, spec = failing_example
    before = spec.read_text()
    args = ["--quantacc", "--quantacc-workdir", str(pytester.path / "work"), "-p", "no:randomly"]
    result = pytester.runpytest(spec.name, *args, "--quantacc-report", "r.json", "--quantacc-fix",
                                "--quantacc-html", "r.html")
    result.assert_outcomes(failed=5, passed=6, skipped=3)
    out = result.stdout.str()
    assert "verified: " in out and "relu2_out is quantized once for pool, flatten too" in out
    d = json.loads((pytester.path / "r.json").read_text())["models"][0]["comparisons"][0]["diagnosis"]
    assert (d["layer"], d["kind"]) == ("relu3", "abrupt")
    assert d["remedy"]["overrides"]["conv2"]["activations"] == "int16"  # the producer, not flatten
    assert d["remedy_result"]["passes"] and d["remedy_result"]["first_diverging_layer"] is None
    assert {"why", "todo", "contributors", "remedy_attempts", "root_cause"} <= set(d)
    assert spec.read_text() == before  # the user's spec is never edited
    fix = pytester.path / "quantacc_outlier.fix.yaml"
    assert yaml.safe_load(fix.read_text())["models"][0]["quantization"]["overrides"] == d["remedy"]["overrides"]
    snippet = "\n".join("      " + line for line in patch_yaml(d["remedy"]).splitlines())
    assert snippet in out  # the snippet the user pastes is the one verified
    page = (pytester.path / "r.html").read_text()
    assert "<svg" in page and "first diverging" in page and "conv2" in page
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "") and "https://" not in page
    # Applying the patch makes the run pass (all modes, including the deployable integer model).
    fixed = pytester.runpytest(fix.name, *args)
    fixed.assert_outcomes(passed=11, skipped=3)


def test_html_page_of_a_passing_model(tmp_path, zoo_models):
    """A healthy model: charts and table, no diagnosis; node names are escaped (they come from the model)."""
    from pytest_quantacc.report.html import page

    spec = load_spec(write_spec(tmp_path / "h.yaml", [zoo_entry("healthy<&>", zoo_models["healthy_cnn"])]))
    result = deepen(evaluate_model(spec.models[0], tmp_path / "work"))
    text = page([result]).split("<script>")[0]  # the static page; the page's script draws the detail chart
    assert text.count("<svg") == 2 and 'class="diag' not in text and "first diverging:" not in text
    assert "healthy&lt;&amp;&gt;" in text and "healthy<&>" not in text
    assert text.count("<polyline") == 4  # per chart: threshold and accumulated (no own-error pass when passing)


def test_pytest_html_extra(failing_example):
    """Optional: with pytest-html installed, the failing layer items carry the model's report section."""
    pytest.importorskip("pytest_html")
    pytester, spec = failing_example
    pytester.runpytest(spec.name, "--quantacc", "--quantacc-workdir", str(pytester.path / "work"), "-p",
                       "no:randomly", "--quantacc-remedies", "0", "--html", "ph.html", "--self-contained-html")
    text = (pytester.path / "ph.html").read_text()
    assert "COS along the graph" in text and ".quantacc table" in text


def test_patch_keeps_what_the_spec_already_has():
    """A patch replaces whole keys when pasted, so it must carry the spec's existing overrides and exclusions."""
    from pytest_quantacc.remedy.settings import Knob, apply_patch, spec_patch
    from pytest_quantacc.spec.model import Override, Quantization

    q = Quantization(overrides=(Override("a", "int16"),), exclude_nodes=("x",))
    knobs = [Knob("w", "a", "weights", 1.0), Knob("b", "b", "activations", 0.5), Knob("f", "c", "exclude", 0.0)]
    patch = spec_patch(q, knobs)
    assert patch == {"overrides": {"a": {"activations": "int16", "weights": "int16"}, "b": {"activations": "int16"}},
                     "exclude_nodes": ["x", "c"]}
    applied = apply_patch(q, patch)
    assert applied.overrides == (Override("a", "int16", "int16"), Override("b", "int16"))
    assert applied.exclude_nodes == ("x", "c") and applied.method == q.method
    assert yaml.safe_load(patch_yaml(patch)) == {"quantization": patch}


SPEC_WITH_COMMENTS = """# top comment
quantacc: 1
defaults:
  quantization: {reduce_range: true}   # inline comment
models:
  # first model
  - name: a
    model: a.onnx
    quantization:
      method: minmax   # why minmax
    # comment about modes
    modes: [float, fixed]
  - name: b          # second
    model: b.onnx
    evaluation:
      data: e.npz
# trailing comment
"""


@pytest.mark.parametrize("text", [SPEC_WITH_COMMENTS, 'quantacc: 1\nmodels: [{name: a, model: a.onnx, quantization: '
                                                     '{method: minmax}}, {name: b, model: b.onnx}]\n'])
def test_fix_file_keeps_the_users_comments_outside_the_patched_blocks(tmp_path, text):
    spec = tmp_path / "quantacc.yaml"
    spec.write_text(text)
    patches = {0: {"overrides": {"conv2": {"activations": "int16"}}}, 1: {"per_channel": True}}
    fix = write_fix(spec, patches)
    expected = yaml.safe_load(text)
    expected["models"][0]["quantization"] = {"method": "minmax", **patches[0]}
    expected["models"][1]["quantization"] = patches[1]
    assert yaml.safe_load(fix.read_text()) == expected
    assert spec.read_text() == text
    kept = [line for line in text.splitlines() if "#" in line and "why minmax" not in line]
    assert all(line in fix.read_text().splitlines() for line in kept)
