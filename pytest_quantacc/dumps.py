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
import string
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import QuantaccInputError

FORMATS = ("npy", "npz")
LAYOUTS = ("nchw", "nhwc")
DUMP_MODES = ("fixed",)
PLACEHOLDERS = ("python", "model", "float_model", "calibration", "inputs", "out", "spec_dir")
_INT_KINDS = "iu"


@dataclass(frozen=True)
class QuantParams:
    """``float = (q - zero_point) * scale``; a scale list is per channel (axis 1 after the layout transform)."""

    scale: tuple[float, ...]
    zero_point: tuple[float, ...] = (0.0,)


@dataclass(frozen=True)
class Dequantize:
    """Quantization parameters of integer dumps: a default, and per-tensor entries (names or globs)."""

    default: QuantParams | None = None
    tensors: tuple[tuple[str, QuantParams], ...] = ()

    def for_tensor(self, dump_name: str, tensor: str) -> QuantParams | None:
        """Entries may name the dump tensor or the float tensor it maps to; the first match wins."""
        for pattern, qp in self.tensors:
            if fnmatch.fnmatchcase(dump_name, pattern) or fnmatch.fnmatchcase(tensor, pattern):
                return qp
        return self.default


@dataclass(frozen=True)
class Command:
    """An external command that writes the dumps: argv tokens with ``{placeholder}`` fields, and a timeout."""

    argv: tuple[str, ...]
    timeout: float
    key: str  # spec key path, for error messages


@dataclass(frozen=True)
class DumpSpec:
    """Where one mode's tensors come from instead of ONNX Runtime (spec key ``dumps.<mode>``)."""

    mode: str
    key: str  # spec key path, e.g. models[0].dumps.fixed
    path: Path | None  # None: the command writes into the work folder
    format: str = "npy"
    names: tuple[tuple[str, str], ...] = ()  # (dump name pattern, float tensor name)
    layout: str = "nchw"  # of the dumps
    model_layout: str = "nchw"  # of the float model's tensors
    crop_channels: bool = False
    dequantize: Dequantize = Dequantize()
    command: Command | None = None
    qparams_in_out: str | None = None  # dequantize.file under {out}: read after the command ran


# ---------------------------------------------------------------------------------------------- spec parsing


def _values(v: Any, name: str, positive: bool, fail) -> tuple[float, ...]:
    items = v if isinstance(v, list) else [v]
    if not items or any(isinstance(x, bool) or not isinstance(x, (int, float)) or x != x for x in items):
        raise fail(f"{name}: expected a number or a non-empty list of numbers, got {v!r}")
    if positive and any(x <= 0 for x in items):
        raise fail(f"{name}: a scale must be positive, got {v!r}")
    return tuple(float(x) for x in items)


def _qparams(value: Any, fail) -> QuantParams:
    """``{scale: s, zero_point: z}``; each a number, or a list (one value per channel)."""
    if not isinstance(value, dict) or "scale" not in value or set(value) - {"scale", "zero_point"}:
        raise fail(f"expected {{scale: ..., zero_point: ...}} (zero_point optional), got {value!r}")
    return QuantParams(_values(value["scale"], "scale", True, fail),
                       _values(value.get("zero_point", 0), "zero_point", False, fail))


def read_qparams_file(path: Path, fail) -> tuple[tuple[str, QuantParams], ...]:
    """A JSON or YAML file ``{tensor name or glob: {scale: ..., zero_point: ...}}``."""
    import yaml

    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))  # JSON is YAML
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise fail(f"cannot read {path}: {exc}") from None
    if not isinstance(raw, dict):
        raise fail(f"{path}: expected a mapping of tensor name to {{scale, zero_point}}")
    return tuple((str(k), _qparams(v, lambda why, k=k: fail(f"{path}: {k}: {why}"))) for k, v in raw.items())


