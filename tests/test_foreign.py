"""Matching a float model to QDQ models laid out by other tools (tests/foreign_models.py), and the detector."""
from __future__ import annotations

import foreign_models as fm
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from pytest_quantacc.engine.metrics import tensor_metrics
from pytest_quantacc.graph.foreign import dequantize, match_foreign, quantization_kind

FOLDED = "BatchNormalization 'bn1' folded in"


@pytest.fixture(scope="module")
def net() -> fm.FloatNet:
    return fm.float_net()


def _triples(m):
    return [(p.float_tensor, p.qdq_tensor, p.kind) for p in m.pairs]


def _unmatched(m):
    return {u.qdq_tensor: u.reason for u in m.unmatched}


QUARK_PAIRS = [
    ("x", "x_DequantizeLinear_Output", "activation"),
    ("r1", "n1_DequantizeLinear_Output", "activation"),  # the name says n1; the value is the removed Relu's
    ("w2", "w2_DequantizeLinear_Output", "weight"),
    ("b2", "b2_DequantizeLinear_Output", "weight"),
    ("r2", "c2_DequantizeLinear_Output", "activation"),
    ("a", "a_DequantizeLinear_Output", "activation"),
    ("p", "p_DequantizeLinear_Output", "activation"),
    ("f", "f_DequantizeLinear_Output", "activation"),
    ("wfc", "wfc_DequantizeLinear_Output", "weight"),
    ("bfc", "bfc_DequantizeLinear_Output", "weight"),
    ("logits", "logits_DequantizeLinear_Output", "activation"),
    ("prob", "prob", "activation"),
]


def test_nncf_layout(net):
    m = match_foreign(net.model, fm.nncf_style(net))
    assert _triples(m) == [
        ("x", "dq_output_x_1", "activation"),
        ("r1", "dq_output_/relu1/Relu_output_0_1", "activation"),
        ("w2", "dq_output_conv2.weight_1", "weight"),
        ("r2", "dq_output_/relu2/Relu_output_0_1", "activation"),
        ("f", "dq_output_/Flatten_output_0_1", "activation"),
        ("wfc", "dq_output_fc.weight_1", "weight"),
    ]
    un = _unmatched(m)
    assert list(un) == ["dq_output_conv1.weight_1"] and FOLDED in un["dq_output_conv1.weight_1"]
    by = m.by_qdq()
    assert by["dq_output_x_1"].params.dtype == "int8" and by["dq_output_x_1"].params.zero_point == (0,)
    w = by["dq_output_conv2.weight_1"].params
    assert (w.axis, len(w.scale), w.dtype) == (0, 4, "int8")
    assert ("bn1", "/conv1/Conv") not in m.nodes and ("conv1", "/conv1/Conv") in m.nodes


def test_tensorrt_layout_renamed_io_and_constant_scales(net):
    m = match_foreign(net.model, fm.tensorrt_style(net))
    assert _triples(m) == [
        ("x", "/conv1/input_quantizer/DequantizeLinear_output_0", "activation"),
        ("w1", "/conv1/weight_quantizer/DequantizeLinear_output_0", "weight"),
        ("r1", "/conv2/input_quantizer/DequantizeLinear_output_0", "activation"),
        ("w2", "/conv2/weight_quantizer/DequantizeLinear_output_0", "weight"),
        ("f", "/fc/input_quantizer/DequantizeLinear_output_0", "activation"),
        ("wfc", "/fc/weight_quantizer/DequantizeLinear_output_0", "weight"),
    ]
    assert m.unmatched == ()
    assert all(set(p.params.zero_point) == {0} and p.params.dtype == "int8" for p in m.pairs)
    assert [p.params.axis for p in m.pairs if p.kind == "weight"] == [0, 0, 0]
    assert ("bn1", "/bn1/BatchNormalization") in m.nodes  # not folded in this export: matched as itself


