"""Real-world model structures (tests/corpus.py): each is either checked correctly layer by layer (against
zoo.fake_quant_metrics, an independent quantize-match-compare implementation) or refused with a message that
names the spec file, the key and what is unsupported."""

from __future__ import annotations

import hashlib

import corpus
import numpy as np
import onnx
import pytest
import zoo

from conftest import write_spec
from pytest_quantacc import evaluate_model, load_spec


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, corpus.CorpusModel]:
    built = corpus.build_all(tmp_path_factory.mktemp("corpus"))
    z = tmp_path_factory.mktemp("zoo")
    for name in ("transformer_block", "multi_io_model"):
        zm = zoo.BUILDERS[name](z / name)
        built[name] = corpus.CorpusModel(zm.model, zm.calib, zm.eval, zm.notes)
    return built


def evaluate(tmp_path, name: str, cm: corpus.CorpusModel, **extra):
    entry = {"name": name, "model": str(cm.model), "calibration": {"data": str(cm.calib)},
             "evaluation": {"data": str(cm.eval)}, **extra}
    spec_path = write_spec(tmp_path / f"{name}.yaml", [entry])
    return evaluate_model(load_spec(spec_path).models[0], tmp_path / "work"), spec_path


SUPPORTED = ["detection_cnn", "keras_nhwc_cnn", "unnamed_cnn", "classifier_topk", "external_data_cnn",
             "constant_weights_cnn", "opset11_cnn", "lstm_model", "if_model", "loop_model", "transformer_block",
             "multi_io_model"]


@pytest.mark.parametrize("name", SUPPORTED)
def test_supported_model_matches_independent_computation(tmp_path, models, name):
    cm = models[name]
    result, _ = evaluate(tmp_path, name, cm, modes=["float", "fixed"])
    assert result.error is None, result.error
    assert result.quantized_layers > 0
    fx = result.comparison("float", "fixed")
    assert fx.first_diverging is None, fx.first_diverging
    # The independent implementation quantizes the same float graph with the same (default) settings and
    # matches tensors its own way; every layer both compare must agree.
    independent = {node: (cos, rmse) for node, _, cos, rmse in
                   zoo.fake_quant_metrics(result.artifacts.float_model, cm.calib, cm.eval)}
    compared = [r for r in fx.layers if r.summary is not None and r.layer.name in independent]
    assert len(compared) >= 2
    for r in compared:
        cos, rmse = independent[r.layer.name]
        assert r.summary["cos"] == pytest.approx(cos, abs=1e-6), r.layer.name
        assert r.summary["rmse"] == pytest.approx(rmse, abs=1e-6), r.layer.name


def test_detection_heads_are_all_compared(tmp_path, models):
    result, _ = evaluate(tmp_path, "det", models["detection_cnn"], modes=["float", "fixed"])
    fx = result.comparison("float", "fixed")
    passed = {r.layer.op_type for r in fx.layers if r.status == "passed"}
    assert {"Resize", "Concat", "Sigmoid", "Conv", "Mul"} <= passed
    # ONNX Runtime inlines HardSwish as HardSigmoid + Mul; the Mul that writes the user's tensor keeps the
    # user's node name, so failures point at backbone/act1, not at an invented Mul_1
    by_name = {r.layer.name: r for r in fx.layers}
    for i in (1, 2, 3):
        assert by_name[f"backbone/act{i}"].layer.tensor == f"a{i}" and by_name[f"backbone/act{i}"].status == "passed"
    assert {"objectness", "boxes"} <= {r.layer.tensor for r in fx.layers if r.status == "passed"}


def test_unnamed_nodes_get_unique_names(tmp_path, models):
    result, _ = evaluate(tmp_path, "unnamed", models["unnamed_cnn"], modes=["float", "fixed"])
    names = [r.layer.name for r in result.comparison("float", "fixed").layers]
    assert all(names) and len(set(names)) == len(names)
    assert {"Conv_1", "Conv_2"} <= set(names)


def test_integer_outputs_are_skipped_beside_float_outputs(tmp_path, models):
    result, _ = evaluate(tmp_path, "topk", models["classifier_topk"], quantization={"reduce_range": True})
    off = result.comparison("float", "offline")
    for name in ("label", "top_ids"):
        assert off.get(name).status == "skipped" and "non-float" in off.get(name).reason
    assert off.get("logits").status == "passed" and off.get("top_scores").status == "passed"


