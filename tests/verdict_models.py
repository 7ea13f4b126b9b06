"""Planted-fault models for the verdict work (issue 12): numpy + onnx.helper only, no torch, deterministic.

Each builder writes ``<stem>.onnx`` and its data into ``dest`` and returns a :class:`VerdictModel` naming the
planted layers, so a test asserts names known before anything runs. The cases are the ones where the
whole-tensor, first-layer-over-threshold verdict is wrong on real models:

- :func:`detection_head`: boxes (0..320) and sigmoid scores concatenated into one output (YOLOv8's head);
  per-tensor uint8 quantization of the Concat leaves the scores 0 or one step while the whole tensor passes.
- :func:`deep_stack`: 32 Convs whose error accumulates gradually, plus two layers with a large own error.
- :func:`zero_point_clip`: a tensor whose values below the representable minimum come from the zero point
  rounding 1.47 -> 1, not from calibration data that misses the evaluation range (they are the same data).
- :func:`variable_shape`: dynamic spatial dims, one sample per .npz in a directory, labels for the accuracy gate.
- :func:`dynamic_quantized`: a model ``quantize_dynamic`` already quantized (DynamicQuantizeLinear,
  ConvInteger, MatMulInteger), given where a float model is expected.
- :func:`outlier_channel`: one Conv output channel with a ~400x range beside three normal ones: per-tensor
  uint8 leaves the normal channels a level or two while the whole tensor's metrics pass.

Opset 17, IR version 8 (as tests/zoo.py), every model checked by ``onnx.checker``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8


@dataclass(frozen=True)
class VerdictModel:
    """A built model: files, the planted layers (node names) and what was planted, in words."""

    model: Path
    calib: Path
    eval: Path
    planted: tuple[str, ...]
    notes: str
    labels: Path | None = None
    float_model: Path | None = None  # dynamic_quantized: the float model it came from


def init(name: str, arr: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(arr), name)


def make(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="pytest-quantacc-verdicts")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def run_float(model: onnx.ModelProto, feeds: dict[str, np.ndarray], tensors: list[str]) -> dict[str, np.ndarray]:
    """Values of any tensors of ``model`` (exposed as extra outputs), optimizations off: used while building
    to scale weights from measured activations instead of hand-derived ones."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    known = {o.name for o in m.graph.output}
    m.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in tensors if t not in known)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return dict(zip(tensors, sess.run(tensors, feeds)))


