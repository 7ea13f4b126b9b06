"""Masking-proof metrics: the same cos / relative RMSE, per slice or per channel of a tensor.

Whole-tensor metrics are dominated by the parts with the largest values. A detector's head concatenates box
coordinates (0..320) and class scores (0..1) into one tensor: per-tensor uint8 quantization of that tensor
leaves the scores 0 or one step, yet the whole tensor's cos stays 0.999 because the boxes carry almost all of
its energy. The same holds for one channel with a +400 range beside normal channels. Judging each part on its
own (each concatenated input's slice along the concat axis, or each channel) exposes what the whole hides.

Accumulation follows ``metrics.Accumulator``: float64 sums per sample, the mean over samples of per-sample
metrics and the worst sample, per part, so memory does not grow with the number of samples.

**The near-zero rule.** A part whose float reference is (near) zero has no scale of its own: a relative RMSE
against it is noise over noise (a channel a Relu keeps dead, whose quantized copy is off by one step, would
show rmse 1e6). For each sample, a part is *near zero* when its reference rms is below
``rel_floor`` times the whole tensor's rms of that sample (channels: ``REL_FLOOR`` 1e-3; Concat slices:
``SLICE_REL_FLOOR`` 1e-7, see there), or below ``ABS_FLOOR``. For such a
part, in that sample,

- rmse is its error rms divided by the *whole tensor's* reference rms (absolute error on the tensor's scale:
  a dead channel that stays within a few steps of zero scores ~0.001, one that quantization lifts to a tenth
  of the tensor's typical magnitude scores 0.1 and fails);
- cos is not computed (a direction of noise means nothing): the part's mean cos is over the samples where it
  was judged relatively, and is None when it never was.

Each part reports how many samples were judged by the near-zero rule (``near_zero_samples``) so a report can
say so. When the whole tensor itself is zero in a sample every part is near zero; its rmse is then 0 if the
target is zero too and infinite otherwise (as ``metrics.tensor_metrics``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

REL_FLOOR = 1e-3  # a channel below this fraction of the whole tensor's rms is judged by the near-zero rule
# A Concat's slice is a tensor of its own joined to others of any scale: a detector's scores sit at 1e-4 of the
# boxes' rms, and judging them on the boxes' scale is the masking slices exist to remove. Only a slice that is
# zero at float32 precision relative to the whole (below its rounding) is judged on the tensor's scale.
SLICE_REL_FLOOR = 1e-7
ABS_FLOOR = 1e-20  # below this rms a part is zero whatever the tensor's scale (float32 denormals and below)
_CHUNK = 65536  # elements of the flattened remainder per block, as in metrics.py


@dataclass(frozen=True)
class PartMetrics:
    """One slice or channel over samples.

    ``cos``: mean over the samples judged relatively (None when none was); ``rmse``: mean over all samples,
    each sample's value by its rule (see the module docstring); ``worst_*``: the worst sample's value.
    ``start``/``stop``: the part's index range along the axis (a channel has stop = start + 1).
    """

    index: int
    start: int
    stop: int
    cos: float | None
    rmse: float
    worst_cos: float | None
    worst_rmse: float
    samples: int
    near_zero_samples: int

    @property
    def rule(self) -> str:
        """How the part was judged: "relative", "near-zero" (every sample) or "mixed"."""
        if self.near_zero_samples == 0:
            return "relative"
        return "near-zero" if self.near_zero_samples == self.samples else "mixed"

    def badness(self, cos_min: float, rmse_max: float) -> float:
        """How far past the thresholds the part is, on one scale: max((1 - cos) / (1 - cos_min), rmse / rmse_max).

        Values above 1 break a threshold. One number is needed to pick *the* worst part when one part has the
        lowest cos and another the highest rmse.
        """
        by_cos = (1.0 - self.cos) / max(1.0 - cos_min, 1e-12) if self.cos is not None else 0.0
        return max(by_cos, self.rmse / rmse_max if rmse_max > 0 else math.inf if self.rmse > 0 else 0.0)

    def breaks(self, cos_min: float, rmse_max: float) -> bool:
        """The part's mean metrics break a threshold (cos only where it was judged: see the near-zero rule)."""
        return (self.cos is not None and self.cos < cos_min) or self.rmse > rmse_max

    def as_json(self) -> dict:
        return {"index": self.index, "start": self.start, "stop": self.stop, "cos": self.cos, "rmse": self.rmse,
                "worst_cos": self.worst_cos, "worst_rmse": self.worst_rmse, "samples": self.samples,
                "near_zero_samples": self.near_zero_samples, "rule": self.rule}


@dataclass(frozen=True)
class PartsSummary:
    """Every part of a tensor along ``axis`` (``kind`` "slice" or "channel"); for slices, ``names`` are the
    Concat's inputs (one per part) and ``node`` the Concat."""

    kind: str
    axis: int
    parts: tuple[PartMetrics, ...]
    names: tuple[str, ...] = ()
    node: str | None = None

    def label(self, part: PartMetrics) -> str:
        """How a person reads one part: "slice 1 (scores_flat, [4:10] on axis 1)" or "channel 6"."""
        if self.kind == "channel":
            return f"channel {part.index}"
        name = f"{self.names[part.index]}, " if part.index < len(self.names) else ""
        return f"slice {part.index} ({name}[{part.start}:{part.stop}] on axis {self.axis})"

    def worst(self, cos_min: float = 0.99, rmse_max: float = 0.1) -> PartMetrics | None:
        """The part furthest past the thresholds (ties: the first in index order)."""
        return max(self.parts, key=lambda p: p.badness(cos_min, rmse_max), default=None)


