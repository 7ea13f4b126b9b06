"""The engine without pytest: planted faults are found at the layer known in advance; numbers match an
independent float-vs-fake-quant computation (tests/zoo.py) on real ONNX Runtime runs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import zoo

from conftest import write_spec, zoo_entry
from pytest_quantacc import evaluate_model, load_spec
from pytest_quantacc.engine.runner import Runner


def run(tmp_path, name, zm, **extra):
    spec = load_spec(write_spec(tmp_path / f"{name}.yaml", [zoo_entry(name, zm, **extra)]))
    result = evaluate_model(spec.models[0], tmp_path / "work")
    assert result.error is None, result.error
    return result


def test_healthy_model_matches_independent_computation(tmp_path, zoo_models):
    zm = zoo_models["healthy_cnn"]
    result = run(tmp_path, "healthy", zm)
    fx = result.comparison("float", "fixed")
    assert fx.first_diverging is None
    assert result.status == "passed"
    independent = {node: (cos, rmse) for node, _, cos, rmse in zoo.fake_quant_metrics(zm.model, zm.calib, zm.eval)}
    compared = [r for r in fx.layers if r.summary is not None]
    assert {r.layer.name for r in compared} == set(independent)
    for r in compared:
        cos, rmse = independent[r.layer.name]
        assert r.summary["cos"] == pytest.approx(cos, abs=1e-6), r.layer.name
        assert r.summary["rmse"] == pytest.approx(rmse, abs=1e-6), r.layer.name
    # Convs the quantizer fused with their Relu are reported as skipped with the reason, not dropped.
    conv1 = next(r for r in fx.layers if r.layer.name == "conv1")
    assert conv1.status == "skipped" and "relu1" in conv1.reason


@pytest.mark.parametrize(
    ("builder", "kind"),
    [("outlier_channel_cnn", "abrupt"), ("weight_outlier_cnn", "abrupt"), ("gradual_cnn", "gradual")],
)
def test_planted_fault_is_found_at_the_known_layer(tmp_path, zoo_models, builder, kind):
    zm = zoo_models[builder]
    assert zm.expected_first_failing is not None
    result = run(tmp_path, builder, zm)
    fx = result.comparison("float", "fixed")
    assert fx.first_diverging is not None
    assert fx.first_diverging.layer.name == zm.expected_first_failing
    assert fx.diagnosis.layer == zm.expected_first_failing
    assert fx.diagnosis.kind == kind
    # every layer before it passes; it fails
    before = [r for r in fx.layers if r.layer.position < fx.first_diverging.layer.position]
    assert all(r.status in ("passed", "skipped") for r in before)
    assert result.status == "failed"


def test_planted_fault_moves_with_the_layer(tmp_path):
    """The harness follows the fault, it is not tuned to one model: plant it at two depths."""
    for layer in (1, 2):
        zm = zoo.outlier_channel_cnn(tmp_path / f"l{layer}", layer=layer)
        fx = run(tmp_path / f"r{layer}", f"l{layer}", zm).comparison("float", "fixed")
        assert fx.first_diverging.layer.name == f"relu{layer + 1}"


def test_multi_io_unnamed_nodes_and_integer_outputs(tmp_path, zoo_models):
    zm = zoo_models["multi_io_model"]
    result = run(tmp_path, "multi", zm)
    fx = result.comparison("float", "fixed")
    names = [r.layer.name for r in fx.layers]
    assert len(names) == len(set(names)) and all(names)
    assert any(n.startswith(("Relu_", "Flatten_", "ReduceMean_")) for n in names)  # unnamed nodes got names
    assert fx.first_diverging is None
    off = result.comparison("float", "offline")
    label = off.get("label")
    assert label.status == "skipped" and "non-float" in label.reason
    assert off.get("score").status == "passed"


def test_transformer_block_passes(tmp_path, zoo_models):
    result = run(tmp_path, "tfm", zoo_models["transformer_block"])
    fx = result.comparison("float", "fixed")
    ops = {r.layer.op_type for r in fx.layers if r.status == "passed"}
    assert {"MatMul", "Softmax", "LayerNormalization"} <= ops
    assert fx.first_diverging is None


def test_int16_override_follows_the_fused_activation(tmp_path, zoo_models):
    """An override on conv3 must reach the tensor the quantizer actually quantizes: relu3's output, which
    conv3 writes once the quantizer folds relu3 into it. With 16 bits there, relu4 recovers much of its loss."""
    zm = zoo_models["outlier_channel_cnn"]
    base = run(tmp_path / "a", "base", zm).comparison("float", "fixed")
    result = run(tmp_path / "b", "fix", zm, quantization={"overrides": {"conv3": {"activations": "int16"}}})
    fx = result.comparison("float", "fixed")
    assert fx.get("relu3_out").layer.qparams.dtype == "int16"
    assert fx.get("relu2_out").layer.qparams.dtype == "uint8"
    assert fx.get("relu4_out").summary["cos"] > base.get("relu4_out").summary["cos"] + 0.3


def test_exposing_quantized_tensors_keeps_offline_outputs(zoo_models, tmp_path):
    """The offline agreement check exposes QuantizeLinear outputs; that must not change the deployable result."""
    zm = zoo_models["healthy_cnn"]
    result = run(tmp_path, "expose", zm)
    fixed = result.artifacts.fixed_model
    model = onnx.load(str(fixed))
    q_outputs = [n.output[0] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    plain = Runner(fixed, [], optimize=True)
    exposed = Runner(fixed, q_outputs, optimize=True)
    x = np.load(zm.eval)
    for i in range(3):
        feeds = {k: x[k][i:i + 1] for k in x.files}
        a, b = plain.run(feeds), exposed.run(feeds)
        for name in plain.outputs:
            np.testing.assert_array_equal(a[name], b[name])


def test_results_are_deterministic(tmp_path, zoo_models):
    zm = zoo_models["healthy_cnn"]
    a = run(tmp_path / "a", "det", zm).comparison("float", "fixed")
    b = run(tmp_path / "b", "det", zm).comparison("float", "fixed")
    assert [(r.layer.name, r.summary and r.summary.mean) for r in a.layers] == \
           [(r.layer.name, r.summary and r.summary.mean) for r in b.layers]


def test_entropy_calibration_clips_where_minmax_does_not(tmp_path, zoo_models):
    """ONNX Runtime's quantize_static alone makes entropy identical to minmax (128 bins); ours must differ."""
    zm = zoo_models["healthy_cnn"]
    scales = {}
    for method in ("minmax", "entropy"):
        fx = run(tmp_path / method, method, zm, quantization={"method": method}).comparison("float", "fixed")
        scales[method] = {r.layer.tensor: r.layer.qparams.scale[0] for r in fx.layers if r.layer.qparams}
    assert scales["minmax"].keys() == scales["entropy"].keys()
    smaller = [t for t in scales["minmax"] if scales["entropy"][t] < 0.95 * scales["minmax"][t]]
    assert smaller, scales


