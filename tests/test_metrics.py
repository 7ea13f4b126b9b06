"""Metric definitions (contract section 4) checked against an independent numpy computation."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pytest_quantacc.engine.metrics import Accumulator, AgreementAccumulator, tensor_metrics


def reference(f: np.ndarray, q: np.ndarray) -> dict[str, float]:
    """The contract's formulas written out directly (float64, numpy norms)."""
    f = f.astype(np.float64).ravel()
    q = q.astype(np.float64).ravel()
    cos = np.dot(f, q) / (np.linalg.norm(f) * np.linalg.norm(q))
    rmse = np.sqrt(np.mean((q - f) ** 2)) / np.sqrt(np.mean(f ** 2))
    mse = np.mean((q - f) ** 2)
    sqnr = 10 * np.log10(np.sum(f ** 2) / np.sum((q - f) ** 2))
    return {"cos": cos, "rmse": rmse, "mse": mse, "sqnr_db": sqnr, "max_abs": np.max(np.abs(q - f))}


finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)


@settings(max_examples=200, deadline=None)
@given(arrays(np.float32, st.integers(2, 64), elements=finite), st.floats(1e-3, 0.5), st.integers(0, 2**31))
def test_metrics_match_numpy(f, noise, seed):
    if np.sum(f.astype(np.float64) ** 2) < 1e-6:
        f = f + 1.0
    rng = np.random.default_rng(seed)
    q = (f + noise * np.abs(f).max() * rng.standard_normal(f.shape)).astype(np.float32)
    if np.array_equal(q, f):
        q = q + 1.0
    got = tensor_metrics(f, q)
    want = reference(f, q)
    for k, v in want.items():
        assert got[k] == pytest.approx(float(v), rel=1e-9, abs=1e-12), k


def test_vendor_scale_example():
    """Relative RMSE is error RMS over reference RMS: a 10% error on every element gives 0.1."""
    f = np.linspace(1, 100, 1000, dtype=np.float32)
    m = tensor_metrics(f, f * 1.1)
    assert m["rmse"] == pytest.approx(0.1, rel=1e-6)
    assert m["cos"] == pytest.approx(1.0)
    assert m["sqnr_db"] == pytest.approx(20.0, rel=1e-6)


@pytest.mark.parametrize(
    ("f", "q", "cos", "rmse"),
    [
        (np.zeros(4), np.zeros(4), 1.0, 0.0),  # both all-zero
        (np.zeros(4), np.ones(4), 0.0, math.inf),  # reference all-zero, target not
        (np.ones(4), np.zeros(4), 0.0, 1.0),  # target all-zero
        (np.ones(4), np.ones(4), 1.0, 0.0),  # identical
        (np.ones(4), -np.ones(4), -1.0, 2.0),  # opposite
    ],
)
def test_edge_cases(f, q, cos, rmse):
    m = tensor_metrics(f, q)
    assert m["cos"] == cos
    assert m["rmse"] == rmse


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape mismatch"):
        tensor_metrics(np.ones(3), np.ones(4))


def test_accumulator_mean_and_worst_over_samples():
    rng = np.random.default_rng(0)
    pairs = [(rng.standard_normal(50), rng.standard_normal(50)) for _ in range(7)]
    acc = Accumulator()
    for f, q in pairs:
        acc.add(tensor_metrics(f, q))
    s = acc.summary()
    refs = [reference(f, q) for f, q in pairs]
    assert s.samples == 7
    assert s["cos"] == pytest.approx(np.mean([r["cos"] for r in refs]))
    assert s["rmse"] == pytest.approx(np.mean([r["rmse"] for r in refs]))
    assert s.worst["cos"] == pytest.approx(min(r["cos"] for r in refs))
    assert s.worst["rmse"] == pytest.approx(max(r["rmse"] for r in refs))
    assert s.worst["sqnr_db"] == pytest.approx(min(r["sqnr_db"] for r in refs))


def test_agreement_counts_steps():
    a = np.array([0, 10, 20, 30, 40, 250], dtype=np.uint8)
    b = np.array([0, 11, 22, 33, 48, 5], dtype=np.uint8)
    acc = AgreementAccumulator("t", tolerance=2)
    acc.add(a, b)
    r = acc.result()
    assert r.max_steps == 245
    assert r.mismatches == 3  # 3, 8 and 245 steps exceed 2
    assert r.histogram == {"0": 1, "1": 1, "2": 1, "3-4": 1, "5-8": 1, ">8": 1}
    assert r.mismatch_rate == pytest.approx(0.5)


def test_large_tensor_spanning_many_blocks():
    """Block-wise accumulation (several cache-sized blocks, a ragged last one) equals the direct formulas."""
    rng = np.random.default_rng(3)
    f = rng.standard_normal((3, 257, 311)).astype(np.float32)
    q = (f + 0.003 * rng.standard_normal(f.shape)).astype(np.float32)
    got, want = tensor_metrics(f, q), reference(f, q)
    for k, v in want.items():
        assert got[k] == pytest.approx(float(v), rel=1e-10), k
