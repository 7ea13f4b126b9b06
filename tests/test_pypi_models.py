"""Optional integration tests on real exported models that a PyPI package ships inside its wheel.

rapidocr-onnxruntime (not a dependency of this project; `pip install rapidocr-onnxruntime` to run these)
bundles PaddleOCR's models converted by paddle2onnx: opset 11/12, hundreds of weights in ``Constant``
nodes, BatchNormalization, HardSigmoid, Resize, ConvTranspose. The tests skip when it is not installed.
Inputs are rendered text lines (white background, black text), normalized as PaddleOCR does.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import zoo

from conftest import write_spec
from pytest_quantacc import evaluate_model, load_spec

WORDS = ["quantize", "ONNX 2026", "layer by layer", "pytest", "Runtime", "int8 QDQ", "cos 0.99", "hello world"]


def _models_dir() -> Path:
    pytest.importorskip("rapidocr_onnxruntime")
    return Path(importlib.util.find_spec("rapidocr_onnxruntime").origin).parent / "models"


def _text_lines(n: int, h: int, w: int, seed: int) -> np.ndarray:
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = np.full((h, w, 3), 255, np.uint8)
        cv2.putText(img, WORDS[(i + seed) % len(WORDS)], (int(rng.integers(2, 12)), int(h * 0.7)),
                    cv2.FONT_HERSHEY_SIMPLEX, h / 48, (0, 0, 0), 2)
        out.append(((img.astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1))
    return np.stack(out).astype(np.float32)


def _run(tmp_path: Path, model: Path, h: int, w: int, n_calib: int, n_eval: int, budget: int | None = None, **extra):
    np.savez(tmp_path / "calib.npz", x=_text_lines(n_calib, h, w, 1))
    np.savez(tmp_path / "eval.npz", x=_text_lines(n_eval, h, w, 100))
    entry = {"name": model.stem, "model": str(model), "calibration": {"data": str(tmp_path / "calib.npz")},
             "evaluation": {"data": str(tmp_path / "eval.npz")}, **extra}
    mspec = load_spec(write_spec(tmp_path / "spec.yaml", [entry])).models[0]
    t0 = time.perf_counter()
    result = evaluate_model(mspec, tmp_path / "work", memory_budget=budget)
    return result, time.perf_counter() - t0


def test_ppocr_direction_classifier_matches_independent_computation(tmp_path):
    """ch_ppocr_mobile_v2.0_cls (opset 11, 308 Constant nodes): weights become initializers, the model is
    upgraded to opset 13, and the per-layer numbers equal the independent fake-quant computation."""
    model = _models_dir() / "ch_ppocr_mobile_v2.0_cls_infer.onnx"
    result, seconds = _run(tmp_path, model, 48, 192, 8, 4, modes=["float", "fixed"])
    assert result.error is None, result.error
    float_model = onnx.load(str(result.artifacts.float_model))
    assert not [n for n in float_model.graph.node if n.op_type == "Constant"]
    assert result.quantized_layers > 100
    fx = result.comparison("float", "fixed")
    independent = {node: (cos, rmse) for node, _, cos, rmse in
                   zoo.fake_quant_metrics(result.artifacts.float_model, tmp_path / "calib.npz", tmp_path / "eval.npz")}
    compared = [r for r in fx.layers if r.summary is not None and r.layer.name in independent]
    assert len(compared) > 50
    for r in compared:
        cos, rmse = independent[r.layer.name]
        assert r.summary["cos"] == pytest.approx(cos, abs=1e-6), r.layer.name
        assert r.summary["rmse"] == pytest.approx(rmse, abs=1e-6), r.layer.name
    # per-tensor uint8 on a MobileNetV3: the error grows layer after layer; the first layer that breaks
    # the thresholds is the first in topological order whose metrics do
    first = next(r for r in fx.layers if r.status == "failed")
    assert fx.first_diverging.layer.name == first.layer.name
    print(f"\ncls: {len(fx.layers)} layers, {result.quantized_layers} quantized, first diverging "
          f"{first.layer.name} cos {first.summary['cos']:.4f} rmse {first.summary['rmse']:.4f}, {seconds:.1f} s")


def test_ppocr_text_detector_per_channel(tmp_path):
    """ch_PP-OCRv4_det (opset 12, ConvTranspose, Resize): per-channel needs the opset upgrade; the deployable
    model runs and every layer is either compared or skipped with a reason."""
    model = _models_dir() / "ch_PP-OCRv4_det_infer.onnx"
    result, seconds = _run(tmp_path, model, 64, 64, 4, 2, quantization={"per_channel": True, "reduce_range": True})
    assert result.error is None, result.error
    assert onnx.load(str(result.artifacts.float_model), load_external_data=False).opset_import[0].version >= 13
    fx = result.comparison("float", "fixed")
    assert all(r.summary is not None or r.reason for r in fx.layers)
    assert result.comparison("float", "offline").layers[0].summary is not None
    first = fx.first_diverging
    print(f"\ndet: {len(fx.layers)} layers, {result.quantized_layers} quantized, first diverging "
          f"{first.layer.name if first else None}, {seconds:.1f} s")


def test_ppocr_text_detector_in_passes_equals_one_pass(tmp_path):
    """A real exporter's graph (Resize, ConvTranspose, Concat; failing, so the own-error pass runs too), cut
    into passes by a small memory budget, gives every number of the one-pass evaluation."""
    model = _models_dir() / "ch_PP-OCRv4_det_infer.onnx"
    one, t1 = _run(tmp_path, model, 64, 64, 4, 2, budget=1 << 40)
    many, tn = _run(tmp_path, model, 64, 64, 4, 2, budget=4 << 20)
    assert one.passes == 1 and many.passes > 3, many.memory
    for a, b in zip(one.comparisons, many.comparisons):
        assert [(r.status, r.summary, r.own) for r in a.layers] == [(r.status, r.summary, r.own) for r in b.layers]
    assert one.comparison("float", "fixed").first_diverging.own is not None
    print(f"\ndet: {many.passes} passes {tn:.1f} s vs one pass {t1:.1f} s ({many.memory})")