def test_readme_snippet_gets_the_functions_even_after_the_engine_was_imported():
    """``from pytest_quantacc import evaluate`` once returned the submodule of the same name (the import system
    binds a submodule on its package): the README's engine example must run as printed."""
    import subprocess
    import sys

    code = ("import pytest_quantacc.engine.run, pytest_quantacc.plugin.nodes\n"
            "from pytest_quantacc import load_spec, evaluate, evaluate_model\n"
            "print(callable(evaluate), callable(evaluate_model), callable(load_spec))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "True", "True"]


def test_an_output_left_in_float_is_still_compared(tmp_path, zoo_models):
    """healthy_cnn with its last node fc excluded: fc's output has no Q/DQ, yet it carries the error of every
    quantized layer before it, so it is compared; its metrics against an independent numpy computation."""
    zm = zoo_models["healthy_cnn"]
    result = run(tmp_path, "fc_float", zm, quantization={"exclude_nodes": ["fc"]})
    fx = result.comparison("float", "fixed")
    out = onnx.load(str(result.artifacts.float_model)).graph.output[0].name
    r = fx.get(out)
    assert r.status != "skipped" and r.layer.quant_tensor is None and r.summary is not None
    fixed = onnx.load(str(result.artifacts.fixed_model))
    assert not [n for n in fixed.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == out]
    images = np.load(zm.eval)[next(iter(np.load(zm.eval).files))]
    name = onnx.load(str(zm.model)).graph.input[0].name
    f_run = Runner(result.artifacts.float_model, [], optimize=False)
    q_run = Runner(result.artifacts.fixed_model, [], optimize=False)
    coss, rmses = [], []
    for x in images:
        f = f_run.run({name: x[None] if x.ndim == 3 else x})[out].astype(np.float64).ravel()
        q = q_run.run({name: x[None] if x.ndim == 3 else x})[out].astype(np.float64).ravel()
        coss.append(f @ q / np.sqrt((f @ f) * (q @ q)))
        rmses.append(np.sqrt(np.mean((q - f) ** 2)) / np.sqrt(np.mean(f ** 2)))
    assert r.summary["cos"] == pytest.approx(np.mean(coss), abs=1e-9)
    assert r.summary["rmse"] == pytest.approx(np.mean(rmses), abs=1e-9)