def test_external_data_model_is_read_and_left_untouched(tmp_path, models):
    cm = models["external_data_cnn"]
    side = cm.model.parent / "external_data_cnn.weights"
    before = hashlib.sha256(side.read_bytes()).hexdigest()
    result, _ = evaluate(tmp_path, "ext", cm, modes=["float", "fixed"])
    assert result.status == "passed"
    float_model = onnx.load(str(result.artifacts.float_model), load_external_data=False)
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in float_model.graph.initializer)
    assert hashlib.sha256(side.read_bytes()).hexdigest() == before


@pytest.mark.parametrize("opset", [11, 17])
def test_constant_node_weights_are_quantized_as_weights(tmp_path, opset):
    """Weights held in Constant nodes end up as initializers in float.onnx, so the quantizer treats them as
    weights (per-channel included, and for the opset-11 export too) and biases quantize to int32."""
    cm = corpus.constant_weights_cnn(tmp_path / "m", opset=opset)
    result, _ = evaluate(tmp_path, "const", cm, quantization={"per_channel": True}, modes=["float", "fixed"])
    assert result.status == "passed", result.error
    float_model = onnx.load(str(result.artifacts.float_model))
    assert not [n for n in float_model.graph.node if n.op_type == "Constant"]
    fixed = onnx.load(str(result.artifacts.fixed_model))
    inits = {i.name: i for i in fixed.graph.initializer}
    dq_inputs = [n.input[0] for n in fixed.graph.node if n.op_type == "DequantizeLinear"]
    assert sum(inits[t].data_type == onnx.TensorProto.INT32 for t in dq_inputs if t in inits) == 3  # biases
    assert sum(inits[t].data_type == onnx.TensorProto.INT8 for t in dq_inputs if t in inits) == 3  # weights


def test_old_opset_model_is_upgraded_for_per_channel(tmp_path, models):
    cm = models["opset11_cnn"]
    assert onnx.load(str(cm.model)).opset_import[0].version == 11
    result, _ = evaluate(tmp_path, "op11", cm, quantization={"per_channel": True, "reduce_range": True})
    assert result.status == "passed", result.error
    fixed = onnx.load(str(result.artifacts.fixed_model))
    assert any(a.name == "axis" for n in fixed.graph.node if n.op_type == "DequantizeLinear" for a in n.attribute)
    per_tensor, _ = evaluate(tmp_path / "pt", "op11", cm, quantization={"reduce_range": True})
    # conv1's channels span a 100x weight range: per-channel weights must not be worse than one scale for all
    pc = result.comparison("float", "fixed").get("t2").summary["rmse"]
    assert pc <= per_tensor.comparison("float", "fixed").get("t2").summary["rmse"]


def test_samples_of_different_shapes(tmp_path, models):
    cm = models["variable_size_cnn"]
    result, _ = evaluate(tmp_path, "var", cm, modes=["float", "fixed"])
    assert result.status == "passed" and result.samples == corpus.N_EVAL
    for method in ("entropy", "percentile"):
        refused, spec = evaluate(tmp_path / method, "var", cm, quantization={"method": method})
        msg = refused.error.message
        assert msg.startswith(f"{spec}: models[0].calibration.data: calibration samples differ in shape")
        assert "[1, 3, 8, 8]" in msg and "method: minmax" in msg


def test_float32_min_attention_mask(tmp_path, models):
    """MinMax: the mask's -3.4e38 takes the whole range of the masked scores and every real score collapses;
    the harness reports that at add_mask, as the independent computation does. Entropy: refused, naming the
    tensor and the node that fills it."""
    cm = models["masked_attention"]
    result, _ = evaluate(tmp_path, "mask", cm, modes=["float", "fixed"])
    fx = result.comparison("float", "fixed")
    rows = zoo.fake_quant_metrics_detailed(result.artifacts.float_model, cm.calib, cm.eval)
    assert zoo.first_failing(rows) == "add_mask" == fx.first_diverging.layer.name
    assert fx.get("scores").status == "passed"
    refused, spec = evaluate(tmp_path / "e", "mask", cm, quantization={"method": "entropy"})
    msg = refused.error.message
    assert msg.startswith(f"{spec}: models[0].quantization: ONNX Runtime's quantizer failed")
    assert "ext_mask (node mask_fill_min, |x| up to 3.4e+38)" in msg and "exclude_nodes" in msg


