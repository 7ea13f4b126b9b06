"""The quantacc fixture on a model built in the test: no YAML, no files of your own.

    pytest example_project/test_in_memory_model.py                       # just these tests
    pytest example_project/test_in_memory_model.py --quantacc --quantacc-report out.json   # in the reports too

The model is a small CNN built with onnx.helper (a model exported with torch.onnx.export works the same way:
pass the ModelProto or the file's path); data are dicts of arrays, axis 0 indexing samples.
"""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper


def small_cnn(outlier: float = 1.0):
    """Conv -> Relu -> Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm; ``outlier`` scales conv1's output
    channel 0, which then sets the 8-bit range of the activation conv2 reads: the outlier-channel signature."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32)
    w1[0] *= outlier
    w2 = rng.normal(0, 0.3, (8, 8, 3, 3)).astype(np.float32)
    w2[:, 0] /= outlier  # conv2 barely uses that channel: its output depends on the channels that lost resolution
    wfc = rng.normal(0, 0.5, (4, 8)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], "conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], "relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], "conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], "relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"], "pool"),
        helper.make_node("Flatten", ["p"], ["f"], "flatten"),
        helper.make_node("Gemm", ["f", "wfc"], ["logits"], "fc", transB=1),
    ]
    graph = helper.make_graph(nodes, "small_cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])],
                              [numpy_helper.from_array(a, n) for n, a in (("w1", w1), ("w2", w2), ("wfc", wfc))])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def samples(n: int, seed: int) -> dict:
    return {"x": np.random.default_rng(seed).normal(0, 1, (n, 1, 3, 8, 8)).astype(np.float32)}


def test_small_cnn_quantizes_well(quantacc):
    quantacc.check(small_cnn(), calibration=samples(32, 1), evaluation=samples(8, 2),
                   quantization={"per_channel": True}, thresholds={"cos": 0.99, "rmse": 0.1})


@pytest.mark.quantacc(thresholds={"cos": 0.98, "rmse": 0.2})  # defaults for every check() of this test
def test_outlier_channel_is_a_known_bad_layer(quantacc):
    # One channel 100x larger: conv2 reads an activation whose 8-bit range that channel sets. Known, tracked:
    # reported (JUnit property quantacc.known_bad_failing), not failing.
    quantacc.check(small_cnn(outlier=100.0), calibration=samples(32, 1), evaluation=samples(8, 2),
                   known_bad=[{"layer": "relu2", "reason": "outlier channel in conv1; int16 fix pending"}])
