"""The planted facts of tests/verdict_models.py hold, checked with ONNX Runtime and numpy only (not the tool):
a verdict test built on these models asserts names, so the faults must be where the builders say."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
from verdict_models import VAR_SHAPES, ZP_LOW, deep_stack, dynamic_quantized, run_float, variable_shape, zero_point_clip
from zoo import fake_quant_metrics, quantize_qdq

from pytest_quantacc.graph.parts import channel_axis


def test_zero_point_rounding_clips_calibration_values(tmp_path):
    built = zero_point_clip(tmp_path)
    fixed = onnx.load(str(quantize_qdq(built.model, built.calib, tmp_path / "fixed.onnx")))
    init = {i.name: numpy_helper.to_array(i) for i in fixed.graph.initializer}
    scale, zp = float(init["shifted_scale"]), int(init["shifted_zero_point"])
    assert zp == 1 and 1.4 < -ZP_LOW / scale < 1.5  # the zero point 1.47 rounded down
    values = run_float(onnx.load(str(built.model)), {"input": np.load(built.calib)["input"]}, ["shifted"])["shifted"]
    assert values.min() == np.float32(ZP_LOW) and values.min() < -zp * scale  # calibration's own minimum is clipped
    assert np.array_equal(np.load(built.calib)["input"], np.load(built.eval)["input"])
    rows = {r[0]: r for r in fake_quant_metrics(built.model, built.calib, built.eval)}
    assert rows["conv_shift"][3] > 0.1  # and it breaks the rmse threshold there


def test_deep_stack_culprits_drop_accumulated_cos_most(tmp_path):
    built = deep_stack(tmp_path)
    rows = fake_quant_metrics(built.model, built.calib, built.eval)
    names = [r[0] for r in rows]
    assert len(rows) == 35
    first = next(r for r in rows if r[2] < 0.99 or r[3] > 0.1)
    assert names.index(first[0]) < names.index(built.planted[0])  # the gradual failure comes first
    assert first[3] < 0.11  # just over the threshold, as on the real text detector
    convs = [r for r in rows if r[1] == "Conv"]
    drops = sorted((b[2] - a[2], b[0]) for a, b in zip(convs, convs[1:]))
    assert drops[0][1] == built.planted[0]
    assert built.planted[1] in [name for _, name in drops[:3]]


def test_variable_shapes_and_labels(tmp_path):
    built = variable_shape(tmp_path)
    files = sorted(built.calib.glob("*.npz"))
    assert [tuple(np.load(f)["input"].shape[2:]) for f in files] == list(VAR_SHAPES)
    model = onnx.load(str(built.model))
    want = [int(run_float(model, {"input": np.load(f)["input"]}, ["logits"])["logits"].argmax()) for f in files]
    assert np.load(built.labels).tolist() == want
    assert channel_axis(model, "heatmap").axis == 1


def test_dynamic_model_is_integer(tmp_path):
    built = dynamic_quantized(tmp_path)
    ops = {n.op_type for n in onnx.load(str(built.model)).graph.node}
    assert {"DynamicQuantizeLinear", "ConvInteger", "MatMulInteger"} <= ops
    assert len(built.planted) >= 3
    x = np.load(built.calib)["input"]
    q = ort.InferenceSession(str(built.model), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    f = ort.InferenceSession(str(built.float_model), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert q.shape == f.shape and np.corrcoef(q.ravel(), f.ravel())[0, 1] > 0.99