@pytest.mark.parametrize("acts, weights, domain, opset", [
    ("uint8", "int8", "", 17),
    ("uint16", "int8", "com.microsoft", 17),
    ("uint16", "int16", "", 21),
    ("uint8", "int4", "", 21),
])
def test_quark_layouts(net, acts, weights, domain, opset):
    m = match_foreign(net.model, fm.quark_style(net, acts, weights, domain, opset))
    assert _triples(m) == QUARK_PAIRS
    un = _unmatched(m)
    assert set(un) == {"w1_DequantizeLinear_Output", "b1_DequantizeLinear_Output"}
    assert all(FOLDED in r for r in un.values())
    by = m.by_qdq()
    assert {p.params.dtype for p in m.pairs if p.kind == "activation"} == {acts}
    assert by["w2_DequantizeLinear_Output"].params.dtype == weights
    assert by["b2_DequantizeLinear_Output"].params.dtype == "int32"
    assert {p.params.domain for p in m.pairs} == {domain}
    assert "Relu 'relu1' fused" in by["n1_DequantizeLinear_Output"].note
    assert FOLDED in by["n1_DequantizeLinear_Output"].note


def test_gemm_stands_for_a_float_matmul_plus_add(net):
    """Exporters write a Linear as Gemm(transB) where the user's float model has MatMul + Add."""
    fmodel = onnx.ModelProto()
    fmodel.CopyFrom(net.model)
    g = fmodel.graph
    fc = next(n for n in g.node if n.name == "fc")
    at = list(g.node).index(fc)
    g.node.remove(fc)
    g.node.insert(at, onnx.helper.make_node("MatMul", ["f", "wfc_t"], ["mm"], "fc_matmul"))
    g.node.insert(at + 1, onnx.helper.make_node("Add", ["mm", "bfc"], ["logits"], "fc_add"))
    g.initializer.append(numpy_helper.from_array(net.weights["wfc"].T.copy(), "wfc_t"))
    m = match_foreign(fmodel, fm.quark_style(net))
    expected = [(("wfc_t", *t[1:]) if t[0] == "wfc" else t) for t in QUARK_PAIRS]
    assert _triples(m) == expected
    assert m.by_qdq()["wfc_DequantizeLinear_Output"].perm == (1, 0)
    assert "Add 'fc_add' is the Gemm's bias" in m.by_qdq()["logits_DequantizeLinear_Output"].note
    assert ("fc_matmul", "fc") in m.nodes


def test_removed_relu_with_a_range_below_zero_is_not_the_relu(net):
    """A Q that does not clip at 0 cannot stand for the removed Relu: the pre-activation is paired instead,
    and conv2 (which reads the unclipped value) has no float counterpart."""
    qdq = fm.quark_style(net)
    for t in qdq.graph.initializer:
        if t.name == "n1_zero_point":
            t.CopyFrom(onnx.helper.make_tensor(t.name, onnx.TensorProto.UINT8, [], [128]))
    m = match_foreign(net.model, qdq)
    by = m.by_qdq()
    assert by["n1_DequantizeLinear_Output"].float_tensor == "n1"
    un = _unmatched(m)
    assert "no float Conv node reads 'n1'" in un["c2_DequantizeLinear_Output"]
    assert "w2_DequantizeLinear_Output" in un


def test_vendor_layout_fusedconv_transpose_cast(net):
    m = match_foreign(net.model, fm.vendor_style(net))
    assert _triples(m) == [
        ("x", "x_dq", "activation"), ("r1", "t1_dq", "activation"), ("w2", "layer2.w_dq", "weight"),
        ("r2", "t3_nhwc_dq", "activation"), ("a", "t4_dq", "activation"), ("p", "t5_dq", "activation"),
        ("f", "t6_dq", "activation"), ("wfc", "head.w_dq", "weight"), ("logits", "t7_dq", "activation"),
        ("prob", "prob", "activation"),
    ]
    assert m.by_qdq()["t3_nhwc_dq"].perm == (0, 2, 3, 1)
    assert m.by_qdq()["t4_dq"].perm is None  # the Transpose back cancelled the permutation
    assert list(_unmatched(m)) == ["layer1.w_dq"]