def _dequantize(node, deferred_ok: bool) -> tuple[Dequantize, str | None]:
    """The ``dequantize`` key; a ``file`` under ``{out}/`` is read after the command wrote it (returned apart)."""
    m = node.mapping(("scale", "zero_point", "tensors", "file"))
    if "zero_point" in m and "scale" not in m:
        raise m["zero_point"].fail("a default zero_point needs a default scale")
    default = _qparams({k: m[k].value for k in ("scale", "zero_point") if k in m}, node.fail) if "scale" in m else None
    entries: list[tuple[str, QuantParams]] = []
    if "tensors" in m:
        tm = m["tensors"]
        if not isinstance(tm.value, dict):
            raise tm.fail("expected a mapping of tensor name or glob to {scale, zero_point}")
        entries += [(str(k), _qparams(v, tm.child(k).fail)) for k, v in tm.value.items()]
    deferred = None
    if "file" in m:
        text = m["file"].string()
        if text.startswith("{out}/"):
            if not deferred_ok:
                raise m["file"].fail("{out} is only known with 'command'")
            deferred = text.removeprefix("{out}/")
        else:
            entries += read_qparams_file(m["file"].path(), m["file"].fail)
    return Dequantize(default, tuple(entries)), deferred


def _command(node, timeout) -> Command:
    if isinstance(node.value, list):
        argv = node.strings()
    else:
        import shlex

        text = node.string()
        try:
            argv = tuple(shlex.split(text))
        except ValueError as exc:
            raise node.fail(f"cannot split the command: {exc}") from None
    if not argv:
        raise node.fail("the command is empty")
    for token in argv:
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(token) if f is not None]
        except ValueError as exc:
            raise node.fail(f"bad placeholder in {token!r}: {exc}") from None
        for f in fields:
            if f not in PLACEHOLDERS:
                raise node.fail(f"unknown placeholder {{{f}}} in {token!r}; available: "
                                + ", ".join(f"{{{p}}}" for p in PLACEHOLDERS))
    return Command(argv, timeout.number(0.001, 1e7) if timeout is not None else 600.0, node.key)


def _names(node) -> tuple[tuple[str, str], ...]:
    if not isinstance(node.value, dict):
        raise node.fail("expected a mapping of dump tensor name (or glob, or 're:' regex) to float tensor name")
    out = []
    for k in node.value:
        target = node.child(k).string()
        if str(k).startswith("re:"):
            try:
                re.compile(str(k)[3:])
            except re.error as exc:
                raise node.child(k).fail(f"bad regular expression: {exc}") from None
        out.append((str(k), target))
    return tuple(out)


def parse_dumps(node) -> tuple[DumpSpec, ...]:
    """The ``dumps`` key of a model entry (``node`` is the spec parser's position object)."""
    modes = node.mapping(DUMP_MODES)
    specs = []
    for mode, mn in modes.items():
        keys = ("path", "format", "names", "layout", "model_layout", "crop_channels", "dequantize", "command", "timeout")
        m = mn.mapping(keys)
        if "command" not in m and "path" not in m:
            raise mn.fail("give 'path' (a folder of dumps) or 'command' (a tool that writes them)")
        if "command" in m and "path" in m:
            raise m["path"].fail("with 'command' the dumps go to {out} in the work folder; leave 'path' out")
        if "timeout" in m and "command" not in m:
            raise m["timeout"].fail("'timeout' applies to 'command', which is not given")
        deq, deferred = _dequantize(m["dequantize"], "command" in m) if "dequantize" in m else (Dequantize(), None)
        specs.append(DumpSpec(
            mode=mode,
            key=mn.key,
            path=m["path"].path() if "path" in m else None,
            format=m["format"].choice(FORMATS) if "format" in m else "npy",
            names=_names(m["names"]) if "names" in m else (),
            layout=m["layout"].choice(LAYOUTS) if "layout" in m else "nchw",
            model_layout=m["model_layout"].choice(LAYOUTS) if "model_layout" in m else "nchw",
            crop_channels=m["crop_channels"].boolean() if "crop_channels" in m else False,
            dequantize=deq,
            command=_command(m["command"], m.get("timeout")) if "command" in m else None,
            qparams_in_out=deferred,
        ))
    if not specs:
        raise node.fail("name the mode whose tensors come from dumps, e.g. 'fixed'")
    return tuple(specs)


# ------------------------------------------------------------------------------------------------ reading


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
                    name = hit.expand(target)
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
        return arr.astype(np.float32, copy=False)


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

