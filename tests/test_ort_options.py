"""The extra_options table against the installed onnxruntime: names, types ONNX Runtime takes, and effects."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import foreign_models as fm
import numpy as np
import onnx
import onnxruntime
import pytest
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

from pytest_quantacc.convert.ort_options import BY_NAME, OPTIONS, validate_extra_options


class Fail(Exception):
    pass


class Reader(CalibrationDataReader):
    """Calibration samples; ``__len__`` and ``set_range`` are what CalibStridedMinMax needs of a reader."""

    def __init__(self, samples):
        self.samples, self.start, self.end = samples, 0, len(samples)
        self.it = iter(samples)

    def get_next(self):
        return next(self.it, None)

    def __len__(self):
        return len(self.samples)

    def set_range(self, start_index, end_index):
        self.it = iter(self.samples[start_index:end_index])

    def rewind(self):
        self.it = iter(self.samples)


@pytest.fixture(scope="module")
def net():
    return fm.float_net(n_calib=6, n_eval=1)


@pytest.fixture(scope="module")
def src(net, tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("ortopt") / "f.onnx"
    onnx.save(net.model, p)
    return p


def _quantize(src: Path, net, extra: dict, **kw) -> onnx.ModelProto:
    out = src.parent / f"q{abs(hash(repr(sorted(extra)) + repr(kw)))}.onnx"
    checked = validate_extra_options(extra, Fail)
    quantize_static(str(src), str(out), Reader(net.calib), quant_format=kw.pop("quant_format", QuantFormat.QDQ),
                    extra_options=checked, **kw)
    model = onnx.load(out)
    onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return model


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def _init(model: onnx.ModelProto, name: str) -> np.ndarray:
    return onnx.numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))


def test_every_option_is_a_name_onnxruntime_reads():
    """A misspelt table entry would be ignored by quantize_static as silently as a user's typo."""
    root = Path(importlib.util.find_spec("onnxruntime.quantization").origin).parent
    source = "\n".join(p.read_text(encoding="utf-8") for p in root.rglob("*.py"))
    missing = [o.name for o in OPTIONS if f'"{o.name}"' not in source]
    assert missing == []
    assert onnxruntime.__version__.startswith("1.32")  # the table was read off this version's docstrings


def test_all_options_together_are_taken_by_quantize_static(net, src):
    """Every option at a non-default value, in three real quantize_static runs (SmoothQuant: see below)."""
    run1 = {
        "extra.Sigmoid.nnapi": True, "ActivationSymmetric": True, "WeightSymmetric": False,
        "EnableSubgraph": True, "ForceQuantizeNoInputCheck": True, "MatMulConstBOnly": True,
        "AddQDQPairToWeight": True, "OpTypesToExcludeOutputQuantization": ["Softmax"], "DedicatedQDQPair": True,
        "QDQOpTypePerChannelSupportToAxis": {"Gemm": 0}, "CalibTensorRangeSymmetric": True,
        "CalibStridedMinMax": 2, "CalibMovingAverage": True, "CalibMovingAverageConstant": 0.1,
        "CalibMaxIntermediateOutputs": 4, "MinimumRealRange": 0.001, "QDQKeepRemovableActivations": True,
        "QDQDisableWeightAdjustForInt32Bias": True, "QuantizeBias": False, "DefaultTensorType": "FLOAT",
        "BlockSize": 0, "SmoothQuantAlpha": 0.7, "SmoothQuantFolding": False,
    }
    run2 = {"ActivationRestrictedAsymmetric": True, "UseQDQContribOps": True,
            "TensorQuantOverrides": {"r1": [{"quant_type": "QUInt16", "symmetric": False}]}}
    run3 = {"CalibPercentile": 99.0}
    _quantize(src, net, run1, per_channel=True)
    _quantize(src, net, run2, activation_type=QuantType.QUInt8)
    _quantize(src, net, run3, calibrate_method=CalibrationMethod.Percentile)
    covered = set(run1) | set(run2) | set(run3) | {"SmoothQuant"}
    assert covered == set(BY_NAME)


def test_calib_max_intermediate_outputs_caveat_still_holds(net, src):
    """The caveat in the table is onnxruntime 1.32's behaviour: when ONNX Runtime merges chunks as documented,
    this fails and the caveat (and any warning built on it) must go."""
    assert BY_NAME["CalibMaxIntermediateOutputs"].caveat
    chunked = _quantize(src, net, {"CalibMaxIntermediateOutputs": 4})
    last_two = src.parent / "last2.onnx"
    quantize_static(str(src), str(last_two), Reader(net.calib[4:]))
    assert float(_init(chunked, "x_scale")) == float(_init(onnx.load(last_two), "x_scale"))
    with pytest.raises(ValueError, match="No data is collected"):
        _quantize(src, net, {"CalibMaxIntermediateOutputs": len(net.calib)})


def test_smoothquant_needs_neural_compressor(net, src):
    if importlib.util.find_spec(BY_NAME["SmoothQuant"].needs) is None:
        with pytest.raises(RuntimeError, match="neural-compressor"):
            _quantize(src, net, {"SmoothQuant": True})
    else:
        assert "Mul" in _ops(_quantize(src, net, {"SmoothQuant": True, "SmoothQuantAlpha": 0.5}))