def images(seed: int, n: int, c: int = 3, h: int = 16, w: int = 16) -> np.ndarray:
    """Smooth-ish random images: white noise plus a blocky low-frequency part (as tests/zoo.py)."""
    rng = np.random.default_rng(seed)
    coarse = rng.standard_normal((n, c, (h + 3) // 4, (w + 3) // 4))
    coarse = np.repeat(np.repeat(coarse, 4, axis=2), 4, axis=3)[:, :, :h, :w]
    return (0.5 * rng.standard_normal((n, c, h, w)) + coarse).astype(np.float32)


def conv(name: str, x: str, w: str, b: str, out: str, k: int) -> onnx.NodeProto:
    p = k // 2
    return helper.make_node("Conv", [x, w, b], [out], name=name, kernel_shape=[k, k], pads=[p, p, p, p])


def save(dest: Path, stem: str, model: onnx.ModelProto, calib: dict[str, np.ndarray],
         evald: dict[str, np.ndarray], planted: tuple[str, ...], notes: str) -> VerdictModel:
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    paths = dest / f"{stem}.onnx", dest / f"{stem}_calib.npz", dest / f"{stem}_eval.npz"
    onnx.save(model, str(paths[0]))
    np.savez(paths[1], **calib)
    np.savez(paths[2], **evald)
    return VerdictModel(*paths, planted, notes)


# ----------------------------------------------------------------------------------------------------------
# (a) detection head: boxes and scores in one Concat
# ----------------------------------------------------------------------------------------------------------

DET_BOXES, DET_CLASSES, DET_HW = 4, 6, 16


def detection_head(dest: Path, n_calib: int = 16, n_eval: int = 8, box_max: float = 320.0,
                   stem: str = "detection_head") -> VerdictModel:
    """Conv trunk -> boxes (Relu * gain, ~0..``box_max``) and scores (Sigmoid), each reshaped to [N, C, H*W] and
    concatenated on axis 1 into the single output ``output0`` [N, 10, 256]: rows 0-3 boxes, 4-9 scores.

    Scores are mostly small (logits ~ N(-3, 1.5)) with a few confident ones, as a detector's are. The box
    gain and the score logits are set from the float activations measured on the calibration data.
    Planted: ``head_concat`` (its per-tensor uint8 scale, ~1.25, is set by the boxes) and ``cls_sigmoid``
    (the small-range input that keeps 1-2 of the 256 levels).
    """
    rng = np.random.default_rng(21)
    x = images(210, n_calib + n_eval)
    c = 8

    def he(cout: int, cin: int, k: int) -> np.ndarray:
        return (rng.standard_normal((cout, cin, k, k)) * math.sqrt(2.0 / (cin * k * k))).astype(np.float32)

    params = {
        "conv1_w": he(c, 3, 3), "conv1_b": np.full(c, 0.05, np.float32),
        "conv2_w": he(c, c, 3), "conv2_b": np.full(c, 0.05, np.float32),
        "box_w": np.abs(he(DET_BOXES, c, 1)), "box_b": np.zeros(DET_BOXES, np.float32),
        "cls_w": he(DET_CLASSES, c, 1), "cls_b": np.zeros(DET_CLASSES, np.float32),
        "box_gain": np.array(1.0, np.float32),
        "box_shape": np.array([0, DET_BOXES, -1], np.int64), "cls_shape": np.array([0, DET_CLASSES, -1], np.int64),
    }

    def build() -> onnx.ModelProto:
        nodes = [
            conv("conv1", "images", "conv1_w", "conv1_b", "conv1_out", 3),
            helper.make_node("Relu", ["conv1_out"], ["relu1_out"], name="relu1"),
            conv("conv2", "relu1_out", "conv2_w", "conv2_b", "conv2_out", 3),
            helper.make_node("Relu", ["conv2_out"], ["relu2_out"], name="relu2"),
            conv("box_conv", "relu2_out", "box_w", "box_b", "box_conv_out", 1),
            helper.make_node("Relu", ["box_conv_out"], ["box_relu_out"], name="box_relu"),
            helper.make_node("Mul", ["box_relu_out", "box_gain"], ["boxes"], name="box_scale"),
            helper.make_node("Reshape", ["boxes", "box_shape"], ["boxes_flat"], name="box_reshape"),
            conv("cls_conv", "relu2_out", "cls_w", "cls_b", "cls_logits", 1),
            helper.make_node("Sigmoid", ["cls_logits"], ["scores"], name="cls_sigmoid"),
            helper.make_node("Reshape", ["scores", "cls_shape"], ["scores_flat"], name="cls_reshape"),
            helper.make_node("Concat", ["boxes_flat", "scores_flat"], ["output0"], name="head_concat", axis=1),
        ]
        graph = helper.make_graph(
            nodes, "detection_head",
            [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, DET_HW, DET_HW])],
            [helper.make_tensor_value_info("output0", TensorProto.FLOAT,
                                           ["batch", DET_BOXES + DET_CLASSES, DET_HW * DET_HW])],
            initializer=[init(k, v) for k, v in params.items()])
        return make(graph)

    got = run_float(build(), {"images": x[:n_calib]}, ["box_relu_out", "cls_logits"])
    params["box_gain"] = np.array(box_max / got["box_relu_out"].max(), np.float32)
    logits = got["cls_logits"]
    mean, std = logits.mean(axis=(0, 2, 3)), logits.std(axis=(0, 2, 3))
    params["cls_w"] = (params["cls_w"] * (1.5 / std)[:, None, None, None]).astype(np.float32)
    params["cls_b"] = (-3.0 - mean * 1.5 / std).astype(np.float32)
    model = build()
    return save(dest, stem, model, {"images": x[:n_calib]}, {"images": x[n_calib:]},
                ("head_concat", "cls_sigmoid"),
                "boxes 0..320 (rows 0-3) and sigmoid scores (rows 4-9) concatenated on axis 1 into output0; "
                "uint8 per-tensor scale ~320/255 leaves scores 0 or one step")


# ----------------------------------------------------------------------------------------------------------
# (b) deep stack: gradual accumulation plus two own-error culprits
# ----------------------------------------------------------------------------------------------------------

DEEP_DEPTH = 32
DEEP_CULPRITS = (14, 26)


