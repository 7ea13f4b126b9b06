"""Per-slice / per-channel metrics (engine/slices.py) against an independent numpy computation, and the
masking they exist for, reproduced on the toy detection head quantized by ONNX Runtime's quantize_static."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from verdict_models import DET_BOXES, DET_CLASSES, detection_head
from zoo import quantize_qdq

from pytest_quantacc.engine.slices import ABS_FLOOR, REL_FLOOR, PartsAccumulator
from pytest_quantacc.graph.parts import channel_axis, concat_slices


def reference(samples: list[tuple[np.ndarray, np.ndarray]], axis: int, bounds: list[int]) -> list[dict]:
    """Per part: the module docstring's rules written out one sample and one part at a time."""
    out = []
    for start, stop in zip(bounds, bounds[1:]):
        cos, rmse, near = [], [], 0
        for f, q in samples:
            f, q = f.astype(np.float64), q.astype(np.float64)
            fp = np.take(f, range(start, stop), axis=axis).ravel()
            qp = np.take(q, range(start, stop), axis=axis).ravel()
            whole = np.sqrt(np.mean(f ** 2))
            part = np.sqrt(np.mean(fp ** 2))
            err = np.sqrt(np.mean((qp - fp) ** 2))
            if part < REL_FLOOR * whole or part < ABS_FLOOR:
                near += 1
                rmse.append(err / whole)
            else:
                rmse.append(err / part)
                cos.append(np.dot(fp, qp) / (np.linalg.norm(fp) * np.linalg.norm(qp)))
        out.append({"cos": np.mean(cos) if cos else None, "worst_cos": min(cos) if cos else None,
                    "rmse": np.mean(rmse), "worst_rmse": max(rmse), "near": near})
    return out


@pytest.mark.parametrize("seed", range(6))
def test_parts_match_numpy(seed):
    rng = np.random.default_rng(seed)
    ndim = int(rng.integers(2, 5))
    shape = [int(s) for s in rng.integers(1, 7, size=ndim)]
    axis = int(rng.integers(0, ndim))
    shape[axis] = int(rng.integers(3, 9))
    cuts = sorted(rng.choice(range(1, shape[axis]), size=int(rng.integers(1, shape[axis])), replace=False))
    bounds = [0, *map(int, cuts), shape[axis]]
    scales = np.exp(rng.uniform(-3, 3, size=shape[axis]))
    scales[int(rng.integers(0, shape[axis]))] = 1e-6  # one near-zero index: the near-zero rule is exercised
    view = [1] * ndim
    view[axis] = shape[axis]
    samples = []
    for _ in range(int(rng.integers(1, 5))):
        f = (rng.standard_normal(shape) * scales.reshape(view)).astype(np.float32)
        q = (f + 0.05 * rng.standard_normal(shape) * np.abs(f).max()).astype(np.float32)
        samples.append((f, q))
    for kind, edges in (("slice", bounds), ("channel", list(range(shape[axis] + 1)))):
        acc = PartsAccumulator(axis, tuple(edges), kind)
        for f, q in samples:
            acc.add(f, q)
        got, want = acc.summary(), reference(samples, axis, edges)
        assert [p.index for p in got.parts] == list(range(len(edges) - 1))
        for p, w in zip(got.parts, want):
            assert p.near_zero_samples == w["near"]
            assert p.rmse == pytest.approx(w["rmse"], rel=1e-9)
            assert p.worst_rmse == pytest.approx(w["worst_rmse"], rel=1e-9)
            if w["cos"] is None:
                assert p.cos is None and p.worst_cos is None
            else:
                assert p.cos == pytest.approx(w["cos"], rel=1e-9)
                assert p.worst_cos == pytest.approx(w["worst_cos"], rel=1e-9)
        worst = got.worst()
        assert worst.badness(0.99, 0.1) == max(p.badness(0.99, 0.1) for p in got.parts)


