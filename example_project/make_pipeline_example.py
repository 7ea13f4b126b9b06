"""Build the pipeline-check example: a tiny 3-channel network and raw BGR camera images.

The digits model has one channel, so a colour swap cannot show on it; this network has three. It was "trained"
(its weights are fixed random numbers; what matters is that it reacts to colour) on RGB images normalised
with ImageNet's mean and std, in NCHW. The camera delivers uint8 BGR images in NHWC: the deployable model
must reorder the channels, transpose and normalise, which the spec's ``preprocess`` folds into the model.

    python make_pipeline_example.py     # writes pipeline/color_net.onnx, pipeline/raw_calib.npz, raw_eval.npz
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent / "pipeline"


def build_model(rng: np.random.Generator) -> onnx.ModelProto:
    """Conv 3->8 (3x3) -> Relu -> GlobalAveragePool -> Flatten -> Gemm 8->4 -> Softmax, input [1,3,8,8]."""
    w1 = rng.normal(0, 0.15, (8, 3, 3, 3)).astype(np.float32)  # each filter weighs the channels differently
    b1 = rng.normal(0.5, 0.1, 8).astype(np.float32)
    w2 = rng.normal(0, 0.5, (4, 8)).astype(np.float32)
    b2 = np.zeros(4, np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))]
    nodes = [
        helper.make_node("Conv", ["image", "w1", "b1"], ["conv_out"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv_out"], ["relu_out"], name="relu"),
        helper.make_node("GlobalAveragePool", ["relu_out"], ["gap_out"], name="gap"),
        helper.make_node("Flatten", ["gap_out"], ["flat_out"], name="flatten"),
        helper.make_node("Gemm", ["flat_out", "w2", "b2"], ["logits"], name="fc", transB=1),
        helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=1),
    ]
    graph = helper.make_graph(nodes, "color_net",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def camera_images(rng: np.random.Generator, n: int) -> np.ndarray:
    """uint8 BGR images, NHWC: warm scenes (strong red, weak blue), so swapping B and R changes them."""
    bgr_mean = np.array([60, 110, 190], np.float32)
    img = rng.normal(bgr_mean, 35, (n, 1, 8, 8, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def main() -> None:
    rng = np.random.default_rng(7)
    HERE.mkdir(exist_ok=True)
    onnx.save(build_model(rng), HERE / "color_net.onnx")
    np.savez(HERE / "raw_calib.npz", image=camera_images(rng, 32))
    np.savez(HERE / "raw_eval.npz", image=camera_images(rng, 16))


if __name__ == "__main__":
    main()