def conv3x3(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Reference 3x3 convolution, stride 1, zero padding 1, float64 (NCHW, OIHW)."""
    n, _, h, wd = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((n, w.shape[0], h, wd))
    for i in range(3):
        for j in range(3):
            out += np.einsum("nchw,oc->nohw", xp[:, :, i:i + h, j:j + wd], w[:, :, i, j])
    return out + b[None, :, None, None]


def deep_stack(dest: Path, depth: int = DEEP_DEPTH, culprits: tuple[int, ...] = DEEP_CULPRITS,
               spread: float = 2.0, shrink: float = 24.0, n_calib: int = 16, n_eval: int = 8) -> VerdictModel:
    """A linear chain conv1..conv{depth} -> gap -> flatten -> fc (``depth`` + 3 layers).

    Gradual part (as tests/zoo.py's gradual_cnn): conv_k = D_k M_k D_(k-1)^-1 with M_k a norm-preserving
    channel mix and D_k scaling channel 0 by ``spread``: channel 0 sets every per-tensor uint8 range, the
    other channels keep few levels, and each layer adds a few percent of error that accumulates.

    Planted culprits, at each k in ``culprits``: the producer conv{k-1} scales its channel 1 *down* by
    ``shrink`` and conv{k} scales the weights reading it *up* by the same factor (the float function is
    unchanged). conv{k}'s per-tensor int8 weights then spend their range on those weights, the rest round to
    few levels, and channel 1 of its input keeps almost no levels: conv{k}'s *own* error breaks the
    thresholds, while conv{k-1}'s own error stays small (the shrunk channel carries almost none of its energy).
    """
    rng = np.random.default_rng(31)
    c = 8
    x = images(310, n_calib + n_eval).astype(np.float64)
    y = x
    prev_d = np.ones(3)
    params: dict[str, np.ndarray] = {}
    nodes = []
    src = "input"
    for k in range(1, depth + 1):
        cin = 3 if k == 1 else c
        if k == 1:
            m = rng.standard_normal((c, cin, 3, 3)) * math.sqrt(1.0 / (cin * 9))
        else:
            q, _ = np.linalg.qr(rng.standard_normal((c, c)))
            m = rng.standard_normal((c, cin, 3, 3)) * 0.08
            m[:, :, 1, 1] = q
        mb = rng.standard_normal(c) * 0.05
        r = np.sqrt(np.mean(conv3x3(y[:n_calib], m, mb) ** 2, axis=(0, 2, 3)))
        m, mb = m / r[:, None, None, None], mb / r
        y = conv3x3(y, m, mb)
        d = np.ones(c)
        d[0] = spread
        if k + 1 in culprits:
            d[1] = 1.0 / shrink
        w = m * d[:, None, None, None] / prev_d[None, :, None, None]
        params[f"conv{k}_w"], params[f"conv{k}_b"] = w.astype(np.float32), (mb * d).astype(np.float32)
        nodes.append(conv(f"conv{k}", src, f"conv{k}_w", f"conv{k}_b", f"conv{k}_out", 3))
        src = f"conv{k}_out"
        prev_d = d
    params["fc_w"] = (rng.standard_normal((10, c)) * math.sqrt(1.0 / c) / prev_d[None, :]).astype(np.float32)
    params["fc_b"] = (rng.standard_normal(10) * 0.05).astype(np.float32)
    nodes += [helper.make_node("GlobalAveragePool", [src], ["gap_out"], name="gap"),
              helper.make_node("Flatten", ["gap_out"], ["flatten_out"], name="flatten", axis=1),
              helper.make_node("Gemm", ["flatten_out", "fc_w", "fc_b"], ["logits"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "deep_stack",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 16, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
                              initializer=[init(k, v) for k, v in params.items()])
    x32 = x.astype(np.float32)
    return save(dest, "deep_stack", make(graph), {"input": x32[:n_calib]}, {"input": x32[n_calib:]},
                tuple(f"conv{k}" for k in culprits),
                f"{depth} linear Conv3x3 (channel 0 x{spread}: gradual accumulation); conv{culprits} read a "
                f"channel shrunk {shrink}x by their producer with weights grown {shrink}x (own-error culprits)")


# ----------------------------------------------------------------------------------------------------------
# (c) clipping from zero-point rounding
# ----------------------------------------------------------------------------------------------------------

ZP_LOW, ZP_HIGH = -0.145, 25.0  # uint8: scale 25.145/255 = 0.0986, -low/scale = 1.47 -> zero point 1


def zero_point_clip(dest: Path, n: int = 16) -> VerdictModel:
    """``conv_shift`` (1x1, weight 25.145, bias -0.145) maps inputs k/255 to 0.0986 k - 0.145, so its output
    ranges over [-0.145, 25.0] on the calibration data, the maximum from one element of sample 0.

    uint8 MinMax: scale 0.0986, zero point round(1.47) = 1, so the representable minimum is -0.0986: every
    value at -0.145 (k = 0, most of the tensor) lands below it and is clipped, and the whole grid sits 0.47
    steps off the values. The evaluation data *is* the calibration data (same samples, same minimum): the
    clipping comes from the zero point rounding, not from calibration missing the evaluation range.
    ``conv_mix`` (1x1, 1 -> 2 channels) only carries the error. Planted: ``conv_shift``.
    """
    rng = np.random.default_rng(41)
    k = rng.choice([0, 1, 2, 3], size=(n, 1, 8, 8), p=[0.7, 0.1, 0.1, 0.1]).astype(np.float32)
    k[0, 0, 0, 0] = 255.0
    x = (k / np.float32(255.0)).astype(np.float32)
    params = {"shift_w": np.full((1, 1, 1, 1), ZP_HIGH - ZP_LOW, np.float32),
              "shift_b": np.array([ZP_LOW], np.float32),
              "mix_w": np.array([1.0, 0.5], np.float32).reshape(2, 1, 1, 1), "mix_b": np.zeros(2, np.float32)}
    nodes = [conv("conv_shift", "input", "shift_w", "shift_b", "shifted", 1),
             conv("conv_mix", "shifted", "mix_w", "mix_b", "y", 1)]
    graph = helper.make_graph(nodes, "zero_point_clip",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2, 8, 8])],
                              initializer=[init(k, v) for k, v in params.items()])
    return save(dest, "zero_point_clip", make(graph), {"input": x}, {"input": x}, ("conv_shift",),
                "conv_shift output [-0.145, 25]: uint8 zero point 1.47 -> 1 clips -0.145 to -0.0986; "
                "evaluation data = calibration data")


# ----------------------------------------------------------------------------------------------------------
# (d) variable-shape outputs with an accuracy gate
# ----------------------------------------------------------------------------------------------------------

VAR_SHAPES = ((8, 8), (12, 10), (16, 16), (10, 14), (8, 12), (14, 8), (12, 12), (16, 10))
VAR_CLASSES = 5


def variable_shape(dest: Path) -> VerdictModel:
    """Input [1, 3, h, w] with symbolic h, w; outputs ``heatmap`` [1, 4, h, w] (first: the default output
    the accuracy gate scores) and ``logits`` [1, 5]. One sample per .npz in ``<stem>_calib/`` (shapes in
    ``VAR_SHAPES``, evaluation = calibration), labels = the float model's arg-max of logits (float accuracy
    1.0). Planted: ``relu1`` (the node whose output changes shape per sample)."""
    rng = np.random.default_rng(51)
    params = {"conv1_w": (rng.standard_normal((4, 3, 3, 3)) * 0.4).astype(np.float32),
              "conv1_b": np.full(4, 0.05, np.float32),
              "fc_w": (rng.standard_normal((VAR_CLASSES, 4)) * 0.7).astype(np.float32),
              "fc_b": np.zeros(VAR_CLASSES, np.float32)}
    nodes = [conv("conv1", "input", "conv1_w", "conv1_b", "conv1_out", 3),
             helper.make_node("Relu", ["conv1_out"], ["heatmap"], name="relu1"),
             helper.make_node("GlobalAveragePool", ["heatmap"], ["gap_out"], name="gap"),
             helper.make_node("Flatten", ["gap_out"], ["flatten_out"], name="flatten", axis=1),
             helper.make_node("Gemm", ["flatten_out", "fc_w", "fc_b"], ["logits"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "variable_shape",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, "h", "w"])],
                              [helper.make_tensor_value_info("heatmap", TensorProto.FLOAT, [1, 4, "h", "w"]),
                               helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, VAR_CLASSES])],
                              initializer=[init(k, v) for k, v in params.items()])
    model = make(graph)
    dest = Path(dest)
    folder = dest / "variable_shape_calib"
    folder.mkdir(parents=True, exist_ok=True)
    labels = []
    for i, (h, w) in enumerate(VAR_SHAPES):
        x = images(510 + i, 1, 3, h, w)
        np.savez(folder / f"sample_{i:02d}.npz", input=x)
        labels.append(int(run_float(model, {"input": x}, ["logits"])["logits"].argmax()))
    mpath = dest / "variable_shape.onnx"
    onnx.save(model, str(mpath))
    lpath = dest / "variable_shape_labels.npy"
    np.save(lpath, np.array(labels, np.int64))
    return VerdictModel(mpath, folder, folder, ("relu1",),
                        f"dynamic h, w; {len(VAR_SHAPES)} samples of different shapes; labels = float arg-max",
                        labels=lpath)


# ----------------------------------------------------------------------------------------------------------
# (e) an already (dynamically) quantized model
# ----------------------------------------------------------------------------------------------------------


def dynamic_quantized(dest: Path, n: int = 8) -> VerdictModel:
    """A float Conv -> Relu -> Flatten -> MatMul model quantized by ``quantize_dynamic`` (DynamicQuantizeLinear,
    ConvInteger, MatMulInteger inside); ``model`` is the quantized one, ``float_model`` the original.
    Planted: the integer nodes of the quantized model."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    rng = np.random.default_rng(61)
    params = {"conv1_w": (rng.standard_normal((4, 2, 3, 3)) * 0.3).astype(np.float32),
              "conv1_b": np.zeros(4, np.float32),
              "flat_shape": np.array([-1, 4 * 8 * 8], np.int64),
              "fc_w": (rng.standard_normal((4 * 8 * 8, 6)) * 0.1).astype(np.float32)}
    nodes = [conv("conv1", "input", "conv1_w", "conv1_b", "conv1_out", 3),
             helper.make_node("Relu", ["conv1_out"], ["relu1_out"], name="relu1"),
             helper.make_node("Reshape", ["relu1_out", "flat_shape"], ["flat"], name="flatten"),
             helper.make_node("MatMul", ["flat", "fc_w"], ["logits"], name="fc")]
    graph = helper.make_graph(nodes, "dynamic_float",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 2, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 6])],
                              initializer=[init(k, v) for k, v in params.items()])
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    fpath, qpath = dest / "dynamic_float.onnx", dest / "dynamic_quantized.onnx"
    onnx.save(make(graph), str(fpath))
    quantize_dynamic(str(fpath), str(qpath), op_types_to_quantize=["Conv", "MatMul"], weight_type=QuantType.QUInt8)
    q = onnx.load(str(qpath))
    integer = tuple(nd.name for nd in q.graph.node
                    if nd.op_type in ("DynamicQuantizeLinear", "ConvInteger", "MatMulInteger"))
    x = images(610, n, 2, 8, 8)
    cpath, epath = dest / "dynamic_calib.npz", dest / "dynamic_eval.npz"
    np.savez(cpath, input=x)
    np.savez(epath, input=x)
    return VerdictModel(qpath, cpath, epath, integer,
                        "quantize_dynamic output given as the float model", float_model=fpath)


