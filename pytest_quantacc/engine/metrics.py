"""Per-sample tensor metrics (contract section 4) and streaming accumulators over samples.

Computed in float64 on the flattened tensors: float32 sums over large activations lose the digits that
separate cos 0.9999 from 0.9990. Accumulators keep sums and worst values only, so memory does not grow
with the number of samples.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np

from ..graph.parts import PartPlan
from .slices import SLICE_REL_FLOOR, PartsAccumulator

NAMES = ("cos", "rmse", "mse", "sqnr_db", "max_abs")
# For each metric, which direction is worse (worst-sample values are reported beside the mean).
_WORSE_IS_LOWER = {"cos": True, "rmse": False, "mse": False, "sqnr_db": True, "max_abs": False}


_CHUNK = 65536  # elements per block: the float64 blocks stay in a core's cache
_BLOCKS = threading.local()  # per thread (metrics run beside model runs): four float64 blocks, reused


def _blocks() -> np.ndarray:
    blocks = getattr(_BLOCKS, "arrays", None)
    if blocks is None:
        blocks = _BLOCKS.arrays = np.empty((4, _CHUNK), np.float64)
    return blocks


def _dot(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> float:
    """Sum of products by numpy's pairwise summation, not BLAS: BLAS splits the sum across its own threads,
    so the last bits would depend on the machine's core count (and OpenBLAS threads fighting ONNX Runtime's
    thread pool made a 150k-element dot product 50x slower on a 2-core machine). The products go to ``out``."""
    return float(np.multiply(a, b, out=out).sum())


def tensor_metrics(f: np.ndarray, q: np.ndarray) -> dict[str, float]:
    """cos, relative rmse, mse, sqnr_db and max_abs of target ``q`` against reference ``f`` (one sample).

    The tensors are walked in cache-sized blocks, each cast to float64 once into per-thread blocks that are
    reused: converting whole activations to float64 first made this function several times slower than
    running the model (memory traffic), and allocating the blocks anew per call cost 5x on 20k-200k-element
    tensors (the allocator returned them to the system and took page faults each time), while float32
    accumulation loses the digits that separate cos 0.9999 from 0.999.
    """
    f = np.asarray(f).reshape(-1)
    q = np.asarray(q).reshape(-1)
    if f.shape != q.shape:
        raise ValueError(f"shape mismatch: reference has {f.size} elements, target {q.size}")
    if f.size == 0:
        return {"cos": 1.0, "rmse": 0.0, "mse": 0.0, "sqnr_db": math.inf, "max_abs": 0.0}
    ff = qq = fq = dd = max_abs = 0.0
    blocks = _blocks()
    for start in range(0, f.size, _CHUNK):
        n = min(_CHUNK, f.size - start)
        a, b, d, t = blocks[0, :n], blocks[1, :n], blocks[2, :n], blocks[3, :n]
        np.copyto(a, f[start:start + n], casting="unsafe")
        np.copyto(b, q[start:start + n], casting="unsafe")
        np.subtract(b, a, out=d)
        ff += _dot(a, a, t)
        qq += _dot(b, b, t)
        fq += _dot(a, b, t)
        dd += _dot(d, d, t)
        max_abs = max(max_abs, float(np.abs(d, out=d).max()))
    if ff == 0.0 and qq == 0.0:
        cos = 1.0
    elif ff == 0.0 or qq == 0.0:
        cos = 0.0
    else:
        cos = max(-1.0, min(1.0, fq / math.sqrt(ff * qq)))
    if dd == 0.0:
        rmse, sqnr = 0.0, math.inf
    elif ff == 0.0:
        rmse, sqnr = math.inf, -math.inf
    else:
        rmse, sqnr = math.sqrt(dd / ff), 10.0 * math.log10(ff / dd)
    return {"cos": cos, "rmse": rmse, "mse": dd / f.size, "sqnr_db": sqnr, "max_abs": max_abs}


@dataclass(frozen=True)
class Summary:
    """A layer's metrics over samples: mean and worst-sample value of each, and the sample count."""

    mean: dict[str, float]
    worst: dict[str, float]
    samples: int

    def __getitem__(self, name: str) -> float:
        return self.mean[name]


