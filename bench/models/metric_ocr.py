"""Task metric of the CRNN captcha OCR: exact-match string accuracy with greedy CTC decoding.

Usage: ``python metric.py FLOAT.onnx QUANT.onnx`` (reads eval.npz and eval_labels.json beside this file).
Why: per-layer error thresholds say nothing about whether the captchas still read right; this does. The
quantized model runs with all ONNX Runtime optimizations (the deployable integer kernels).
"""
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

BLANK = 10


def session(path: str) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def decode(logits: np.ndarray) -> str:
    """Greedy CTC: best class per step, merge repeats, drop blanks."""
    best = logits.argmax(-1)
    return "".join(str(c) for i, c in enumerate(best) if c != BLANK and (i == 0 or c != best[i - 1]))


def main(float_path: str, quant_path: str) -> dict:
    here = Path(__file__).resolve().parent
    images = np.load(here / "eval.npz")["image"]
    labels = json.loads((here / "eval_labels.json").read_text())
    texts = {}
    for label, path in (("float", float_path), ("quant", quant_path)):
        sess = session(path)
        name = sess.get_inputs()[0].name
        texts[label] = [decode(sess.run(None, {name: images[i:i + 1]})[0][0]) for i in range(len(images))]
    n = len(labels)
    return {
        "exact_float": f"{sum(a == b for a, b in zip(texts['float'], labels))}/{n}",
        "exact_quant": f"{sum(a == b for a, b in zip(texts['quant'], labels))}/{n}",
        "quant_equals_float": f"{sum(a == b for a, b in zip(texts['quant'], texts['float']))}/{n}",
        "examples": [{"label": l, "float": f, "quant": q}
                     for l, f, q in list(zip(labels, texts["float"], texts["quant"]))[:4]],
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2]), indent=2))