# ----------------------------------------------------------------------------------------------------------
# (f) one outlier channel in a Conv output
# ----------------------------------------------------------------------------------------------------------

OUTLIER_GAIN = 400.0


def outlier_channel(dest: Path, n_calib: int = 16, n_eval: int = 8) -> VerdictModel:
    """``conv_wide`` (1x1, 3 -> 4 channels) writes channel 0 at ``OUTLIER_GAIN`` times the scale of channels
    1-3; ``conv_out`` (1x1, 4 -> 2) reads channel 0 scaled back down, so the float function is ordinary.
    Per-tensor uint8 of ``conv_wide_out`` spends its 256 levels on channel 0: channels 1-3 keep about one level
    each, while the tensor's whole cos stays above 0.99 (channel 0 carries its energy). Planted: ``conv_wide``
    (channels 1, 2, 3)."""
    rng = np.random.default_rng(71)
    w = rng.standard_normal((4, 3, 1, 1)) / math.sqrt(3)
    w[0] *= OUTLIER_GAIN
    mix = rng.standard_normal((2, 4, 1, 1)) / 2.0
    mix[:, 0] /= OUTLIER_GAIN
    params = {"wide_w": w.astype(np.float32), "wide_b": np.zeros(4, np.float32),
              "out_w": mix.astype(np.float32), "out_b": np.zeros(2, np.float32)}
    nodes = [conv("conv_wide", "input", "wide_w", "wide_b", "conv_wide_out", 1),
             conv("conv_out", "conv_wide_out", "out_w", "out_b", "y", 1)]
    graph = helper.make_graph(nodes, "outlier_channel",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2, 8, 8])],
                              initializer=[init(k, v) for k, v in params.items()])
    x = images(710, n_calib + n_eval, 3, 8, 8)
    return save(dest, "outlier_channel", make(graph), {"input": x[:n_calib]}, {"input": x[n_calib:]},
                ("conv_wide",), f"conv_wide channel 0 x{OUTLIER_GAIN:.0f}; conv_out reads it scaled back")
