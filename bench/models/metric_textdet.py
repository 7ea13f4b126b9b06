"""Task metric of the deep text detector: pixel F1 of the text map (probability >= 0.3).

Usage: ``python metric.py FLOAT.onnx QUANT.onnx`` (reads eval.npz and eval_masks.npy beside this file).
Why: a deep model can fail every accumulated layer threshold while its text map is still usable; the F1 of
the quantized map against the float map (and of each against the ground truth) says which. The quantized
model runs with all ONNX Runtime optimizations.
"""
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

THRESHOLD = 0.3


def session(path: str) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def pixel_f1(pred: np.ndarray, ref: np.ndarray) -> float:
    tp = float((pred & ref).sum())
    return 2 * tp / (pred.sum() + ref.sum()) if pred.sum() + ref.sum() else 1.0


def main(float_path: str, quant_path: str) -> dict:
    here = Path(__file__).resolve().parent
    x = np.load(here / "eval.npz")["x"]
    masks = np.load(here / "eval_masks.npy") > 0.5
    maps = {}
    for label, path in (("float", float_path), ("quant", quant_path)):
        sess = session(path)
        name = sess.get_inputs()[0].name
        maps[label] = np.stack([sess.run(None, {name: x[i:i + 1]})[0][0, 0] for i in range(len(x))])
    fl, qu = maps["float"] >= THRESHOLD, maps["quant"] >= THRESHOLD
    return {
        "f1_quant_vs_float": round(pixel_f1(qu, fl), 4),
        "f1_float_vs_gt": round(pixel_f1(fl, masks), 4),
        "f1_quant_vs_gt": round(pixel_f1(qu, masks), 4),
        "max_abs_prob_diff": round(float(np.abs(maps["float"] - maps["quant"]).max()), 4),
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2]), indent=2))
