"""``quantized:``: a model another tool quantized, gated like our own conversion (contract section 14).

The QDQ models are laid out the way NNCF and a vendor toolchain (AIMET naming) export them
(tests/foreign_models.py), plus one made by ONNX Runtime's quantize_static with settings our conversion does
not use (per-channel, symmetric int8 activations). Metrics are checked against a numpy computation on the
same two models that shares nothing with the engine but ONNX Runtime's inference.
"""
from __future__ import annotations

import json
from pathlib import Path

import foreign_models as fm
import numpy as np
import onnx
import pytest

from conftest import write_spec
from pytest_quantacc.engine.run import evaluate_model
from pytest_quantacc.errors import QuantaccInputError
from pytest_quantacc.remedy.search import deepen
from pytest_quantacc.spec.parse import load_spec


class Reader:
    def __init__(self, samples):
        self.it = iter(samples)

    def get_next(self):
        return next(self.it, None)


def ort_static(net: fm.FloatNet, path: Path, quant_format: str = "QDQ") -> onnx.ModelProto:
    """ONNX Runtime's quantize_static on the user's float model, settings our conversion never picks."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    src = path.with_suffix(".float.onnx")
    onnx.save(net.model, src)
    quantize_static(str(src), str(path), Reader(net.calib), quant_format=getattr(QuantFormat, quant_format),
                    per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    extra_options={"ActivationSymmetric": True})
    return onnx.load(path)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The float model, the evaluation data and the foreign QDQ models, on disk."""
    d = tmp_path_factory.mktemp("quantized")
    net = fm.float_net()
    onnx.save(net.model, d / "float.onnx")
    np.savez(d / "eval.npz", x=np.concatenate([s["x"] for s in net.eval]))
    models = {"nncf": fm.nncf_style(net), "vendor": fm.vendor_style(net), "ort": ort_static(net, d / "ort.onnx")}
    for name, m in models.items():
        onnx.save(m, d / f"{name}.onnx")
    return d, net, models


def entry(d: Path, name: str, **extra) -> dict:
    return {"name": name, "model": str(d / "float.onnx"), "quantized": str(d / f"{name}.onnx"),
            "evaluation": {"data": str(d / "eval.npz")}, **extra}


def reference(net: fm.FloatNet, qdq: onnx.ModelProto, layers: list[dict]) -> dict[str, tuple[float, float]]:
    """Mean cos / relative rmse per float tensor: the user's float model vs the QDQ model, plainly in numpy
    (a QDQ tensor held transposed, ``perm``, is compared with the float tensor transposed alike)."""
    pairs = {lay["tensor"]: (lay["qdq_tensor"], lay.get("perm")) for lay in layers}
    fl = fm.run_tensors(net.model, sorted(pairs), net.eval)
    qd = fm.run_tensors(qdq, sorted({q for q, _ in pairs.values()}),
                        [{qdq.graph.input[0].name: s["x"]} for s in net.eval])
    out = {}
    for t, (qt, perm) in pairs.items():
        fs = [f[t] if perm is None else np.transpose(f[t], perm) for f in fl]
        out[t] = (float(np.mean([fm.np_cos(f, q[qt]) for f, q in zip(fs, qd)])),
                  float(np.mean([fm.np_rel_rmse(f, q[qt]) for f, q in zip(fs, qd)])))
    return out


def test_metrics_equal_numpy_through_pytest_and_the_json_report(project, pytester):
    d, net, models = project
    spec = write_spec(pytester.path / "quantacc.yaml", [entry(d, n) for n in models])
    out = pytester.path / "report.json"
    result = pytester.runpytest("--quantacc", str(spec), "--quantacc-report", str(out), "--quantacc-workdir",
                                str(pytester.path / "work"), "-p", "no:randomly", "-rA")
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["*quantized by another tool: nncf.onnx, QDQ model (7 QuantizeLinear, "
                                 "7 DequantizeLinear)*"])
    report = {m["name"]: m for m in json.loads(out.read_text())["models"]}
    for name, qdq in models.items():
        m = report[name]
        assert m["status"] == "passed" and "outputs_only" not in m and m["quantized"]["kind"].startswith("QDQ model")
        if name == "ort":  # ORT's quantizer kept bn1; float.onnx has it folded into conv1: said, not dropped
            why = {u["tensor"]: u["reason"] for u in m["unmatched"]}
            assert "before BatchNormalization 'bn1', which the float model has folded into 'conv1'" in \
                why["c1_DequantizeLinear_Output"]
        else:
            assert m["unmatched"] == []
        fixed = next(c for c in m["comparisons"] if (c["reference"], c["target"]) == ("float", "fixed"))
        compared = [lay for lay in fixed["layers"] if lay["status"] != "skipped"]
        ref = reference(net, qdq, compared)
        assert len(compared) >= 3
        for lay in compared:
            assert lay["cos"] == pytest.approx(ref[lay["tensor"]][0], abs=1e-6), (name, lay)
            assert lay["rmse"] == pytest.approx(ref[lay["tensor"]][1], abs=1e-6), (name, lay)
            assert lay["cos"] > 0.99  # a working 8-bit model: the pairing is right, not merely self-consistent
        assert m["quantized_layers"] == len([lay for lay in compared if lay["status"] != "skipped"])
        outputs = next(c for c in m["comparisons"] if (c["reference"], c["target"]) == ("float", "offline"))
        assert [lay["tensor"] for lay in outputs["layers"]] == ["prob"] and outputs["layers"][0]["cos"] > 0.999
        agreement = next(c for c in m["comparisons"] if (c["reference"], c["target"]) == ("fixed", "offline"))
        assert agreement["status"] == "passed" and agreement["layers"]
    # The layouts differ in what they quantize: NNCF only the inputs of Conv/Add/Gemm, ORT every tensor.
    skipped = {lay["tensor"] for lay in report["nncf"]["comparisons"][0]["layers"] if lay["status"] == "skipped"}
    assert {"n1", "c2", "logits"} <= skipped


