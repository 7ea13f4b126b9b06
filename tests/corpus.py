"""A corpus of small but structurally real ONNX models, the shapes real exporters produce.

Each builder writes ``<name>.onnx`` plus calibration and evaluation data into a destination folder and
returns a :class:`CorpusModel`. Models are generated with ``onnx.helper`` from fixed seeds (no downloads),
are a few KB to a few hundred KB, and each one exercises a structure users bring that the planted-fault zoo
(tests/zoo.py) does not: detection heads, recurrent layers, control flow, symbolic dimensions, NHWC input
layout, unnamed nodes, integer outputs, external data, weights in ``Constant`` nodes, old opsets, samples
of varying shape and float32-minimum attention masks.

Data layout follows the contract: one array per input, axis 0 indexes samples; ``calib``/``eval`` may be a
directory of ``.npz`` files (one sample each) where sample shapes differ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
N_CALIB = 16
N_EVAL = 8
mk = helper.make_node
F32_MIN = float(np.finfo(np.float32).min)


@dataclass(frozen=True)
class CorpusModel:
    model: Path
    calib: Path
    eval: Path
    notes: str


def _init(name: str, arr: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(arr), name)


def _vi(name: str, dtype: int, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def _const(name: str, arr: np.ndarray) -> onnx.NodeProto:
    """A ``Constant`` node holding ``arr`` (how some exporters store weights)."""
    return mk("Constant", [], [name], name=f"{name}_const", value=numpy_helper.from_array(np.asarray(arr), name))


def _he(rng: np.random.Generator, cout: int, cin: int, k: int = 3) -> np.ndarray:
    return (rng.standard_normal((cout, cin, k, k)) * math.sqrt(2.0 / (cin * k * k))).astype(np.float32)


def _images(seed: int, n: int, c: int, h: int, w: int | None = None) -> np.ndarray:
    """Smooth images (low-frequency pattern plus noise): activations with realistic, bounded ranges."""
    rng = np.random.default_rng(seed)
    w = w or h
    coarse = rng.uniform(-1, 1, (n, c, max(h // 4, 1), max(w // 4, 1)))
    coarse = np.repeat(np.repeat(coarse, 4, axis=2), 4, axis=3)[:, :, :h, :w]
    return (0.3 * rng.standard_normal((n, c, h, w)) + coarse).astype(np.float32)


def _write(dest: Path, stem: str, graph: onnx.GraphProto, data: dict[str, np.ndarray], notes: str,
           opset: int = OPSET, external: bool = False, n_calib: int = N_CALIB) -> CorpusModel:
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="quantacc-corpus")
    model.ir_version = 8 if opset >= 15 else 7
    onnx.checker.check_model(model, full_check=True)
    path = dest / f"{stem}.onnx"
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=f"{stem}.weights", size_threshold=0)
    else:
        onnx.save(model, str(path))
    calib, evald = dest / f"{stem}_calib.npz", dest / f"{stem}_eval.npz"
    np.savez(calib, **{k: v[:n_calib] for k, v in data.items()})
    np.savez(evald, **{k: v[n_calib:] for k, v in data.items()})
    return CorpusModel(path, calib, evald, notes)


# ----------------------------------------------------------------------------------------------------------
# vision
# ----------------------------------------------------------------------------------------------------------


def detection_cnn(dest: Path) -> CorpusModel:
    """A YOLO-style detector: strided Conv + HardSwish backbone, an upsampling (Resize) + Concat neck and two
    heads with Sigmoid (objectness) and raw box outputs: multi-output, symbolic batch."""
    rng = np.random.default_rng(11)
    inits = [
        _init("c1_w", _he(rng, 8, 3)), _init("c1_b", (0.1 * rng.standard_normal(8)).astype(np.float32)),
        _init("c2_w", _he(rng, 16, 8)), _init("c2_b", (0.1 * rng.standard_normal(16)).astype(np.float32)),
        _init("c3_w", _he(rng, 16, 16)), _init("c3_b", (0.1 * rng.standard_normal(16)).astype(np.float32)),
        _init("lat_w", _he(rng, 8, 24, 1)), _init("lat_b", (0.1 * rng.standard_normal(8)).astype(np.float32)),
        _init("obj_w", _he(rng, 1, 8, 1) * 0.5), _init("obj_b", np.zeros(1, np.float32)),
        _init("box_w", _he(rng, 4, 16, 1) * 0.5), _init("box_b", np.zeros(4, np.float32)),
        _init("up_scales", np.array([1, 1, 2, 2], np.float32)),
    ]
    conv = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    nodes = [
        mk("Conv", ["images", "c1_w", "c1_b"], ["c1"], name="backbone/conv1", strides=[2, 2], **conv),
        mk("HardSwish", ["c1"], ["a1"], name="backbone/act1"),
        mk("Conv", ["a1", "c2_w", "c2_b"], ["c2"], name="backbone/conv2", strides=[2, 2], **conv),
        mk("HardSwish", ["c2"], ["a2"], name="backbone/act2"),
        mk("Conv", ["a2", "c3_w", "c3_b"], ["c3"], name="backbone/conv3", **conv),
        mk("HardSwish", ["c3"], ["a3"], name="backbone/act3"),
        mk("Resize", ["a3", "", "up_scales"], ["up"], name="neck/upsample", mode="nearest"),
        mk("Concat", ["up", "a1"], ["cat"], name="neck/concat", axis=1),
        mk("Conv", ["cat", "lat_w", "lat_b"], ["lat"], name="neck/lateral", kernel_shape=[1, 1]),
        mk("Sigmoid", ["lat"], ["lat_s"], name="neck/sigmoid_gate"),
        mk("Mul", ["lat", "lat_s"], ["lat_silu"], name="neck/silu"),
        mk("Conv", ["lat_silu", "obj_w", "obj_b"], ["obj_logit"], name="head/obj_conv", kernel_shape=[1, 1]),
        mk("Sigmoid", ["obj_logit"], ["objectness"], name="head/obj_sigmoid"),
        mk("Conv", ["a3", "box_w", "box_b"], ["boxes"], name="head/box_conv", kernel_shape=[1, 1]),
    ]
    graph = helper.make_graph(nodes, "detection_cnn", [_vi("images", TensorProto.FLOAT, ["batch", 3, 32, 32])],
                              [_vi("objectness", TensorProto.FLOAT, ["batch", 1, 16, 16]),
                               _vi("boxes", TensorProto.FLOAT, ["batch", 4, 8, 8])], initializer=inits)
    return _write(dest, "detection_cnn", graph, {"images": _images(111, N_CALIB + N_EVAL, 3, 32)},
                  "HardSwish backbone, Resize x2 + Concat neck, SiLU gate, Sigmoid objectness head, box head")


def keras_nhwc_cnn(dest: Path) -> CorpusModel:
    """What tf2onnx makes of a Keras CNN: an NHWC input, a Transpose to NCHW, Keras-style node names."""
    rng = np.random.default_rng(12)
    inits = [
        _init("perm_w", _he(rng, 8, 3)), _init("conv_b", (0.1 * rng.standard_normal(8)).astype(np.float32)),
        _init("dense_w", (rng.standard_normal((8, 5)) * 0.4).astype(np.float32)),
        _init("dense_b", (0.1 * rng.standard_normal(5)).astype(np.float32)),
    ]
    nodes = [
        mk("Transpose", ["input_1"], ["nchw"], name="model/conv2d/Conv2D__6", perm=[0, 3, 1, 2]),
        mk("Conv", ["nchw", "perm_w", "conv_b"], ["conv"], name="model/conv2d/BiasAdd", kernel_shape=[3, 3],
           pads=[1, 1, 1, 1]),
        mk("Relu", ["conv"], ["relu"], name="model/conv2d/Relu"),
        mk("GlobalAveragePool", ["relu"], ["gap"], name="model/global_average_pooling2d/Mean"),
        mk("Flatten", ["gap"], ["flat"], name="model/flatten/Reshape"),
        mk("Gemm", ["flat", "dense_w", "dense_b"], ["logits"], name="model/dense/MatMul"),
        mk("Softmax", ["logits"], ["dense"], name="model/dense/Softmax", axis=-1),
    ]
    graph = helper.make_graph(nodes, "keras_nhwc", [_vi("input_1", TensorProto.FLOAT, ["unk__12", 16, 16, 3])],
                              [_vi("dense", TensorProto.FLOAT, ["unk__12", 5])], initializer=inits)
    x = _images(112, N_CALIB + N_EVAL, 3, 16).transpose(0, 2, 3, 1).copy()
    return _write(dest, "keras_nhwc_cnn", graph, {"input_1": x}, "NHWC input [?,16,16,3] -> Transpose -> NCHW CNN")


def unnamed_cnn(dest: Path) -> CorpusModel:
    """Every node unnamed (as some exporters write them), two Convs of the same op type."""
    rng = np.random.default_rng(13)
    inits = [_init("w1", _he(rng, 8, 3)), _init("b1", np.zeros(8, np.float32)),
             _init("w2", _he(rng, 8, 8)), _init("b2", np.zeros(8, np.float32))]
    conv = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    nodes = [mk("Conv", ["x", "w1", "b1"], ["t1"], **conv), mk("Relu", ["t1"], ["t2"]),
             mk("Conv", ["t2", "w2", "b2"], ["t3"], **conv), mk("Relu", ["t3"], ["t4"]),
             mk("GlobalAveragePool", ["t4"], ["y"])]
    graph = helper.make_graph(nodes, "unnamed", [_vi("x", TensorProto.FLOAT, [1, 3, 12, 12])],
                              [_vi("y", TensorProto.FLOAT, [1, 8, 1, 1])], initializer=inits)
    return _write(dest, "unnamed_cnn", graph, {"x": _images(113, N_CALIB + N_EVAL, 3, 12)[:, None]},
                  "no node has a name; fixed batch 1, data [N,1,3,12,12]")


def classifier_topk(dest: Path, n_classes: int = 10) -> CorpusModel:
    """A classifier whose outputs mix float (logits, top-k scores) and integer (ArgMax, TopK indices)."""
    rng = np.random.default_rng(14)
    inits = [_init("w", _he(rng, 8, 3)), _init("b", (0.1 * rng.standard_normal(8)).astype(np.float32)),
             _init("fc_w", (rng.standard_normal((8, n_classes)) * 0.5).astype(np.float32)),
             _init("fc_b", (0.1 * rng.standard_normal(n_classes)).astype(np.float32)),
             _init("k", np.array([3], np.int64))]
    nodes = [
        mk("Conv", ["x", "w", "b"], ["conv"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        mk("Relu", ["conv"], ["relu"], name="relu"),
        mk("GlobalAveragePool", ["relu"], ["gap"], name="gap"),
        mk("Flatten", ["gap"], ["flat"], name="flatten"),
        mk("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc"),
        mk("ArgMax", ["logits"], ["label"], name="argmax", axis=1, keepdims=0),
        mk("TopK", ["logits", "k"], ["top_scores", "top_ids"], name="topk", axis=1),
    ]
    graph = helper.make_graph(nodes, "classifier_topk", [_vi("x", TensorProto.FLOAT, ["n", 3, 12, 12])],
                              [_vi("logits", TensorProto.FLOAT, ["n", n_classes]),
                               _vi("label", TensorProto.INT64, ["n"]),
                               _vi("top_scores", TensorProto.FLOAT, ["n", 3]),
                               _vi("top_ids", TensorProto.INT64, ["n", 3])],
                              initializer=inits)
    return _write(dest, "classifier_topk", graph, {"x": _images(114, N_CALIB + N_EVAL, 3, 12)},
                  "float logits and TopK scores beside int64 ArgMax and TopK indices")


def external_data_cnn(dest: Path) -> CorpusModel:
    """The same CNN as :func:`unnamed_cnn` but named, stored with every initializer in a side file."""
    rng = np.random.default_rng(15)
    inits = [_init("w1", _he(rng, 8, 3)), _init("b1", np.zeros(8, np.float32)),
             _init("w2", _he(rng, 8, 8)), _init("b2", np.zeros(8, np.float32))]
    conv = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    nodes = [mk("Conv", ["x", "w1", "b1"], ["t1"], name="conv1", **conv), mk("Relu", ["t1"], ["t2"], name="relu1"),
             mk("Conv", ["t2", "w2", "b2"], ["t3"], name="conv2", **conv), mk("Relu", ["t3"], ["y"], name="relu2")]
    graph = helper.make_graph(nodes, "external", [_vi("x", TensorProto.FLOAT, ["n", 3, 12, 12])],
                              [_vi("y", TensorProto.FLOAT, ["n", 8, 12, 12])], initializer=inits)
    return _write(dest, "external_data_cnn", graph, {"x": _images(115, N_CALIB + N_EVAL, 3, 12)},
                  "initializers in external data file external_data_cnn.weights", external=True)


def constant_weights_cnn(dest: Path, opset: int = OPSET) -> CorpusModel:
    """Weights and biases in ``Constant`` nodes rather than initializers (older PyTorch, tf2onnx, hand-built)."""
    rng = np.random.default_rng(16)
    conv = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    nodes = [
        _const("w1", _he(rng, 8, 3)), _const("b1", (0.1 * rng.standard_normal(8)).astype(np.float32)),
        _const("w2", _he(rng, 8, 8)), _const("b2", (0.1 * rng.standard_normal(8)).astype(np.float32)),
        _const("fc_w", (rng.standard_normal((8, 6)) * 0.5).astype(np.float32)),
        _const("fc_b", (0.1 * rng.standard_normal(6)).astype(np.float32)),
        mk("Conv", ["x", "w1", "b1"], ["t1"], name="conv1", **conv), mk("Relu", ["t1"], ["t2"], name="relu1"),
        mk("Conv", ["t2", "w2", "b2"], ["t3"], name="conv2", **conv), mk("Relu", ["t3"], ["t4"], name="relu2"),
        mk("GlobalAveragePool", ["t4"], ["t5"], name="gap"), mk("Flatten", ["t5"], ["t6"], name="flatten"),
        mk("Gemm", ["t6", "fc_w", "fc_b"], ["y"], name="fc"),
    ]
    graph = helper.make_graph(nodes, "constant_weights", [_vi("x", TensorProto.FLOAT, ["n", 3, 12, 12])],
                              [_vi("y", TensorProto.FLOAT, ["n", 6])])
    return _write(dest, f"constant_weights_cnn_op{opset}", graph, {"x": _images(116, N_CALIB + N_EVAL, 3, 12)},
                  f"every weight and bias in a Constant node, opset {opset}", opset=opset)


def opset11_cnn(dest: Path) -> CorpusModel:
    """An opset-11 CNN (as older exporters write them): per-channel QDQ needs opset >= 13."""
    rng = np.random.default_rng(17)
    # channels with very different weight ranges: per-channel quantization matters here
    w1 = _he(rng, 8, 3) * np.geomspace(0.05, 5, 8, dtype=np.float32)[:, None, None, None]
    inits = [_init("w1", w1), _init("b1", np.zeros(8, np.float32)), _init("w2", _he(rng, 8, 8)),
             _init("b2", np.zeros(8, np.float32))]
    conv = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    nodes = [mk("Conv", ["x", "w1", "b1"], ["t1"], name="conv1", **conv), mk("Relu", ["t1"], ["t2"], name="relu1"),
             mk("Conv", ["t2", "w2", "b2"], ["t3"], name="conv2", **conv), mk("Relu", ["t3"], ["y"], name="relu2")]
    graph = helper.make_graph(nodes, "opset11", [_vi("x", TensorProto.FLOAT, ["n", 3, 12, 12])],
                              [_vi("y", TensorProto.FLOAT, ["n", 8, 12, 12])], initializer=inits)
    return _write(dest, "opset11_cnn", graph, {"x": _images(117, N_CALIB + N_EVAL, 3, 12)},
                  "opset 11, conv1 output channels with weight ranges 0.05x..5x", opset=11)


def variable_size_cnn(dest: Path) -> CorpusModel:
    """A fully convolutional model with symbolic height and width; samples of different sizes, one per file."""
    rng = np.random.default_rng(18)
    inits = [_init("w1", _he(rng, 8, 3)), _init("b1", (0.1 * rng.standard_normal(8)).astype(np.float32)),
             _init("w2", _he(rng, 4, 8)), _init("b2", np.zeros(4, np.float32))]
    conv = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    nodes = [mk("Conv", ["x", "w1", "b1"], ["t1"], name="conv1", **conv), mk("Relu", ["t1"], ["t2"], name="relu1"),
             mk("Conv", ["t2", "w2", "b2"], ["y"], name="conv2", **conv)]
    graph = helper.make_graph(nodes, "variable_size", [_vi("x", TensorProto.FLOAT, [1, 3, "h", "w"])],
                              [_vi("y", TensorProto.FLOAT, [1, 4, "h", "w"])], initializer=inits)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="quantacc-corpus")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    path = dest / "variable_size_cnn.onnx"
    onnx.save(model, str(path))
    dirs = {"calib": dest / "variable_size_calib", "eval": dest / "variable_size_eval"}
    sizes = [(8, 8), (12, 16), (16, 12), (20, 20)]
    for split, d in dirs.items():
        d.mkdir(exist_ok=True)
        n = N_CALIB if split == "calib" else N_EVAL
        for i in range(n):
            h, w = sizes[i % len(sizes)]
            np.savez(d / f"{i:03d}.npz", x=_images(1180 + i + (100 if split == "eval" else 0), 1, 3, h, w))
    return CorpusModel(path, dirs["calib"], dirs["eval"], "input [1,3,h,w]; samples 8x8, 12x16, 16x12, 20x20")


# ----------------------------------------------------------------------------------------------------------
# sequence models
# ----------------------------------------------------------------------------------------------------------


def lstm_model(dest: Path) -> CorpusModel:
    """A keyword-spotting-style recurrent model: input projection MatMul, LSTM, last step, classifier."""
    rng = np.random.default_rng(21)
    t, f, h, k = 10, 8, 16, 4
    inits = [
        _init("proj_w", (rng.standard_normal((f, f)) * math.sqrt(1 / f)).astype(np.float32)),
        _init("W", (rng.standard_normal((1, 4 * h, f)) * 0.3).astype(np.float32)),
        _init("R", (rng.standard_normal((1, 4 * h, h)) * 0.3).astype(np.float32)),
        _init("B", np.zeros((1, 8 * h), np.float32)),
        _init("cls_w", (rng.standard_normal((h, k)) * 0.5).astype(np.float32)),
        _init("perm_axes", np.array([0], np.int64)),
    ]
    nodes = [
        mk("MatMul", ["feats", "proj_w"], ["proj"], name="proj"),
        mk("Transpose", ["proj"], ["seq"], name="to_time_major", perm=[1, 0, 2]),
        mk("LSTM", ["seq", "W", "R", "B"], ["Y", "Y_h"], name="lstm", hidden_size=h),
        mk("Squeeze", ["Y_h", "perm_axes"], ["last"], name="last_state"),
        mk("MatMul", ["last", "cls_w"], ["logits"], name="classifier"),
    ]
    graph = helper.make_graph(nodes, "lstm", [_vi("feats", TensorProto.FLOAT, [1, t, f])],
                              [_vi("logits", TensorProto.FLOAT, [1, k])], initializer=inits)
    data = {"feats": np.random.default_rng(121).uniform(-1, 1, (N_CALIB + N_EVAL, 1, t, f)).astype(np.float32)}
    return _write(dest, "lstm_model", graph, data, "MatMul -> LSTM(hidden 16) -> last state -> MatMul")


def masked_attention(dest: Path, s: int = 8, d: int = 16) -> CorpusModel:
    """BERT-style attention with an extended mask: (1 - mask) * float32.min added to the scores.

    The mask tensor holds -3.4e38 wherever a sequence is padded; a histogram calibrator cannot bin it and a
    min/max calibrator spends the whole 8-bit range of the masked scores on it."""
    rng = np.random.default_rng(22)

    def lin(i, o):
        return (rng.standard_normal((i, o)) * math.sqrt(1.0 / i)).astype(np.float32)

    inits = [_init("wq", lin(d, d)), _init("wk", lin(d, d)), _init("wv", lin(d, d)),
             _init("scale", np.array(1 / math.sqrt(d), np.float32)), _init("one", np.array(1.0, np.float32)),
             _init("neg", np.array(F32_MIN, np.float32)), _init("unsq_axes", np.array([1], np.int64))]
    nodes = [
        mk("Cast", ["attention_mask"], ["mask_f"], name="mask_cast", to=TensorProto.FLOAT),
        mk("Sub", ["one", "mask_f"], ["inv_mask"], name="mask_invert"),
        mk("Mul", ["inv_mask", "neg"], ["ext_mask"], name="mask_fill_min"),
        mk("Unsqueeze", ["ext_mask", "unsq_axes"], ["ext_mask3"], name="mask_unsqueeze"),
        mk("MatMul", ["x", "wq"], ["q"], name="q_proj"),
        mk("MatMul", ["x", "wk"], ["k"], name="k_proj"),
        mk("MatMul", ["x", "wv"], ["v"], name="v_proj"),
        mk("Transpose", ["k"], ["kT"], name="k_transpose", perm=[0, 2, 1]),
        mk("MatMul", ["q", "kT"], ["qk"], name="qk"),
        mk("Mul", ["qk", "scale"], ["scores"], name="qk_scale"),
        mk("Add", ["scores", "ext_mask3"], ["masked"], name="add_mask"),
        mk("Softmax", ["masked"], ["probs"], name="softmax", axis=-1),
        mk("MatMul", ["probs", "v"], ["y"], name="attn_v"),
    ]
    graph = helper.make_graph(nodes, "masked_attention",
                              [_vi("x", TensorProto.FLOAT, [1, s, d]),
                               _vi("attention_mask", TensorProto.INT64, [1, s])],
                              [_vi("y", TensorProto.FLOAT, [1, s, d])], initializer=inits)
    n = N_CALIB + N_EVAL
    drng = np.random.default_rng(122)
    lengths = drng.integers(3, s + 1, n)
    lengths[:2] = s  # some samples unpadded
    mask = (np.arange(s)[None, :] < lengths[:, None]).astype(np.int64)[:, None]
    x = drng.uniform(-1.7, 1.7, (n, 1, s, d)).astype(np.float32)
    return _write(dest, "masked_attention", graph, {"x": x, "attention_mask": mask},
                  "x [1,8,16], attention_mask [1,8] int64; padded positions get float32.min added")


# ----------------------------------------------------------------------------------------------------------
# control flow
# ----------------------------------------------------------------------------------------------------------


def _branch(name: str, w: np.ndarray, out: str) -> onnx.GraphProto:
    """A subgraph computing ``Relu(h @ w)`` from the outer scope's ``h``."""
    return helper.make_graph(
        [mk("MatMul", ["h", f"{name}_w"], [f"{name}_mm"], name=f"{name}/matmul"),
         mk("Relu", [f"{name}_mm"], [out], name=f"{name}/relu")],
        name, [], [_vi(out, TensorProto.FLOAT, None)], initializer=[_init(f"{name}_w", w)])


