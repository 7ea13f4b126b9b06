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


class Rows:
    """One input's samples (axis 0 of an array), read one at a time and cast to the model's dtype.

    An uncompressed ``.npz`` member is read straight from the file, sample by sample, so the evaluation data
    never has to fit in memory at once (peak memory stays flat in the number of samples); a compressed member
    is inflated only as far as the samples a ``limit`` lets be read (``array`` then holds a prefix of the
    ``shape[0]`` stored samples); anything else (Fortran order, a single-sample file) is loaded as an array.
    """

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, array: np.ndarray | None = None,
                 file: Path | None = None, offset: int = 0, cast: np.dtype | None = None) -> None:
        self.shape, self.dtype, self.cast = tuple(shape), np.dtype(dtype), cast
        self._array, self._file, self._offset = array, file, offset

    @classmethod
    def of(cls, array: np.ndarray) -> Rows:
        return cls(array.shape, array.dtype, array=array)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def streamed(self) -> bool:
        """True when samples are read from the file one at a time rather than held in memory."""
        return self._array is None

    def with_cast(self, dtype: np.dtype) -> Rows:
        return Rows(self.shape, self.dtype, self._array, self._file, self._offset, np.dtype(dtype))

    def load(self) -> np.ndarray:
        """The whole array (for single-sample files, which are small)."""
        if self._array is not None:
            return self._array
        count = int(np.prod(self.shape, dtype=np.int64))
        return np.fromfile(self._file, dtype=self.dtype, count=count, offset=self._offset).reshape(self.shape)

    def raw(self, i: int) -> np.ndarray:
        """Sample ``i`` as stored."""
        if self._array is not None:
            return self._array[i, ...]  # an ndarray even for rank-0 samples (``[i]`` gives a numpy scalar)
        size = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        with open(self._file, "rb") as f:
            f.seek(self._offset + i * size)
            data = f.read(size)
        return np.frombuffer(data, dtype=self.dtype).reshape(self.shape[1:])

    def __getitem__(self, i: int) -> np.ndarray:
        row = self.raw(i)
        return row.astype(self.cast) if self.cast is not None and row.dtype != self.cast else row


@dataclass(frozen=True)
class Samples:
    """Checked samples of one data source; iterate to get one ``{input name: array}`` dict per sample."""

    arrays: tuple[dict[str, Rows], ...]  # one dict per file; axis 0 indexes samples
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

    def largest_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per input, the shape of its largest sample as fed, known without reading any sample (for planning)."""
        best: dict[str, tuple[int, ...]] = {}
        for arrays, add in zip(self.arrays, self.adders):
            for k, rows in arrays.items():
                shape = ((1,) if add[k] else ()) + tuple(rows.shape[1:])
                if k not in best or np.prod(shape, dtype=np.int64) > np.prod(best[k], dtype=np.int64):
                    best[k] = shape
        return best


def _fits(shape: tuple[int, ...], expected: tuple[int | None, ...]) -> bool:
    return len(shape) == len(expected) and all(e is None or e == s for s, e in zip(shape, expected))


def _npy_header(f) -> tuple[tuple[int, ...], bool, np.dtype] | None:
    """Shape, Fortran order and dtype of the ``.npy`` data at ``f``'s position; None for header versions other
    than 1.0 and 2.0 (numpy's own reader then decides)."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(f)
    return None


def _stored_member(path: Path, info: zipfile.ZipInfo) -> Rows | None:
    """Rows read in place from an uncompressed C-order ``.npy`` member, or None when that is not possible."""
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        if len(local) != 30 or local[:4] != b"PK\x03\x04":
            return None
        start = (info.header_offset + 30 + int.from_bytes(local[26:28], "little")
                 + int.from_bytes(local[28:30], "little"))
        f.seek(start)
        header = _npy_header(f)
        if header is None:
            return None
        shape, fortran, dtype = header
        if fortran or dtype.hasobject or not shape:
            return None
        data = f.tell()
    if data - start + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize > info.file_size:
        return None  # truncated member: let numpy's reader report it
    return Rows(tuple(shape), dtype, file=path, offset=data)


def _inflated_prefix(z: np.lib.npyio.NpzFile, member: str, limit: int) -> Rows | None:
    """The first ``limit`` samples of a compressed C-order member, inflating no more of it than they take, so
    memory follows the samples read, not the member's size (deflate turns a megabyte into gigabytes)."""
    with z.zip.open(member) as f:
        header = _npy_header(f)
        if header is None:
            return None
        shape, fortran, dtype = header
        if fortran or dtype.hasobject or not shape or shape[0] <= limit:
            return None  # no saving: numpy's own reader checks and loads it
        rows = limit
        size = rows * int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        data = f.read(size)
    if len(data) != size:
        return None  # truncated member: let numpy's reader report it
    return Rows(tuple(shape), dtype, array=np.frombuffer(data, dtype=dtype).reshape((rows, *shape[1:])))


def _read_npz(path: Path, fail, limit: int | None = None) -> dict[str, Rows]:
    """The arrays of a .npz, each as ``Rows``; with ``limit``, no member is read beyond its first ``limit`` rows."""
    if not path.is_file():  # np.load would block on a FIFO and read a device forever (the spec parser checks too)
        raise fail(f"{path.name} is not a regular file")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, NotImplementedError) as exc:
        raise fail(f"cannot read {path.name} as a .npz file: {exc}") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise fail(f"{path.name} holds a single .npy array, not a .npz archive of arrays named by model input")
    arrays: dict[str, Rows] = {}
    try:
        with loaded as z:
            members = {i.filename: i for i in z.zip.infolist()}
            for k in z.files:
                info = members.get(f"{k}.npy")
                lazy = _stored_member(path, info) if info is not None else None
                if lazy is None and info is not None and limit is not None and info.compress_type != zipfile.ZIP_STORED:
                    lazy = _inflated_prefix(z, info.filename, limit)
                if lazy is None:
                    a = z[k]
                    if not isinstance(a, np.ndarray):
                        raise fail(f"{path.name}: member {k!r} is not a numpy array")
                    lazy = Rows.of(a)
                arrays[k] = lazy
    except QuantaccInputError:
        raise
    except Exception as exc:  # numpy raises zlib, format and attribute errors for damaged members
        raise fail(f"cannot read {path.name} as a .npz file: {type(exc).__name__}: {exc}") from None
    return arrays