def test_planted_fault_is_diagnosed_without_remedy_attempts(project, tmp_path):
    """One activation scale of the vendor layout 40x too large (relu1's output, written by a FusedConv): that
    layer breaks (its own error too), the diagnosis names it, and the remedy search says it cannot re-quantize
    another tool's model."""
    d, net, models = project
    bad = onnx.load(d / "vendor.onnx")
    fault = next(n for n in bad.graph.node if n.op_type == "QuantizeLinear" and n.output[0] == "t1_q")
    scale = next(i for i in bad.graph.initializer if i.name == fault.input[1])
    scale.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(scale) * 40, scale.name))
    onnx.save(bad, tmp_path / "bad.onnx")
    spec = load_spec(write_spec(tmp_path / "q.yaml", [{**entry(d, "bad"), "quantized": str(tmp_path / "bad.onnx")}]))
    r = evaluate_model(spec.models[0], tmp_path / "work")
    fixed = r.comparison("float", "fixed")
    assert r.status == "failed" and fixed.first_diverging.layer.name == "relu1"
    first = fixed.first_diverging
    assert first.own is not None and first.own_breaks  # the QDQ model could be isolated: own error measured
    assert fixed.diagnosis.kind == "abrupt" and fixed.diagnosis.layer == "relu1"
    deep = deepen(r, attempts=4).comparison("float", "fixed").diagnosis
    assert deep.attempts == () and "cannot re-quantize" in deep.todo[0]


def test_qoperator_model_is_compared_on_outputs_only(project, tmp_path):
    d, net, _ = project
    ort_static(net, tmp_path / "qop.onnx", "QOperator")
    spec = load_spec(write_spec(tmp_path / "q.yaml", [{**entry(d, "qop"), "quantized": str(tmp_path / "qop.onnx")}]))
    r = evaluate_model(spec.models[0], tmp_path / "work")
    assert r.error is None and r.status == "passed"
    assert [(c.reference, c.target) for c in r.comparisons] == [("float", "offline")]
    assert r.agreement is None and "QOperator model (" in r.foreign.kind and "QLinearConv" in r.foreign.kind
    assert "only its outputs are compared" in r.outputs_only
    assert r.comparisons[0].layers[0].summary["cos"] > 0.99