def if_model(dest: Path, d: int = 16) -> CorpusModel:
    """Dense layers around an ``If`` whose branches hold their own MatMul+Relu (a data-dependent path)."""
    rng = np.random.default_rng(31)
    w = lambda: (rng.standard_normal((d, d)) * math.sqrt(2 / d)).astype(np.float32)  # noqa: E731
    inits = [_init("in_w", w()), _init("out_w", w()), _init("zero", np.array(0.0, np.float32))]
    nodes = [
        mk("MatMul", ["x", "in_w"], ["h"], name="in_proj"),
        mk("ReduceSum", ["x"], ["total"], name="gate_sum", keepdims=0),
        mk("Greater", ["total", "zero"], ["cond"], name="gate"),
        mk("If", ["cond"], ["branch_out"], name="branch", then_branch=_branch("then", w(), "then_out"),
           else_branch=_branch("else", w(), "else_out")),
        mk("MatMul", ["branch_out", "out_w"], ["y"], name="out_proj"),
    ]
    graph = helper.make_graph(nodes, "if_model", [_vi("x", TensorProto.FLOAT, [1, d])],
                              [_vi("y", TensorProto.FLOAT, [1, d])], initializer=inits)
    data = {"x": np.random.default_rng(131).uniform(-1, 1, (N_CALIB + N_EVAL, 1, d)).astype(np.float32)}
    return _write(dest, "if_model", graph, data, "MatMul, If(then: MatMul+Relu, else: MatMul+Relu), MatMul")