class Accumulator:
    """Streaming mean and worst value of each metric over samples."""

    def __init__(self) -> None:
        self._sum = dict.fromkeys(NAMES, 0.0)
        self._worst: dict[str, float] = {}
        self.samples = 0

    def add(self, values: dict[str, float]) -> None:
        self.samples += 1
        for k in NAMES:
            v = values[k]
            self._sum[k] += v
            w = self._worst.get(k)
            if w is None or (v < w if _WORSE_IS_LOWER[k] else v > w):
                self._worst[k] = v

    def summary(self) -> Summary:
        n = max(self.samples, 1)
        return Summary(mean={k: s / n for k, s in self._sum.items()}, worst=dict(self._worst), samples=self.samples)


@dataclass(frozen=True)
class Agreement:
    """Fixed vs offline agreement of one quantized tensor, in quantization steps."""

    tensor: str
    elements: int
    max_steps: int
    mismatches: int  # elements differing by more than the tolerance
    histogram: dict[str, int]  # "0", "1", "2", "3-4", "5-8", ">8" -> element count

    @property
    def mismatch_rate(self) -> float:
        return self.mismatches / self.elements if self.elements else 0.0


_BINS = (("0", 0, 0), ("1", 1, 1), ("2", 2, 2), ("3-4", 3, 4), ("5-8", 5, 8), (">8", 9, None))


class AgreementAccumulator:
    """Counts step differences between two integer tensors over samples."""

    def __init__(self, tensor: str, tolerance: int) -> None:
        self.tensor, self.tolerance = tensor, tolerance
        self.elements = self.mismatches = self.max_steps = 0
        self.bins = dict.fromkeys((b[0] for b in _BINS), 0)

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        steps = np.abs(a.astype(np.int64) - b.astype(np.int64)).ravel()
        self.elements += steps.size
        if steps.size:
            self.max_steps = max(self.max_steps, int(steps.max()))
        self.mismatches += int(np.count_nonzero(steps > self.tolerance))
        counts = np.bincount(np.minimum(steps, 9), minlength=10)
        for label, lo, hi in _BINS:
            self.bins[label] += int(counts[lo:(hi + 1 if hi is not None else 10)].sum())

    def result(self) -> Agreement:
        return Agreement(self.tensor, self.elements, self.max_steps, self.mismatches, dict(self.bins))


Parts = dict[str, list[PartsAccumulator | None]]  # tensor -> one accumulator per PartPlan (None: dropped)


def accumulate(acc: dict[str, Accumulator], skips: dict[str, str], tensor: str, f, q, parts: Parts | None = None,
               plans: tuple[PartPlan, ...] = ()) -> None:
    """Add one sample of ``tensor`` (float ``f`` vs target ``q``) to its accumulator, and to its parts'
    accumulators when ``plans`` split it, or record why it cannot be compared (missing in one model, not a
    float tensor, shapes differ)."""
    if tensor in skips:
        return
    if f is None or q is None:
        skips[tensor] = "tensor not produced in one of the models"
    elif not (np.issubdtype(f.dtype, np.floating) and np.issubdtype(q.dtype, np.floating)):
        skips[tensor] = f"non-float output ({f.dtype}); not quantized"
    elif f.shape != q.shape:
        skips[tensor] = f"shapes differ: float {list(f.shape)} vs {list(q.shape)}"
    else:
        acc.setdefault(tensor, Accumulator()).add(tensor_metrics(f, q))
        if plans and parts is not None:
            add_parts(parts, tensor, plans, f, q)


def add_parts(parts: Parts, tensor: str, plans: tuple[PartPlan, ...], f: np.ndarray, q: np.ndarray) -> None:
    """One sample of ``tensor`` into each of its parts' accumulators, created from the first sample (a channel
    count is the tensor's size along the axis). A plan the sample does not fit (the count changed between
    samples of a dynamic shape) is dropped: that tensor is then judged on the parts that stay measurable."""
    accs = parts.get(tensor)
    if accs is None:
        accs = parts[tensor] = [_parts_accumulator(plan, f) for plan in plans]
    for i, a in enumerate(accs):
        if a is None:
            continue
        try:
            a.add(f, q)
        except ValueError:
            accs[i] = None


def _parts_accumulator(plan: PartPlan, f: np.ndarray) -> PartsAccumulator | None:
    if f.ndim <= plan.axis or (plan.kind == "channel" and f.shape[plan.axis] < 2):
        return None  # one channel is the whole tensor
    if plan.kind == "channel":
        return PartsAccumulator.channels(plan.axis, f.shape[plan.axis])
    return PartsAccumulator(plan.axis, plan.bounds, "slice", SLICE_REL_FLOOR, plan.names, plan.node)

