"""MAC/parameter counts against a hand computation; latency measured (no timing assertions)."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from pytest_quantacc.remedy.cost import compare_latency, node_costs, shares


def _model():
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n) for n, s in
             [("wc", (8, 3, 3, 3)), ("bc", (8,)), ("wt", (8, 4, 2, 2)), ("wg", (10, 1024)), ("bg", (10,)),
              ("wm", (10, 6))]]
    nodes = [helper.make_node("Conv", ["x", "wc", "bc"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("ConvTranspose", ["c", "wt"], ["t"], name="deconv", strides=[2, 2]),
             helper.make_node("Flatten", ["t"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "wg", "bg"], ["g"], name="fc", transB=1),
             helper.make_node("MatMul", ["g", "wm"], ["y"], name="mm")]
    graph = helper.make_graph(nodes, "cost", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_macs_and_params_by_hand():
    costs = {c.node: c for c in node_costs(_model(), {"x": [1, 3, 8, 8]})}
    # conv: 8x8x8 outputs, each 3*3*3 products; deconv: 8x8x8 inputs, each scattered to 4 channels * 2*2
    assert costs["conv"].macs == 8 * 8 * 8 * 27 and costs["conv"].params == 8 * 27 + 8
    assert costs["deconv"].macs == 8 * 8 * 8 * 4 * 4 and costs["deconv"].params == 8 * 4 * 4
    assert costs["fc"].macs == 1024 * 10 and costs["fc"].params == 10240 + 10  # 4x16x16 = 1024 inputs
    assert costs["mm"].macs == 10 * 6 and costs["mm"].params == 60
    assert node_costs(_model(), {"x": [2, 3, 8, 8]})[0].macs == 2 * 8 * 8 * 8 * 27


def test_shares_sum_to_one():
    costs = node_costs(_model(), {"x": [1, 3, 8, 8]})
    s = shares(costs, raised={"conv"}, excluded={"fc"})
    total = 13824 + 8192 + 10240 + 60
    assert np.isclose(s.macs_16, 13824 / total) and np.isclose(s.macs_float, 10240 / total)
    assert np.isclose(s.macs_8 + s.macs_16 + s.macs_float, 1.0)
    assert np.isclose(s.params_float, 10250 / (224 + 128 + 10250 + 60))


def test_latency_is_measured_for_three_models():
    m = _model()
    lat = compare_latency(m, m, m, {"x": np.zeros((1, 3, 8, 8), np.float32)}, runs=3)
    assert lat.ms > 0 and lat.int8_ms > 0 and lat.float_ms > 0
