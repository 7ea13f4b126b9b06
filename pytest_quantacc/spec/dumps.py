"""The ``dumps`` key: where a mode's tensors come from when a vendor simulator (or any tool) wrote them.

Only what the user wrote and its validation; reading the dumps is :mod:`pytest_quantacc.engine.dump_reader`.
"""

from __future__ import annotations

import fnmatch
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any


FORMATS = ("npy", "npz")


LAYOUTS = ("nchw", "nhwc")


DUMP_MODES = ("fixed", "offline")  # offline: the board's (or NPU simulator's) dumps stand for the deployable model


PLACEHOLDERS = ("python", "model", "float_model", "calibration", "inputs", "out", "spec_dir")


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
    if len(specs) > 1:
        raise node.fail("one mode comes from dumps at a time: fixed (a simulator) or offline (the board)")
    return tuple(specs)
