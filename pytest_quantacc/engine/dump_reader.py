"""Per-layer tensor dumps written by a vendor simulator (or any external tool), read as a mode's tensors.

NPU toolchains dump every layer of their quantized model, but not the way ONNX Runtime shows tensors: names
follow the vendor's conventions, tensors are channels-last with the channel dimension padded to the NPU's
alignment (16 or 32), and values are the integers the chip computes. This module turns such a dump into
float tensors shaped like the float model's, so the usual layer-by-layer gate applies unchanged:

1. name: dump tensor name -> float-model tensor name (exact, glob, or ``re:`` regex with ``\\1`` groups),
2. layout: NHWC -> NCHW (channels-last dumps, channels-first model; or the reverse) for rank 3 and more,
3. alignment: the padded channel dimension cropped to the float tensor's size (``crop_channels``),
4. dequantization of integer dumps: ``(q - zero_point) * scale``, per tensor, from the spec or a file.

A problem with a dump (unreadable file, integer dump without quantization parameters, a shape that does not
fit after the transform) is an input error naming the file and the spec key.
"""

from __future__ import annotations

import fnmatch
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import QuantaccInputError
from ..spec.dumps import DumpSpec, QuantParams
from ..spec.node import shown

_INT_KINDS = "iu"


def _natural(p: Path) -> list[Any]:
    """sample_2 before sample_10, as the tools that write numbered folders intend."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]


class DumpReader:
    """The dumped samples of one mode, in evaluation order; ``load(i)`` returns float tensors by float name."""

    def __init__(self, dspec: DumpSpec, folder: Path, spec_path: Path, float_tensors: list[str],
                 node_outputs: dict[str, str]) -> None:
        self.dspec, self.folder, self.spec_path = dspec, folder, spec_path
        self._tensors = set(float_tensors)
        self._node_outputs = node_outputs  # node name -> its only output, so dumps may be named by layer
        if not folder.is_dir():
            raise self.fail(f"dump folder not found: {folder}")
        if dspec.format == "npz":
            self.samples = sorted((p for p in folder.iterdir() if p.suffix == ".npz"), key=_natural)
            what = ".npz files (one per sample)"
        else:
            self.samples = sorted((p for p in folder.iterdir() if p.is_dir()), key=_natural)
            what = "sample folders of .npy files"
        if not self.samples:
            raise self.fail(f"{folder} holds no {what}")
        odd = next((p for p in self.samples if dspec.format == "npz" and not p.is_file()), None)
        if odd is not None:  # a folder, a FIFO or a device named like a dump: np.load would fail, block or never end
            raise self.fail(f"{odd} is not a regular file (every .npz in the dump folder is one sample's dump)")
        self.unmatched: set[str] = set()

    def fail(self, problem: str) -> QuantaccInputError:
        return QuantaccInputError(self.spec_path, self.dspec.key, problem)

    def target(self, dump_name: str) -> str | None:
        """The float tensor a dump tensor stands for, or None when it names nothing in the float model."""
        name = dump_name
        for pattern, target in self.dspec.names:
            if pattern.startswith("re:"):
                hit = re.fullmatch(pattern[3:], dump_name)
                if hit:
                    try:
                        name = hit.expand(target)
                    except (re.error, IndexError) as exc:  # the parser checks group references; escapes too
                        raise QuantaccInputError(self.spec_path, f"{self.dspec.key}.names",
                                                 f"{shown(target)} for {shown(pattern)}: {exc}") from None
                    break
            elif fnmatch.fnmatchcase(dump_name, pattern):
                name = target
                break
        if name in self._tensors:
            return name
        return self._node_outputs.get(name)

    def load(self, index: int, expected: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
        """Sample ``index``'s dumped tensors for the float tensors in ``expected``, as float32 in those shapes.

        Only those dumps are read (a pass under a memory budget asks for some layers at a time); every dump
        name is still checked against the float model, so names that match nothing are reported.
        """
        sample = self.samples[index]
        out: dict[str, np.ndarray] = {}

        def take(dump_name: str, read, label: str) -> None:
            tensor = self.target(dump_name)
            if tensor is None:
                self.unmatched.add(dump_name)
            elif tensor in expected:
                out[tensor] = self.transform(read(), expected[tensor], dump_name, tensor, label)

        if self.dspec.format == "npz":
            try:
                with np.load(sample, allow_pickle=False) as z:
                    for k in z.files:
                        take(k, lambda k=k: z[k], f"{sample}[{k}]")
            except (OSError, ValueError, zipfile.BadZipFile, EOFError, AttributeError) as exc:
                raise self.fail(f"cannot read dump {sample}: {exc}") from None
            return out
        for f in sorted(sample.glob("*.npy")):
            if not f.is_file():
                raise self.fail(f"{f} is not a regular file (every .npy in a sample folder is one dumped tensor)")
            try:
                take(f.stem, lambda f=f: np.load(f, allow_pickle=False), str(f))
            except (OSError, ValueError, EOFError) as exc:
                raise self.fail(f"cannot read dump {f}: {exc}") from None
        return out

    def transform(self, arr: np.ndarray, shape: tuple[int, ...], dump_name: str, tensor: str,
                  label: str) -> np.ndarray:
        d = self.dspec
        if not (arr.dtype.kind in _INT_KINDS or arr.dtype.kind == "f"):
            raise self.fail(f"{label}: dtype {arr.dtype} is not supported (integer or float dumps only)")
        if arr.ndim == len(shape) - 1 and shape and shape[0] == 1:
            arr = arr[None]  # a dump without the batch axis
        if arr.ndim >= 3 and d.layout != d.model_layout:
            arr = np.moveaxis(arr, -1, 1) if d.layout == "nhwc" else np.moveaxis(arr, 1, -1)
        ch = 1 if d.model_layout == "nchw" or arr.ndim < 3 else arr.ndim - 1  # the channel axis
        if d.crop_channels and arr.ndim == len(shape) and arr.ndim >= 2 and arr.shape[ch] > shape[ch] \
                and all(a == s for i, (a, s) in enumerate(zip(arr.shape, shape)) if i != ch):
            arr = arr[(slice(None),) * ch + (slice(0, shape[ch]),)]
        if arr.shape != tuple(shape):
            how = f"layout {d.layout}" + (f" to {d.model_layout}" if d.model_layout != "nchw" else "") + (
                ", channels cropped" if d.crop_channels else "")
            raise self.fail(f"{label}: dumped shape {list(arr.shape)} ({how}) does not fit the float tensor "
                            f"{tensor} {list(shape)}" + ("" if d.crop_channels or d.layout != d.model_layout else
                                                         "; set layout: nhwc and/or crop_channels: true?"))
        if arr.dtype.kind in _INT_KINDS:
            qp = d.dequantize.for_tensor(dump_name, tensor)
            if qp is None:
                raise self.fail(f"{label}: integer dump ({arr.dtype}) but no scale/zero_point for it under "
                                f"dequantize (by default, in tensors, or in file)")
            return _dequantize_array(arr, qp, ch, label, self.fail)
        arr = arr.astype(np.float32, copy=False)
        if not np.isfinite(arr).all():  # bad data, not a quantization error: rmse would be NaN and blame the scale
            kind = "NaN" if np.isnan(arr).any() else "Inf"
            raise self.fail(f"{label}: the dump of {tensor} contains {kind} (bad data in the dump file; a float "
                            f"dump must hold finite values)")
        return arr


def _dequantize_array(arr: np.ndarray, qp: QuantParams, ch: int, label: str, fail) -> np.ndarray:
    channels = arr.shape[ch] if arr.ndim >= 2 else 1
    view = [1] * arr.ndim
    if arr.ndim >= 2:
        view[ch] = -1
    params = []
    for values, name in ((qp.scale, "scale"), (qp.zero_point, "zero_point")):
        v = np.asarray(values, dtype=np.float64)
        if v.size == 1:
            params.append(v.reshape(()))
        elif v.size == channels:
            params.append(v.reshape(view))
        else:
            raise fail(f"{label}: {v.size} {name} values, but the tensor has {channels} channels (axis {ch})")
    scale, zp = params
    return ((arr.astype(np.float64) - zp) * scale).astype(np.float32)


def write_inputs(samples, folder: Path) -> int:
    """The evaluation samples as ``sample_0000.npz`` ... (one array per model input), for an external command."""
    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    for n, sample in enumerate(samples, start=1):
        np.savez(folder / f"sample_{n - 1:04d}.npz", **sample)
    return n
