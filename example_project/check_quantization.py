"""Dev script: per-tensor accuracy of ORT static QDQ quantization of the example models.

Not part of the plugin; an independent sanity check of the example project.

    python example_project/check_quantization.py [model.onnx ...]

For each model: quantize_static (QDQ, MinMax, per-tensor, activations QUInt8,
weights QInt8) with data/calib.npz, then expose every intermediate tensor T of the
float model and, in the QDQ model, the output of the DequantizeLinear fed by the
QuantizeLinear whose input is T (the quantizer removes a Relu that follows a
Conv/Gemm and renames the producer's output, so e.g. conv1_out has no quantized
counterpart).  Both run with ORT_DISABLE_ALL on data/eval.npz; per tensor, in
topological order, print the mean over samples of cosine similarity and relative
RMSE sqrt(mean((q-f)^2)) / sqrt(mean(f^2)).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

HERE = Path(__file__).resolve().parent
COS_MIN, RMSE_MAX = 0.99, 0.1


class NpzReader(CalibrationDataReader):
    def __init__(self, path, batch=1):
        data = dict(np.load(path))
        n = len(next(iter(data.values())))
        self._items = iter([{k: v[i : i + batch] for k, v in data.items()}
                            for i in range(0, n, batch)])

    def get_next(self):
        return next(self._items, None)


def quantize(model_path: Path, out_path: Path):
    quantize_static(
        str(model_path),
        str(out_path),
        NpzReader(HERE / "data" / "calib.npz"),
        quant_format=QuantFormat.QDQ,
        calibrate_method=CalibrationMethod.MinMax,
        per_channel=False,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )


def with_outputs(model: onnx.ModelProto, names):
    m = onnx.ModelProto()
    m.CopyFrom(model)
    existing = {o.name for o in m.graph.output}
    m.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in existing)
    return m


def run(model: onnx.ModelProto, names, feeds):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
    return dict(zip(names, sess.run(list(names), feeds)))


def float_tensors(model: onnx.ModelProto):
    """Every node output, in (topological) node order."""
    return [o for node in model.graph.node for o in node.output if o]


def dequant_map(qmodel: onnx.ModelProto, float_names):
    """float tensor name -> name of its fake-quantized (Q -> DQ) value.

    Usually T -> Q -> DQ -> "T_DequantizeLinear_Output".  For graph outputs the
    quantizer instead renames the producer's output to "T_QuantizeLinear_Input"
    and the DequantizeLinear keeps the name T: then T maps to itself."""
    float_names = set(float_names)
    consumers = {}
    for node in qmodel.graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    out = {}
    for node in qmodel.graph.node:
        if node.op_type == "QuantizeLinear":
            for c in consumers.get(node.output[0], []):
                if c.op_type == "DequantizeLinear":
                    if c.output[0] in float_names:
                        out[c.output[0]] = c.output[0]
                    else:
                        out[node.input[0]] = c.output[0]
                    break
    return out


def metrics(f, q):
    f = f.reshape(len(f), -1).astype(np.float64)
    q = q.reshape(len(q), -1).astype(np.float64)
    eps = 1e-12
    cos = (f * q).sum(1) / (np.linalg.norm(f, axis=1) * np.linalg.norm(q, axis=1) + eps)
    rmse = np.sqrt(((q - f) ** 2).mean(1)) / (np.sqrt((f**2).mean(1)) + eps)
    return float(cos.mean()), float(rmse.mean())


def check(model_path: Path):
    model = onnx.load(str(model_path))
    feeds = dict(np.load(HERE / "data" / "eval.npz"))
    labels = np.load(HERE / "data" / "eval_labels.npy")
    with tempfile.TemporaryDirectory() as tmp:
        qpath = Path(tmp) / "q.onnx"
        quantize(model_path, qpath)
        qmodel = onnx.load(str(qpath))

    names = float_tensors(model)
    dq = dequant_map(qmodel, names)
    fvals = run(with_outputs(model, names), names, feeds)
    qnames = [dq[n] for n in names if n in dq]
    qvals = run(with_outputs(qmodel, qnames), qnames, feeds)

    print(f"\n== {model_path.name}")
    print(f"{'tensor':<12} {'cos':>8} {'rel_rmse':>9}")
    first_fail = None
    for n in names:
        if n not in dq:
            print(f"{n:<12} {'n/a (no Q/DQ in quantized model)':>30}")
            continue
        cos, rmse = metrics(fvals[n], qvals[dq[n]])
        bad = cos < COS_MIN or rmse > RMSE_MAX
        if bad and first_fail is None:
            first_fail = n
        print(f"{n:<12} {cos:8.4f} {rmse:9.4f}{'  FAIL' if bad else ''}")
    acc_f = (fvals["logits"].argmax(1) == labels).mean()
    acc_q = (qvals[dq["logits"]].argmax(1) == labels).mean()
    print(f"eval accuracy: float {acc_f:.4f}, quantized {acc_q:.4f}; "
          f"first failing tensor: {first_fail or 'none'}")
    return first_fail


def main(argv):
    paths = [Path(a) for a in argv] or [HERE / "models" / "digits_cnn.onnx",
                                         HERE / "models" / "digits_cnn_outlier.onnx"]
    for p in paths:
        check(p)


if __name__ == "__main__":
    main(sys.argv[1:])