def test_options_have_their_documented_effect(net, src):
    base = _quantize(src, net, {})
    assert "Relu" not in _ops(base) and "QuantizeLinear" in _ops(base)
    assert "Relu" in _ops(_quantize(src, net, {"QDQKeepRemovableActivations": True}))
    pair = _quantize(src, net, {"AddQDQPairToWeight": True})
    assert "w1" in {n.input[0] for n in pair.graph.node if n.op_type == "QuantizeLinear"}
    dedicated = _quantize(src, net, {"DedicatedQDQPair": True})  # r1 feeds conv2 and add: two pairs
    assert _ops(dedicated).count("DequantizeLinear") > _ops(base).count("DequantizeLinear")
    contrib = _quantize(src, net, {"UseQDQContribOps": True})
    assert {n.domain for n in contrib.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")} == {
        "com.microsoft"}
    no_sm = _quantize(src, net, {"OpTypesToExcludeOutputQuantization": ["Softmax"]})
    assert no_sm.graph.node[-1].op_type == "Softmax" and base.graph.node[-1].op_type == "DequantizeLinear"
    float_bias = _quantize(src, net, {"QuantizeBias": False})
    assert _init(float_bias, "b1").dtype == np.float32
    sym = _quantize(src, net, {"ActivationSymmetric": True}, activation_type=QuantType.QInt8)
    assert int(_init(sym, "x_zero_point")) == 0 and int(_init(base, "x_zero_point")) != 0
    asym_w = _quantize(src, net, {"WeightSymmetric": False})
    assert int(_init(asym_w, "w1_zero_point")) != 0 and int(_init(base, "w1_zero_point")) == 0
    forced = _quantize(src, net, {"TensorQuantOverrides": {"x": [{"scale": 0.5, "zero_point": 3}]}},
                       activation_type=QuantType.QUInt8)
    assert float(_init(forced, "x_scale")) == 0.5 and int(_init(forced, "x_zero_point")) == 3
    moving = _quantize(src, net, {"CalibMovingAverage": True})
    assert float(_init(moving, "x_scale")) < float(_init(base, "x_scale"))  # averaged extremes are narrower


def test_int4_weights_and_qoperator(net, src):
    """4-bit weights (opset 21 int4 initializers) and the QOperator format, as the spec will offer them."""
    q4 = _quantize(src, net, {}, weight_type=QuantType.QInt4, activation_type=QuantType.QUInt8,
                   op_types_to_quantize=["Conv", "Gemm"])
    assert q4.graph.initializer and any(t.data_type == onnx.TensorProto.INT4 for t in q4.graph.initializer)
    qop = _quantize(src, net, {}, quant_format=QuantFormat.QOperator)
    assert "QLinearConv" in _ops(qop)


@pytest.mark.parametrize("options, message", [
    ({"ActivationSymetric": True}, "ActivationSymetric: not an ONNX Runtime quantize_static extra_option "
                                   "(did you mean 'ActivationSymmetric'?)"),
    ({"CalibMovingAverge": True}, "did you mean 'CalibMovingAverage'?"),
    ({"TotallyUnknown": 1}, "TotallyUnknown: not an ONNX Runtime quantize_static extra_option; see"),
    ({"WeightSymmetric": "yes"}, "WeightSymmetric: expected true or false, got str 'yes'"),
    ({"CalibMaxIntermediateOutputs": 2.5}, "CalibMaxIntermediateOutputs: expected a whole number"),
    ({"CalibMaxIntermediateOutputs": 0}, "out of range"),
    ({"SmoothQuantAlpha": True}, "SmoothQuantAlpha: expected a number, got bool"),
    ({"SmoothQuantAlpha": 1.5}, "1.5 is out of range [0.0, 1.0]"),
    ({"OpTypesToExcludeOutputQuantization": "Softmax"}, "expected a list of op type names"),
    ({"QDQOpTypePerChannelSupportToAxis": {"MatMul": "1"}}, "mapping of op type to axis"),
    ({"TensorQuantOverrides": {"x": [{"scael": 0.5}]}}, "TensorQuantOverrides.x[0].scael: unknown override key "
                                                        "(did you mean 'scale'?)"),
    ({"TensorQuantOverrides": {"x": [{"scale": 0.5}]}}, "'scale' and 'zero_point' go together"),
    ({"TensorQuantOverrides": {"x": [{"quant_type": "QInt9"}]}}, "is not a quantization type"),
    ({"DefaultTensorType": "FLAOT"}, "not an ONNX element type"),
    ({"QuantizeBias": None}, "QuantizeBias: expected bool, got nothing"),
])
def test_rejected(options, message):
    with pytest.raises(Fail) as exc:
        validate_extra_options(options, Fail)
    assert message in str(exc.value)


def test_accepted_values_are_converted():
    out = validate_extra_options({"MinimumRealRange": None, "CalibMovingAverageConstant": 0, "DefaultTensorType": 1,
                                  "TensorQuantOverrides": {"x": {"quant_type": "int16", "rmax": 2}}}, Fail)
    over = out.pop("TensorQuantOverrides")
    assert out == {"MinimumRealRange": None, "CalibMovingAverageConstant": 0.0, "DefaultTensorType": 1}
    assert over["x"][0]["quant_type"] is QuantType.QInt16 and over["x"][0]["rmax"].dtype == np.float32
    assert validate_extra_options(None, Fail) == {}