def loop_model(dest: Path, d: int = 16, steps: int = 3) -> CorpusModel:
    """An input projection, a ``Loop`` that applies a residual dense step ``steps`` times, an output layer."""
    rng = np.random.default_rng(32)
    body = helper.make_graph(
        [mk("MatMul", ["state_in", "step_w"], ["step_mm"], name="body/matmul"),
         mk("Tanh", ["step_mm"], ["step_act"], name="body/tanh"),
         mk("Add", ["state_in", "step_act"], ["state_out"], name="body/residual"),
         mk("Identity", ["cond_in"], ["cond_out"], name="body/cond")],
        "body", [_vi("iter", TensorProto.INT64, [1]), _vi("cond_in", TensorProto.BOOL, [1]),
                 _vi("state_in", TensorProto.FLOAT, [1, d])],
        [_vi("cond_out", TensorProto.BOOL, [1]), _vi("state_out", TensorProto.FLOAT, [1, d])],
        initializer=[_init("step_w", (rng.standard_normal((d, d)) * 0.3).astype(np.float32))])
    inits = [_init("in_w", (rng.standard_normal((d, d)) * math.sqrt(1 / d)).astype(np.float32)),
             _init("out_w", (rng.standard_normal((d, 4)) * 0.5).astype(np.float32)),
             _init("trip", np.array(steps, np.int64)), _init("true", np.array(True))]
    nodes = [mk("MatMul", ["x", "in_w"], ["h0"], name="in_proj"),
             mk("Loop", ["trip", "true", "h0"], ["h_final"], name="refine", body=body),
             mk("MatMul", ["h_final", "out_w"], ["y"], name="out_proj")]
    graph = helper.make_graph(nodes, "loop_model", [_vi("x", TensorProto.FLOAT, [1, d])],
                              [_vi("y", TensorProto.FLOAT, [1, 4])], initializer=inits)
    data = {"x": np.random.default_rng(132).uniform(-1, 1, (N_CALIB + N_EVAL, 1, d)).astype(np.float32)}
    return _write(dest, "loop_model", graph, data, f"MatMul, Loop x{steps} (MatMul, Tanh, residual Add), MatMul")