def test_unknown_node_is_listed_then_placed_by_the_numeric_check(net):
    qdq = fm.vendor_style(net, extra_op=True)
    m = match_foreign(net.model, qdq)
    un = _unmatched(m)
    assert list(un) == ["layer1.w_dq", "t5s_dq", "t6_dq", "t7_dq", "prob", "head.w_dq"]
    assert "Mul node 'npu_rescale'" in un["t5s_dq"] and "Mul node 'npu_rescale'" in un["prob"]
    m = match_foreign(net.model, qdq, sample=net.eval[0])
    by = m.by_qdq()
    assert by["t5s_dq"].float_tensor == "p" and by["t5s_dq"].how == "numeric"
    assert by["prob"].float_tensor == "prob" and by["prob"].how == "structure"
    assert list(_unmatched(m)) == ["layer1.w_dq"]


def test_integer_graph_output_is_listed(net):
    qdq = fm.quark_style(net)
    g = qdq.graph
    last = next(n for n in g.node if n.output[0] == "prob")
    g.node.remove(last)
    g.output[0].CopyFrom(onnx.helper.make_tensor_value_info(last.input[0], onnx.TensorProto.UINT8, [1, 6]))
    un = _unmatched(match_foreign(net.model, qdq))
    assert "integer graph output" in un[last.input[0]]


def test_onnxruntime_qdq_model_matches_completely(net, tmp_path):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(net.calib)

        def get_next(self):
            return next(self.it, None)

    src, dst = tmp_path / "f.onnx", tmp_path / "q.onnx"
    onnx.save(net.model, src)
    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True)
    m = match_foreign(net.model, onnx.load(dst))
    assert m.unmatched == ()
    acts = [p.float_tensor for p in m.pairs if p.kind == "activation"]
    assert acts == ["x", "c1", "r1", "r2", "a", "p", "f", "logits", "prob"]  # Relus removed by ORT, BN kept
    assert "Relu 'relu1' fused" in m.by_qdq()["r1_DequantizeLinear_Output"].note
    assert {p.float_tensor for p in m.pairs if p.kind == "weight"} == {"w1", "b1", "bn_g", "bn_b", "w2", "b2",
                                                                       "wfc", "bfc"}


def _q_inputs(qdq: onnx.ModelProto) -> dict[str, str]:
    """DQ output -> the float tensor its QuantizeLinear reads (activations only)."""
    prod = {o: n for n in qdq.graph.node for o in n.output}
    out = {}
    for n in qdq.graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in prod:
            out[n.output[0]] = prod[n.input[0]].input[0]
    return out


