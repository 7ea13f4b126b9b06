"""Task metric of the YOLOv8-style detector: detections of the float model vs the deployable quantized model.

Usage: ``python metric.py FLOAT.onnx QUANT.onnx`` (reads eval.npz and eval_labels.npz beside this file).
Why: whole-tensor metrics of output0 are dominated by the pixel boxes; what a user sees is how many objects
are still detected. A detection is an anchor whose best class score is >= 0.2, after class-aware greedy NMS
(IoU 0.5). F1 of the quantized detections against the float ones (same class, IoU >= 0.5) and of each model
against the ground truth are printed as JSON. The quantized model runs with all ONNX Runtime optimizations.
"""
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

SCORE, IOU = 0.2, 0.5


def session(path: str) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x1 = np.maximum(box[0], boxes[:, 0]); y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2]); y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / (area(box) + area(boxes) - inter + 1e-9)


def detections(out: np.ndarray) -> np.ndarray:
    """[4+nc, A] -> [n, 6] (x1, y1, x2, y2, score, class) after the score threshold and NMS."""
    xywh, scores = out[:4].T, out[4:].T
    cls, score = scores.argmax(1), scores.max(1)
    keep = score >= SCORE
    boxes = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1)[keep]
    cls, score = cls[keep], score[keep]
    chosen = []
    for c in np.unique(cls):
        idx = np.where(cls == c)[0]
        idx = idx[np.argsort(-score[idx], kind="stable")]
        while idx.size:
            chosen.append(idx[0])
            idx = idx[1:][iou(boxes[idx[0]], boxes[idx[1:]]) < IOU]
    chosen = np.array(chosen, dtype=int)
    return np.concatenate([boxes[chosen], score[chosen, None], cls[chosen, None]], 1)


def f1(pred: np.ndarray, ref: np.ndarray) -> tuple[int, int, int]:
    """Greedy matching by score: true positives, predictions, references."""
    used = np.zeros(len(ref), bool)
    tp = 0
    for p in pred[np.argsort(-pred[:, 4], kind="stable")] if len(pred) else []:
        same = (ref[:, -1] == p[5]) & ~used if len(ref) else np.zeros(0, bool)
        if same.any():
            ious = np.where(same, iou(p[:4], ref[:, :4]), 0)
            j = int(ious.argmax())
            if ious[j] >= IOU:
                used[j] = True
                tp += 1
    return tp, len(pred), len(ref)


def score_f1(counts: list[tuple[int, int, int]]) -> float:
    tp, npred, nref = (sum(c[i] for c in counts) for i in range(3))
    return 2 * tp / (npred + nref) if npred + nref else 1.0


def main(float_path: str, quant_path: str) -> dict:
    here = Path(__file__).resolve().parent
    images = np.load(here / "eval.npz")["images"]
    gt = np.load(here / "eval_labels.npz")
    runs = {}
    for label, path in (("float", float_path), ("quant", quant_path)):
        sess = session(path)
        name = sess.get_inputs()[0].name
        runs[label] = [sess.run(None, {name: images[i:i + 1]})[0][0] for i in range(len(images))]
    dets = {k: [detections(o) for o in v] for k, v in runs.items()}
    gts = [gt[f"gt_{i}"] for i in range(len(images))]
    fl, qu = np.stack(runs["float"]), np.stack(runs["quant"])
    s_f, s_q = fl[:, 4:].ravel(), qu[:, 4:].ravel()
    return {
        "detections_float": sum(len(d) for d in dets["float"]),
        "detections_quant": sum(len(d) for d in dets["quant"]),
        "f1_quant_vs_float": round(score_f1([f1(q, f) for q, f in zip(dets["quant"], dets["float"])]), 4),
        "f1_float_vs_gt": round(score_f1([f1(f, g) for f, g in zip(dets["float"], gts)]), 4),
        "f1_quant_vs_gt": round(score_f1([f1(q, g) for q, g in zip(dets["quant"], gts)]), 4),
        "gt_objects": int(sum(len(g) for g in gts)),
        "scores_cos": round(float(s_f @ s_q / (np.linalg.norm(s_f) * np.linalg.norm(s_q) + 1e-12)), 4),
        "scores_distinct_quant": int(np.unique(s_q).size),
        "scores_exact_zero_quant": round(float((s_q == 0).mean()), 6),
        "boxes_cos": round(float((fl[:, :4].ravel() @ qu[:, :4].ravel())
                                 / (np.linalg.norm(fl[:, :4]) * np.linalg.norm(qu[:, :4]))), 6),
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2]), indent=2))
