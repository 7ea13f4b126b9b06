"""Calibration and evaluation samples: loading, checking against the model's inputs, streaming.

Samples are checked once, up front, so that a name, shape, dtype or NaN problem is reported against the
spec key that named the data, before any model runs. Arrays are then handed out one sample at a time;
nothing downstream needs all samples at once.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import QuantaccInputError

Sample = dict[str, np.ndarray]


@dataclass(frozen=True)
class InputInfo:
    """A model input: name, numpy dtype and shape (ints for fixed dims, None for symbolic ones)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]

    @property
    def batch_free(self) -> bool:
        """True when axis 0 is a batch axis of 1 or symbolic, so samples may omit it."""
        return bool(self.shape) and self.shape[0] in (1, None)

    def shape_text(self) -> str:
        return "[" + ", ".join("?" if d is None else str(d) for d in self.shape) + "]"


@dataclass(frozen=True)
class Samples:
    """Checked samples of one data source; iterate to get one ``{input name: array}`` dict per sample."""

    arrays: tuple[dict[str, np.ndarray], ...]  # one dict per file; axis 0 of each array indexes samples
    adders: tuple[dict[str, bool], ...]  # per file and input: add a leading batch axis of 1
    count: int

    def __iter__(self) -> Iterator[Sample]:
        produced = 0
        for arrays, add in zip(self.arrays, self.adders):
            n = len(next(iter(arrays.values())))
            for i in range(n):
                if produced == self.count:
                    return
                yield {k: (a[i][None] if add[k] else a[i]) for k, a in arrays.items()}
                produced += 1

    def __len__(self) -> int:
        return self.count


def _fits(shape: tuple[int, ...], expected: tuple[int | None, ...]) -> bool:
    return len(shape) == len(expected) and all(e is None or e == s for s, e in zip(shape, expected))


def _read_npz(path: Path, fail) -> dict[str, np.ndarray]:
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise fail(f"cannot read {path.name} as a .npz file: {exc}") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise fail(f"{path.name} holds a single .npy array, not a .npz archive of arrays named by model input")
    try:
        with loaded as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:  # numpy raises zlib, format and attribute errors for damaged members
        raise fail(f"cannot read {path.name} as a .npz file: {type(exc).__name__}: {exc}") from None
    for k, a in arrays.items():
        if not isinstance(a, np.ndarray):
            raise fail(f"{path.name}: member {k!r} is not a numpy array")
    return arrays


def load_samples(path: Path, limit: int | None, inputs: tuple[InputInfo, ...], spec: Path, key: str) -> Samples:
    """Load a ``.npz`` file or a directory of ``.npz`` files (one sample each) and check it fits ``inputs``."""

    def fail(problem: str) -> QuantaccInputError:
        return QuantaccInputError(spec, key, problem)

    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix == ".npz")
        if not files:
            raise fail(f"directory {path} holds no .npz files")
        per_file = [(f, _read_npz(f, fail), True) for f in files]
    else:
        if path.suffix != ".npz":
            raise fail(f"{path.name}: expected a .npz file (one array per model input) or a directory of them")
        per_file = [(path, _read_npz(path, fail), False)]

    names = {i.name for i in inputs}
    checked: list[dict[str, np.ndarray]] = []
    adders: list[dict[str, bool]] = []
    total = 0
    for file, arrays, one_sample in per_file:
        missing = sorted(names - arrays.keys())
        extra = sorted(arrays.keys() - names)
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"no array for model input(s) {', '.join(missing)}")
            if extra:
                parts.append(f"array(s) {', '.join(extra)} match no model input")
            raise fail(f"{file.name}: {'; '.join(parts)}; the model's inputs are "
                       f"{', '.join(f'{i.name} {i.shape_text()}' for i in inputs)}")
        out: dict[str, np.ndarray] = {}
        add: dict[str, bool] = {}
        counts = set()
        for info in inputs:
            arr = arrays[info.name]
            if one_sample:
                arr = arr[None]
            arr, add[info.name] = _check_array(arr, info, file, fail)
            counts.add(len(arr))
            out[info.name] = arr
        if len(counts) != 1:
            raise fail(f"{file.name}: arrays have different sample counts {sorted(counts)}; axis 0 indexes samples")
        n = counts.pop()
        if n == 0:
            raise fail(f"{file.name}: holds no samples (axis 0 has length 0)")
        checked.append(out)
        adders.append(add)
        total += n
        if limit is not None and total >= limit:
            break
    return Samples(tuple(checked), tuple(adders), min(total, limit) if limit else total)


def _check_array(arr: np.ndarray, info: InputInfo, file: Path, fail) -> tuple[np.ndarray, bool]:
    """Check one input's array of samples; returns it in the model's dtype and whether to add a batch axis."""
    where = f"{file.name}: array {info.name!r}"
    if arr.ndim == 0:
        raise fail(f"{where} is a single value; axis 0 must index samples (shape [N, ...])")
    if np.issubdtype(info.dtype, np.floating):
        if not (np.issubdtype(arr.dtype, np.floating)):
            raise fail(f"{where} has dtype {arr.dtype}, but the model input is {info.dtype}; "
                       f"store float data (the harness does not guess a scale for integer pixels)")
        arr = arr.astype(info.dtype, copy=False)
        bad = ~np.isfinite(arr)
        if bad.any():
            sample = int(np.argwhere(bad.reshape(len(arr), -1).any(axis=1))[0][0])
            kind = "NaN" if np.isnan(arr).any() else "Inf"
            raise fail(f"{where} contains {kind} (first in sample {sample}); calibration and metrics need finite data")
    elif np.issubdtype(info.dtype, np.integer) or info.dtype == np.bool_:
        if arr.dtype != info.dtype and not (np.issubdtype(arr.dtype, np.integer) and np.issubdtype(info.dtype, np.integer)):
            raise fail(f"{where} has dtype {arr.dtype}, but the model input is {info.dtype}")
        if arr.dtype != info.dtype:
            cast = arr.astype(info.dtype)
            if not np.array_equal(cast, arr):
                raise fail(f"{where}: values do not fit the model input's dtype {info.dtype}")
            arr = cast
    sample_shape = tuple(arr.shape[1:])
    if _fits(sample_shape, info.shape):
        return arr, False
    if info.batch_free and _fits(sample_shape, info.shape[1:]):
        return arr, True
    raise fail(f"{where} has samples of shape {list(sample_shape)} (array shape {list(arr.shape)}), "
               f"which does not fit the model input {info.name} {info.shape_text()}; axis 0 indexes samples")