LAYOUTS = {
    "nncf": lambda net: fm.nncf_style(net),
    "tensorrt": lambda net: fm.tensorrt_style(net),
    "quark_a8w8": lambda net: fm.quark_style(net),
    "quark_a16w8_ms": lambda net: fm.quark_style(net, "uint16", "int8", "com.microsoft", 17),
    "quark_a8w4": lambda net: fm.quark_style(net, "uint8", "int4", "", 21),
    "vendor": lambda net: fm.vendor_style(net),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_metrics_on_foreign_pairs_equal_numpy(net, layout):
    """cos / relative rmse between float and foreign-QDQ tensors: the package's metric equals a plain numpy
    computation to 1e-6, the extracted Q/DQ parameters reproduce every DequantizeLinear output, and the values
    are those of a working 8-bit model (4-bit weights measurably worse)."""
    qdq = LAYOUTS[layout](net)
    m = match_foreign(net.model, qdq)
    ref = fm.reference_metrics(net, qdq, m.pairs, net.eval)
    acts = m.activations()
    qin = qdq.graph.input[0].name
    qsrc = _q_inputs(qdq)
    names = sorted({p.qdq_tensor for p in acts} | {qsrc[p.qdq_tensor] for p in acts})
    fl = fm.run_tensors(net.model, sorted({p.float_tensor for p in acts}), net.eval)
    qd = fm.run_tensors(qdq, names, [{qin: s["x"]} for s in net.eval])
    for p in acts:
        cos, rmse = [], []
        for fs, qs in zip(fl, qd):
            f = fs[p.float_tensor] if p.perm is None else np.transpose(fs[p.float_tensor], p.perm)
            got = tensor_metrics(f, qs[p.qdq_tensor])
            cos.append(got["cos"])
            rmse.append(got["rmse"])
            s = np.asarray(p.params.scale, np.float32)  # ONNX Runtime's Q/DQ arithmetic is float32
            z = np.asarray(p.params.zero_point, np.float32)
            lo, hi = fm.QRANGE[p.params.dtype]
            fake = (np.clip(np.rint(qs[qsrc[p.qdq_tensor]] / s) + z, lo, hi) - z) * s
            np.testing.assert_allclose(qs[p.qdq_tensor], fake, rtol=1e-6, atol=1e-7 * float(s.max()))
        assert np.mean(cos) == pytest.approx(ref[p.qdq_tensor][0], abs=1e-6)
        assert np.mean(rmse) == pytest.approx(ref[p.qdq_tensor][1], abs=1e-6)
    worst = min(c for c, _ in ref.values())
    if layout == "quark_a8w4":
        assert worst < min(c for c, _ in fm.reference_metrics(
            net, fm.quark_style(net), match_foreign(net.model, fm.quark_style(net)).pairs, net.eval).values())
    else:
        assert worst > 0.99


def test_weight_params_reproduce_stored_integers(net):
    """int4 / int16 / int8 weight initializers dequantized with the matcher's parameters equal what ONNX
    Runtime's DequantizeLinear returns."""
    for qdq in (fm.quark_style(net, "uint8", "int4", "", 21), fm.quark_style(net, "uint16", "int16", "", 21),
                fm.quark_style(net, "uint16", "int8", "com.microsoft", 17)):
        m = match_foreign(net.model, qdq)
        weights = [p for p in m.pairs if p.kind == "weight"]
        inits = {t.name: numpy_helper.to_array(t) for t in qdq.graph.initializer}
        got = fm.run_tensors(qdq, [p.qdq_tensor for p in weights], [{"x": net.eval[0]["x"]}])[0]
        for p in weights:
            raw = inits[p.qdq_tensor.replace("_DequantizeLinear_Output", "_quantized")]
            np.testing.assert_allclose(got[p.qdq_tensor], dequantize(raw.astype(np.int64), p.params),
                                       rtol=1e-6, atol=1e-9)
            assert np.abs(got[p.qdq_tensor] - net.weights[p.float_tensor]).max() > 0  # quantized, not copied


def test_quantization_kind(net, tmp_path):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_dynamic, quantize_static

    assert quantization_kind(net.model).kind == "float"
    k = quantization_kind(fm.quark_style(net, "uint16", "int8", "com.microsoft", 17))
    assert k.kind == "qdq" and dict(k.ops) == {"QuantizeLinear": 8, "DequantizeLinear": 14}
    assert k.describe() == "QDQ model (8 QuantizeLinear, 14 DequantizeLinear)"
    vendor = fm.quark_style(net)
    for n in vendor.graph.node:
        if n.op_type == "QuantizeLinear":
            n.op_type, n.domain = "VitisQuantizeLinear", "com.vai.quantize"
    assert quantization_kind(vendor).ops == (("DequantizeLinear", 14), ("VitisQuantizeLinear", 8))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(net.calib[:4])

        def get_next(self):
            return next(self.it, None)

    src = tmp_path / "f.onnx"
    onnx.save(net.model, src)
    quantize_static(str(src), str(tmp_path / "qop.onnx"), Reader(), quant_format=QuantFormat.QOperator)
    k = quantization_kind(onnx.load(tmp_path / "qop.onnx"))
    assert k.kind == "qoperator" and "QLinearConv" in dict(k.ops) and "QuantizeLinear" in dict(k.ops)
    quantize_dynamic(str(src), str(tmp_path / "dyn.onnx"), op_types_to_quantize=["Conv", "Gemm", "MatMul"])
    k = quantization_kind(onnx.load(tmp_path / "dyn.onnx"))
    assert k.kind == "dynamic" and "DynamicQuantizeLinear" in dict(k.ops)
    assert "ConvInteger" in k.describe()