def test_computation_inside_subgraphs_is_refused(tmp_path, models):
    for method in ("minmax", "entropy"):
        result, spec = evaluate(tmp_path / method, "sub", models["all_in_subgraph"], quantization={"method": method})
        assert result.status == "failed"
        assert result.error.message == (
            f"{spec}: models[0].model: every quantizable node of all_in_subgraph.onnx sits inside the subgraphs "
            f"of body (If); ONNX Runtime's quantizer does not quantize inside If/Loop/Scan subgraphs, so nothing "
            f"would be quantized")


def test_refusals_are_failed_items_without_traceback(pytester, models):
    cm = models["all_in_subgraph"]
    write_spec(pytester.path / "quantacc.yaml", [{"name": "sub", "model": str(cm.model),
                                                   "calibration": {"data": str(cm.calib)}}])
    res = pytester.runpytest_subprocess("--quantacc", "quantacc.yaml", "-p", "no:randomly", "-p", "no:cacheprovider",
                                        "--quantacc-workdir", str(pytester.path / "w"))
    res.assert_outcomes(failed=1, skipped=4)  # convert fails; the layer items skip, pointing at it
    text = res.stdout.str()
    assert "quantacc.yaml: models[0].model: every quantizable node" in text
    assert "Traceback" not in text and "hardening.py" not in text


def test_corpus_models_are_reproducible(tmp_path):
    a = corpus.detection_cnn(tmp_path / "a")
    b = corpus.detection_cnn(tmp_path / "b")
    assert a.model.read_bytes() == b.model.read_bytes()
    np.testing.assert_array_equal(np.load(a.calib)["images"], np.load(b.calib)["images"])


def test_per_channel_on_an_old_opset_that_cannot_be_upgraded_is_refused(tmp_path, models):
    """When onnx's converter cannot lift a model to opset 13, per-channel is refused before the quantizer
    writes a model that does not load (the check itself, on the user's opset-11 graph)."""
    from pytest_quantacc.convert.hardening import check_quantizable
    from pytest_quantacc.errors import QuantaccInputError
    from pytest_quantacc.graph.structure import input_infos
    from pytest_quantacc.samples import load_samples

    cm = models["opset11_cnn"]
    entry = {"name": "op11", "model": str(cm.model), "calibration": {"data": str(cm.calib)},
             "quantization": {"per_channel": True}}
    spec_path = write_spec(tmp_path / "s.yaml", [entry])
    mspec = load_spec(spec_path).models[0]
    model = onnx.load(str(cm.model))
    samples = load_samples(cm.calib, None, input_infos(model), spec_path, "models[0].calibration.data")
    with pytest.raises(QuantaccInputError) as info:
        check_quantizable(mspec, model, samples, ["Conv", "Relu"])
    assert info.value.message.startswith(f"{spec_path}: models[0].quantization.per_channel: per-channel "
                                         f"quantization needs opset >= 13")
    assert "opset 11" in info.value.message


@pytest.mark.parametrize("name", [*SUPPORTED, "variable_size_cnn"])
def test_a_pass_per_layer_gives_the_numbers_of_one_pass(tmp_path, models, name):
    """The graph pruned to each layer in turn (recurrences, subgraphs, integer outputs, symbolic sizes, external
    data) computes what the whole graph computes: every metric equals the one-pass evaluation's."""
    cm = models[name]
    entry = {"name": name, "model": str(cm.model), "calibration": {"data": str(cm.calib)},
             "evaluation": {"data": str(cm.eval)}}
    mspec = load_spec(write_spec(tmp_path / f"{name}.yaml", [entry])).models[0]
    one = evaluate_model(mspec, tmp_path / "work", memory_budget=1 << 40)
    many = evaluate_model(mspec, tmp_path / "work", memory_budget=1)
    assert one.error is None and many.error is None, (one.error, many.error)
    assert one.passes == 1 and many.passes > 1
    for a, b in zip(one.comparisons, many.comparisons, strict=True):
        assert [(r.layer.tensor, r.status, r.summary, r.own) for r in a.layers] == [
            (r.layer.tensor, r.status, r.summary, r.own) for r in b.layers]
    assert one.agreement == many.agreement