def test_near_zero_channel_is_judged_on_the_tensor_scale():
    """A dead channel off by ~one step is not a relative-RMSE disaster; one lifted to 10% of the tensor is."""
    f = np.zeros((1, 3, 4, 4), np.float32)
    f[0, 0] = 1.0
    f[0, 2] = 2.0
    q = f.copy()
    q[0, 1] = 0.002  # channel 1 is exactly zero in float
    acc = PartsAccumulator.channels(1, 3)
    acc.add(f, q)
    dead = acc.summary().parts[1]
    whole = math.sqrt((16 * 1.0 + 16 * 4.0) / 48)
    assert dead.rule == "near-zero" and dead.cos is None
    assert dead.rmse == pytest.approx(0.002 / whole)
    q[0, 1] = 0.1 * whole
    acc = PartsAccumulator.channels(1, 3)
    acc.add(f, q)
    assert acc.summary().worst().index == 1 and acc.summary().parts[1].rmse == pytest.approx(0.1)


def test_all_zero_tensor():
    acc = PartsAccumulator.channels(0, 2)
    acc.add(np.zeros((2, 3)), np.array([[0.0, 0, 0], [0, 1, 0]]))
    parts = acc.summary().parts
    assert (parts[0].rmse, parts[1].rmse) == (0.0, math.inf)


def test_bounds_are_checked():
    with pytest.raises(ValueError):
        PartsAccumulator(1, (0, 3, 3))
    acc = PartsAccumulator(1, (0, 2, 5))
    with pytest.raises(ValueError):
        acc.add(np.zeros((1, 4)), np.zeros((1, 4)))


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    dest = tmp_path_factory.mktemp("head")
    built = detection_head(dest)
    return built, quantize_qdq(built.model, built.calib, dest / "fixed.onnx")


def test_graph_slices_and_channel_axes(head):
    built, _ = head
    model = onnx.load(str(built.model))
    got = concat_slices(model, "output0")
    assert (got.node, got.axis, got.inputs) == ("head_concat", 1, ("boxes_flat", "scores_flat"))
    assert got.bounds == (0, DET_BOXES, DET_BOXES + DET_CLASSES)
    assert concat_slices(model, "scores") is None
    assert channel_axis(model, "relu2_out").axis == 1  # rank 4 from a Conv
    assert channel_axis(model, "scores").axis == 1  # Sigmoid of a Conv
    assert channel_axis(model, "scores_flat").axis is None  # after a Reshape the layout is not known
    sym = onnx.load(str(built.model))
    for vi in sym.graph.input:
        vi.type.tensor_type.shape.dim[1].dim_param = "c"  # input channels symbolic: sizes still inferred
    assert concat_slices(sym, "output0").bounds == got.bounds


def test_masked_scores_are_found(head):
    """Whole-tensor cos of output0 passes while the scores slice is destroyed (the YOLOv8 case)."""
    built, fixed = head
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    f_run = ort.InferenceSession(str(built.model), opts, providers=["CPUExecutionProvider"])
    q_run = ort.InferenceSession(str(fixed), opts, providers=["CPUExecutionProvider"])
    x = np.load(built.eval)["images"]
    slices = concat_slices(onnx.load(str(built.model)), "output0")
    acc = PartsAccumulator(slices.axis, slices.bounds)
    whole = []
    for i in range(len(x)):
        f = f_run.run(["output0"], {"images": x[i:i + 1]})[0]
        q = q_run.run(["output0"], {"images": x[i:i + 1]})[0]
        acc.add(f, q)
        a, b = f.astype(np.float64).ravel(), q.astype(np.float64).ravel()
        whole.append(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    boxes, scores = acc.summary().parts
    assert np.mean(whole) > 0.99
    assert boxes.cos > 0.99
    assert scores.cos < 0.9
    assert acc.summary().worst() == scores


def test_channel_axis_of_rank3_tensors():
    """[N, C, L] from a Conv1d has channels on axis 1; [N, tokens, hidden] from a MatMul has none known."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 2, 3), np.float32), "w")
    m = numpy_helper.from_array(np.ones((4, 5), np.float32), "m")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "m"], ["t"], name="mm")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2, 4])],
                              [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)], initializer=[w, m])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert channel_axis(model, "r").axis == 1
    got = channel_axis(model, "t")
    assert got.axis is None and "MatMul" in got.reason
    assert channel_axis(model, "x").axis is None  # a graph input: no producer says its layout
