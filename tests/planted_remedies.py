"""A Gemm chain whose per-site quantization error is planted: the minimal set of sites to raise is known.

Layer i computes ``h_i = h_{i-1} @ W_i + b_i`` on 32 channels. Channel 0 is zero everywhere (zero input
channel, zero weight column), so a weight outlier ``W_i[0, 1] = M_i`` changes nothing in float but sets the
int8 weight scale: every other weight of layer i is quantized coarsely (error grows with M_i). Channel 1 of
``h_i`` carries a constant ``b_i[1] = A_i`` that row 1 of the next weight (zero) discards: it sets the uint8
range of ``h_i``, so all other channels are quantized coarsely (error grows with A_i). Errors of independent
sites add up at the output, roughly as a root sum of squares.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

WIDTH = 32


def gemm_chain(dest: Path, weight_outliers: list[float], act_outliers: list[float], n: int = 24,
               seed: int = 0) -> tuple[onnx.ModelProto, onnx.ModelProto, list[dict]]:
    """(float model, QDQ model from quantize_static, samples): layer i named ``fc{i}``, output ``h{i}``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    prev = "x"
    for i, (m, a) in enumerate(zip(weight_outliers, act_outliers)):
        w = (rng.standard_normal((WIDTH, WIDTH)) / np.sqrt(WIDTH)).astype(np.float32)
        w[:, 0] = 0.0
        w[1, :] = 0.0
        w[0, :] = 0.0
        w[0, 1] = m
        b = np.zeros(WIDTH, np.float32)
        b[1] = a
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [f"h{i}"], name=f"fc{i}"))
        prev = f"h{i}"
    graph = helper.make_graph(nodes, "gemm_chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, WIDTH])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, WIDTH])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    x = rng.standard_normal((n, 1, WIDTH)).astype(np.float32)
    x[:, :, 0] = 0.0
    samples = [{"x": s} for s in x]
    dest.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dest / "float.onnx"))
    np.savez(dest / "data.npz", x=x)  # calibration = evaluation data of a spec entry (chain_entry)

    class Reader:
        def __init__(self) -> None:
            self.it = iter(samples)

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(dest / "float.onnx"), str(dest / "fixed.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)
    return model, onnx.load(str(dest / "fixed.onnx")), samples


def chain_entry(dest: Path, name: str, weight_outliers: list[float], act_outliers: list[float], **extra) -> dict:
    """A spec entry for a planted chain (float.onnx and data.npz in ``dest``), float vs fixed only."""
    gemm_chain(dest, weight_outliers, act_outliers)
    return {"name": name, "model": str(dest / "float.onnx"), "calibration": {"data": str(dest / "data.npz")},
            "evaluation": {"data": str(dest / "data.npz")}, "modes": ["float", "fixed"], **extra}


def input_spike_entry(dest: Path, name: str, n: int = 12, seed: int = 0) -> dict:
    """A 1x1 Conv whose input carries, per sample, one informative spike (1000) among 131072 N(0, 1) values.

    The spike sets the input's int8 range, so the other values are quantized coarsely (the default fails);
    percentile calibration clips the spike, which dominates the output: worse than the default (harmful).
    The input is a graph input, which no spec setting can raise: the set search finds nothing to verify and the
    whole-model settings are tried."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 1, 1, 256, 512)).astype(np.float32)
    for i in range(n):
        x[i, 0, 0, rng.integers(256), rng.integers(512)] = 1000.0
    w = numpy_helper.from_array(np.array([1.0, 0.5], np.float32).reshape(2, 1, 1, 1), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv")
    graph = helper.make_graph([node], "input_spike", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                    [1, 1, 256, 512])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 256, 512])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    dest.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dest / "float.onnx"))
    np.savez(dest / "data.npz", x=x)
    return {"name": name, "model": str(dest / "float.onnx"), "calibration": {"data": str(dest / "data.npz")},
            "evaluation": {"data": str(dest / "data.npz")}, "modes": ["float", "fixed"]}