def all_in_subgraph(dest: Path, d: int = 16) -> CorpusModel:
    """The whole computation inside the branches of one ``If`` (as some exporters wrap a model)."""
    rng = np.random.default_rng(33)
    w = lambda: (rng.standard_normal((d, d)) * math.sqrt(2 / d)).astype(np.float32)  # noqa: E731
    nodes = [
        mk("Identity", ["x"], ["h"], name="enter"),
        mk("ReduceSum", ["x"], ["total"], name="gate_sum", keepdims=0),
        mk("Greater", ["total", "zero"], ["cond"], name="gate"),
        mk("If", ["cond"], ["y"], name="body", then_branch=_branch("then", w(), "then_out"),
           else_branch=_branch("else", w(), "else_out")),
    ]
    graph = helper.make_graph(nodes, "all_in_subgraph", [_vi("x", TensorProto.FLOAT, [1, d])],
                              [_vi("y", TensorProto.FLOAT, [1, d])],
                              initializer=[_init("zero", np.array(0.0, np.float32))])
    data = {"x": np.random.default_rng(133).uniform(-1, 1, (N_CALIB + N_EVAL, 1, d)).astype(np.float32)}
    return _write(dest, "all_in_subgraph", graph, data, "every MatMul inside the If branches")


BUILDERS = {
    "detection_cnn": detection_cnn,
    "keras_nhwc_cnn": keras_nhwc_cnn,
    "unnamed_cnn": unnamed_cnn,
    "classifier_topk": classifier_topk,
    "external_data_cnn": external_data_cnn,
    "constant_weights_cnn": constant_weights_cnn,
    "opset11_cnn": opset11_cnn,
    "variable_size_cnn": variable_size_cnn,
    "lstm_model": lstm_model,
    "masked_attention": masked_attention,
    "if_model": if_model,
    "loop_model": loop_model,
    "all_in_subgraph": all_in_subgraph,
}


def build_all(dest: Path) -> dict[str, CorpusModel]:
    return {name: fn(Path(dest) / name) for name, fn in BUILDERS.items()}