class PartsAccumulator:
    """Streaming per-part cos and relative RMSE of target against reference along one axis.

    ``bounds`` are the part edges along the axis, ``[0, b1, ..., size]``; each part is ``[b_i, b_{i+1})``.
    ``PartsAccumulator.channels(axis, n)`` makes one part per index. The axis is counted on the per-sample
    tensor as the model produces it (batch axis included).
    """

    def __init__(self, axis: int, bounds: tuple[int, ...], kind: str = "slice", rel_floor: float = REL_FLOOR,
                 names: tuple[str, ...] = (), node: str | None = None) -> None:
        if len(bounds) < 2 or bounds[0] != 0 or any(b <= a for a, b in zip(bounds, bounds[1:])):
            raise ValueError(f"bounds must start at 0 and increase strictly: {bounds}")
        self.axis, self.bounds, self.kind, self.rel_floor = axis, tuple(int(b) for b in bounds), kind, rel_floor
        self.names, self.node = names, node
        n = len(bounds) - 1
        self.samples = 0
        self._cos_sum = np.zeros(n)
        self._cos_count = np.zeros(n, dtype=np.int64)
        self._rmse_sum = np.zeros(n)
        self._worst_cos = np.full(n, np.inf)
        self._worst_rmse = np.full(n, -np.inf)

    @classmethod
    def channels(cls, axis: int, count: int, rel_floor: float = REL_FLOOR) -> PartsAccumulator:
        return cls(axis, tuple(range(count + 1)), "channel", rel_floor)

    def _sums(self, f: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, ...]:
        """Per-part sums ff, qq, fq, dd (float64) and element counts."""
        axis = self.axis % f.ndim
        if f.shape[axis] != self.bounds[-1]:
            raise ValueError(f"axis {axis} has {f.shape[axis]} entries, the parts cover {self.bounds[-1]}")
        fm = np.moveaxis(f, axis, 0).reshape(f.shape[axis], -1)
        qm = np.moveaxis(q, axis, 0).reshape(q.shape[axis], -1)
        rows = np.zeros((4, fm.shape[0]))
        step = max(1, _CHUNK // max(fm.shape[0], 1))
        for start in range(0, fm.shape[1], step):
            a = fm[:, start:start + step].astype(np.float64)
            b = qm[:, start:start + step].astype(np.float64)
            d = b - a
            rows += np.stack([np.sum(a * a, axis=1), np.sum(b * b, axis=1), np.sum(a * b, axis=1),
                              np.sum(d * d, axis=1)])
        parts = np.add.reduceat(rows, np.asarray(self.bounds[:-1]), axis=1)
        counts = np.diff(np.asarray(self.bounds)) * fm.shape[1]
        return parts[0], parts[1], parts[2], parts[3], counts

    def add(self, f: np.ndarray, q: np.ndarray) -> None:
        """One sample: reference ``f`` and target ``q`` of the same shape."""
        f, q = np.asarray(f), np.asarray(q)
        if f.shape != q.shape:
            raise ValueError(f"shape mismatch: reference {list(f.shape)}, target {list(q.shape)}")
        ff, qq, fq, dd, counts = self._sums(f, q)
        n = np.maximum(counts, 1)
        whole_rms = math.sqrt(float(ff.sum()) / max(int(counts.sum()), 1))
        part_rms = np.sqrt(ff / n)
        err_rms = np.sqrt(dd / n)
        near = (part_rms < self.rel_floor * whole_rms) | (part_rms < ABS_FLOOR)
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = err_rms / part_rms
            if whole_rms > 0:
                absolute = err_rms / whole_rms
            else:
                absolute = np.where(err_rms > 0, np.inf, 0.0)
            cos = np.where(qq > 0, fq / np.sqrt(ff * qq), 0.0)
        rmse = np.where(near, absolute, rel)
        cos = np.clip(cos, -1.0, 1.0)
        judged = ~near
        self.samples += 1
        self._rmse_sum += rmse
        self._worst_rmse = np.maximum(self._worst_rmse, rmse)
        self._cos_sum += np.where(judged, cos, 0.0)
        self._cos_count += judged
        self._worst_cos = np.where(judged, np.minimum(self._worst_cos, cos), self._worst_cos)

    def summary(self) -> PartsSummary:
        parts = []
        s = max(self.samples, 1)
        for i, (start, stop) in enumerate(zip(self.bounds, self.bounds[1:])):
            counted = int(self._cos_count[i])
            parts.append(PartMetrics(
                i, start, stop,
                float(self._cos_sum[i] / counted) if counted else None,
                float(self._rmse_sum[i] / s),
                float(self._worst_cos[i]) if counted else None,
                float(self._worst_rmse[i]) if self.samples else 0.0,
                self.samples, self.samples - counted))
        return PartsSummary(self.kind, self.axis, tuple(parts), self.names, self.node)