def load_samples(path: Path, limit: int | None, inputs: tuple[InputInfo, ...], spec: Path, key: str) -> Samples:
    """Load a ``.npz`` file or a directory of ``.npz`` files (one sample each) and check it fits ``inputs``."""

    def fail(problem: str) -> QuantaccInputError:
        return QuantaccInputError(spec, key, problem)

    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix == ".npz")
        if not files:
            raise fail(f"directory {path} holds no .npz files")
        odd = next((f for f in files if not f.is_file()), None)
        if odd is not None:
            raise fail(f"{odd.name} in {path} is not a regular file (every .npz in a data folder is one sample file)")
        per_file = [(f, _read_npz(f, fail), True) for f in files[:limit]]  # one sample per file
    else:
        if path.suffix != ".npz":
            raise fail(f"{path.name}: expected a .npz file (one array per model input) or a directory of them")
        per_file = [(path, _read_npz(path, fail, limit), False)]

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
            if one_sample:  # the file is one sample: its arrays have no sample axis
                arr = Rows.of(arr.load()[None])
            arr, add[info.name] = _check_array(arr, info, file, fail, None if limit is None else limit - total)
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


def _check_array(arr: Rows, info: InputInfo, file: Path, fail, fed: int | None = None) -> tuple[Rows, bool]:
    """Check one input's samples, one sample at a time (the first ``fed`` of them: those a limit lets through);
    returns them cast to the model's dtype and whether to add a batch axis."""
    where = f"{file.name}: array {info.name!r}"
    if len(arr.shape) == 0:
        raise fail(f"{where} is a single value; axis 0 must index samples (shape [N, ...])")
    sample_shape = tuple(arr.shape[1:])
    if _fits(sample_shape, info.shape):
        add = False
    elif info.batch_free and _fits(sample_shape, info.shape[1:]):
        add = True
    else:
        raise fail(f"{where} has samples of shape {list(sample_shape)} (array shape {list(arr.shape)}), "
                   f"which does not fit the model input {info.name} {info.shape_text()}; axis 0 indexes samples")
    if np.issubdtype(info.dtype, np.floating):
        if not np.issubdtype(arr.dtype, np.floating):
            raise fail(f"{where} has dtype {arr.dtype}, but the model input is {info.dtype}; "
                       f"store float data (the harness does not guess a scale for integer pixels)")
        arr = arr.with_cast(info.dtype)
        for i in range(min(len(arr), fed) if fed is not None else len(arr)):
            row = arr[i]
            if not np.isfinite(row).all():
                kind = "NaN" if np.isnan(row).any() else "Inf"
                raise fail(f"{where} contains {kind} (first in sample {i}); calibration and metrics need finite data")
    elif np.issubdtype(info.dtype, np.integer) or info.dtype == np.bool_:
        if arr.dtype != info.dtype and not (np.issubdtype(arr.dtype, np.integer)
                                            and np.issubdtype(info.dtype, np.integer)):
            raise fail(f"{where} has dtype {arr.dtype}, but the model input is {info.dtype}")
        if arr.dtype != info.dtype:
            for i in range(min(len(arr), fed) if fed is not None else len(arr)):
                raw = arr.raw(i)
                if not np.array_equal(raw.astype(info.dtype), raw):
                    raise fail(f"{where}: values do not fit the model input's dtype {info.dtype}")
            arr = arr.with_cast(info.dtype)
    return arr, add