def test_unmatched_tensors_are_listed(project, tmp_path, pytester):
    """Two Neg nodes after the pool that the float model does not have (values unchanged overall), with a Q/DQ
    pair on the negated tensor: that QDQ tensor has no float counterpart and is listed with the reason in the
    JSON and the summary; the numeric check places the second Neg's output, and the gate runs on what matched."""
    d, net, _ = project
    qdq = fm.quark_style(net)
    g = qdq.graph
    pool = next(n for n in g.node if n.op_type == "GlobalAveragePool")
    for n in g.node:
        for i, t in enumerate(n.input):
            if t == pool.output[0]:
                n.input[i] = "neg2"
    g.initializer.extend([onnx.numpy_helper.from_array(np.array(max(map(abs, net.ranges["p"])) / 100, np.float32),
                                                           "neg_scale"),
                          onnx.numpy_helper.from_array(np.array(0, np.int8), "neg_zp")])
    at = list(g.node).index(pool) + 1
    for node in reversed([onnx.helper.make_node("Neg", [pool.output[0]], ["neg1"], "vendor_neg1"),
                          onnx.helper.make_node("QuantizeLinear", ["neg1", "neg_scale", "neg_zp"], ["neg1_q"], "nq"),
                          onnx.helper.make_node("DequantizeLinear", ["neg1_q", "neg_scale", "neg_zp"], ["neg1_dq"],
                                                "ndq"),
                          onnx.helper.make_node("Neg", ["neg1_dq"], ["neg2"], "vendor_neg2")]):
        g.node.insert(at, node)
    onnx.save(qdq, tmp_path / "odd.onnx")
    spec = write_spec(tmp_path / "q.yaml", [{**entry(d, "odd"), "quantized": str(tmp_path / "odd.onnx")}])
    out = tmp_path / "r.json"
    result = pytester.runpytest("--quantacc", str(spec), "--quantacc-report", str(out), "--quantacc-workdir",
                                str(tmp_path / "work"), "-p", "no:randomly")
    assert result.ret == 0
    m = json.loads(out.read_text())["models"][0]
    why = {u["tensor"]: u["reason"] for u in m["unmatched"]}
    assert list(why) == ["neg1_dq"]
    assert "Neg node 'vendor_neg1', which has no float counterpart" in why["neg1_dq"]
    result.stdout.fnmatch_lines(["*1 QDQ tensors unmatched*", "*unmatched neg1_dq: produced by Neg node*"])
    compared = {lay["tensor"] for lay in m["comparisons"][0]["layers"] if lay["status"] != "skipped"}
    assert {"r1", "r2", "a", "p", "f"} <= compared


def test_quantized_model_as_model_is_refused(project, tmp_path):
    d, _, _ = project
    spec = load_spec(write_spec(tmp_path / "q.yaml", [{"name": "m", "model": str(d / "nncf.onnx"),
                                                       "calibration": {"data": str(d / "eval.npz")}}]))
    r = evaluate_model(spec.models[0], tmp_path / "work")
    assert r.error is not None and r.error.key == "models[0].model"
    assert "QDQ model (7 QuantizeLinear, 7 DequantizeLinear)" in r.error.problem
    assert "quantized: path/to/model.qdq.onnx" in r.error.problem


def test_spec_rules(project, tmp_path):
    d, _, _ = project
    ok = load_spec(write_spec(tmp_path / "a.yaml", [entry(d, "nncf")]))
    assert ok.models[0].quantized == d / "nncf.onnx" and ok.models[0].calibration == ok.models[0].evaluation
    cases = [
        ({k: v for k, v in entry(d, "nncf").items() if k != "evaluation"}, "models[0].evaluation", "required"),
        (entry(d, "nncf", quantization={"per_channel": True}), "models[0].quantization", "already quantized"),
        (entry(d, "nncf", preprocess={"layout": "NCHW"}), "models[0].preprocess", "cannot be combined"),
        ({**entry(d, "nncf"), "quantized": str(d / "float.onnx")}, "models[0].quantized", "float model"),
    ]
    for i, (e, key, words) in enumerate(cases):
        spec = load_spec(write_spec(tmp_path / f"b{i}.yaml", [e]))
        if spec.broken:
            err = spec.broken[0].error
        else:
            err = evaluate_model(spec.models[0], tmp_path / "work").error
        assert isinstance(err, QuantaccInputError) and err.key == key and words in err.problem, (key, err)
    # defaults may carry quantization settings for the other entries: ignored for a quantized entry
    spec = load_spec(write_spec(tmp_path / "c.yaml", [entry(d, "nncf")],
                                defaults={"quantization": {"per_channel": True}}))
    assert not spec.broken


def test_cache_covers_the_quantized_file(project, tmp_path):
    from pytest_quantacc.store.cache import evaluate_cached

    d, net, _ = project
    path = tmp_path / "mine.onnx"
    onnx.save(fm.vendor_style(net), path)
    spec = load_spec(write_spec(tmp_path / "q.yaml", [{**entry(d, "mine"), "quantized": str(path)}]))
    m = spec.models[0]
    first = evaluate_cached(m, tmp_path / "work")
    assert first.cache == "computed" and evaluate_cached(m, tmp_path / "work").cache == "reused"
    onnx.save(fm.quark_style(net), path)  # same float model, another tool's QDQ model under the same name
    again = evaluate_cached(m, tmp_path / "work")
    assert again.cache == "computed" and again.result.foreign.kind != first.result.foreign.kind


# ------------------------------------------------------------------ all of ONNX Runtime's static quantizer


def own_entry(d: Path, name: str, **quantization) -> dict:
    """Our own conversion of the float model, calibrated on the evaluation data (small and quick)."""
    return {"name": name, "model": str(d / "float.onnx"), "calibration": {"data": str(d / "eval.npz")},
            "quantization": quantization}


def activation_zero_points(path: Path) -> set[int]:
    m = onnx.load(path)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in m.graph.initializer}
    weights = {n.input[0] for n in m.graph.node if n.input and n.input[0] in inits}
    return {int(inits[n.input[2]]) for n in m.graph.node
            if n.op_type == "QuantizeLinear" and n.input[0] not in weights and inits[n.input[2]].size == 1}


def test_extra_options_reach_the_quantizer_and_the_cache_key(project, tmp_path):
    from pytest_quantacc.store.cache import results_key

    d, _, _ = project
    spec = load_spec(write_spec(tmp_path / "q.yaml", [
        own_entry(d, "plain"), own_entry(d, "sym", extra_options={"ActivationSymmetric": True})]))
    plain, sym = (evaluate_model(m, tmp_path / "work") for m in spec.models)
    assert plain.error is None and sym.error is None
    assert len(activation_zero_points(plain.artifacts.fixed_model)) > 1  # asymmetric uint8: zero points vary
    assert activation_zero_points(sym.artifacts.fixed_model) == {128}  # symmetric uint8: the middle
    assert results_key(spec.models[0], "k") != results_key(spec.models[1], "k")


def test_unknown_extra_option_names_the_key_with_did_you_mean(project, tmp_path):
    d, _, _ = project
    spec = load_spec(write_spec(tmp_path / "q.yaml", [
        own_entry(d, "typo", extra_options={"ActivationSymetric": True}),
        own_entry(d, "twice", method="percentile", extra_options={"CalibPercentile": 99.0}),
        own_entry(d, "type", extra_options={"CalibMovingAverage": "yes"})]))
    errors = [evaluate_model(m, tmp_path / "work").error for m in spec.models]
    assert errors[0].key == "models[0].quantization.extra_options.ActivationSymetric"
    assert "did you mean 'ActivationSymmetric'?" in errors[0].problem
    assert errors[1].key == "models[1].quantization.extra_options.CalibPercentile"
    assert "quantization.percentile" in errors[1].problem
    assert errors[2].key == "models[2].quantization.extra_options.CalibMovingAverage"
    assert "expected true or false" in errors[2].problem


def test_distribution_int4_weights_and_qoperator(project, tmp_path, pytester):
    """method distribution and 4-bit weights convert and are gated layer by layer; format qoperator is gated
    on its outputs only and the report says why."""
    d, _, _ = project
    spec = write_spec(pytester.path / "quantacc.yaml", [
        own_entry(d, "dist", method="distribution"), own_entry(d, "w4", weights="int4", per_channel=True),
        own_entry(d, "w8", per_channel=True), own_entry(d, "qop", format="qoperator")])
    out = pytester.path / "r.json"
    result = pytester.runpytest("--quantacc", str(spec), "--quantacc-report", str(out), "--quantacc-workdir",
                                str(pytester.path / "work"), "-p", "no:randomly")
    report = {m["name"]: m for m in json.loads(out.read_text())["models"]}
    assert all("error" not in m for m in report.values()), report
    for name in ("dist", "w4", "w8"):
        assert [c["reference"] + "-" + c["target"] for c in report[name]["comparisons"]] == [
            "float-fixed", "float-offline", "fixed-offline"]
    fixed_w4 = onnx.load(Path(report["w4"]["artifacts"]) / "fixed.onnx")
    assert onnx.TensorProto.INT4 in {i.data_type for i in fixed_w4.graph.initializer}
    cos = {n: min(lay["cos"] for lay in report[n]["comparisons"][0]["layers"] if "cos" in lay) for n in ("w4", "w8")}
    assert cos["w4"] < cos["w8"]  # 4-bit weights are measurably coarser
    qop = report["qop"]
    assert [(c["reference"], c["target"]) for c in qop["comparisons"]] == [("float", "offline")]
    assert "format is qoperator" in qop["outputs_only"] and qop["quantized_layers"] >= 3
    fixed_qop = onnx.load(Path(qop["artifacts"]) / "fixed.onnx")
    assert "QLinearConv" in {n.op_type for n in fixed_qop.graph.node}
    result.stdout.fnmatch_lines(["*outputs only: quantization.format is qoperator*"])
    ids = [line for line in pytester.runpytest("--quantacc", str(spec), "--collect-only", "-q").outlines
           if "qop::" in line]
    assert ids == ["quantacc.yaml::qop::convert", "quantacc.yaml::qop::float-vs-offline[prob]"]


def test_the_example_spec_passes(tmp_path):
    """example_project/quantacc_quantized.yaml (the README's example): the QDQ model make_quantized_example.py
    wrote, paired completely with the digits CNN and gated green."""
    from conftest import EXAMPLE

    (mspec,) = load_spec(EXAMPLE / "quantacc_quantized.yaml").models
    r = evaluate_model(mspec, tmp_path / "work")
    assert r.status == "passed" and r.foreign.unmatched == () and r.quantized_layers == 10
