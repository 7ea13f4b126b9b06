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

from .node import FILE, FOLDER, read_bounded, shown

FORMATS = ("npy", "npz")


LAYOUTS = ("nchw", "nhwc")


DUMP_MODES = ("fixed", "offline")  # offline: the board's (or NPU simulator's) dumps stand for the deployable model


PLACEHOLDERS = ("python", "model", "float_model", "calibration", "inputs", "out", "spec_dir")


MAX_QPARAMS_BYTES = 64 << 20  # a dequantize file: per-tensor scales of a large model are a few megabytes


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
        raise fail(f"{name}: expected a number or a non-empty list of numbers, got {shown(v)}")
    if positive and any(x <= 0 for x in items):
        raise fail(f"{name}: a scale must be positive, got {shown(v)}")
    try:
        values = tuple(float(x) for x in items)
    except OverflowError:  # an integer YAML read exactly, beyond float range
        raise fail(f"{name}: {shown(v)} is beyond the range of a floating-point number") from None
    if any(x in (float("inf"), float("-inf")) for x in values):
        raise fail(f"{name}: expected finite numbers, got {shown(v)}")
    return values


def _qparams(value: Any, fail) -> QuantParams:
    """``{scale: s, zero_point: z}``; each a number, or a list (one value per channel)."""
    if not isinstance(value, dict) or "scale" not in value or set(value) - {"scale", "zero_point"}:
        raise fail(f"expected {{scale: ..., zero_point: ...}} (zero_point optional), got {shown(value)}")
    return QuantParams(_values(value["scale"], "scale", True, fail),
                       _values(value.get("zero_point", 0), "zero_point", False, fail))


def read_qparams_file(path: Path, fail) -> tuple[tuple[str, QuantParams], ...]:
    """A JSON or YAML file ``{tensor name or glob: {scale: ..., zero_point: ...}}``, of bounded size (a tool's
    ``{out}`` file is read here unchecked by the spec parser: it may be anything the tool left)."""
    import yaml

    data = read_bounded(path, MAX_QPARAMS_BYTES, fail)
    try:
        raw = yaml.safe_load(data.decode("utf-8"))  # JSON is YAML
    except Exception as exc:  # UnicodeDecodeError, YAMLError, RecursionError, ValueError (a huge integer), ...
        raise fail(f"cannot read {path}: {str(exc)[:500]}") from None
    if not isinstance(raw, dict):
        raise fail(f"{path}: expected a mapping of tensor name to {{scale, zero_point}}")
    return tuple((str(k)[:200], _qparams(v, lambda why, k=k: fail(f"{path}: {shown(k)}: {why}")))
                 for k, v in raw.items())


def _dequantize(node, deferred_ok: bool) -> tuple[Dequantize, str | None]:
    """The ``dequantize`` key; a ``file`` under ``{out}/`` is read after the command wrote it (returned apart)."""
    m = node.mapping(("scale", "zero_point", "tensors", "file"))
    if "zero_point" in m and "scale" not in m:
        raise m["zero_point"].fail("a default zero_point needs a default scale")
    default = None
    if "scale" in m:  # each checked at its own key
        default = QuantParams(_values(m["scale"].value, "scale", True, m["scale"].fail),
                              _values(m["zero_point"].value, "zero_point", False, m["zero_point"].fail)
                              if "zero_point" in m else (0.0,))
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
            entries += read_qparams_file(m["file"].path(want=FILE), m["file"].fail)
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
            pieces = list(string.Formatter().parse(token))
        except ValueError as exc:
            raise node.fail(f"bad placeholder in {shown(token)}: {exc}") from None
        for _, f, spec, conversion in pieces:
            if f is None:
                continue
            if f not in PLACEHOLDERS:
                raise node.fail(f"unknown placeholder {{{f[:40]}}} in {shown(token)}; available: "
                                + ", ".join(f"{{{p}}}" for p in PLACEHOLDERS))
            if spec or conversion:  # substituted literally: '{model:d}' or '{out:>3000000000}' is not a placeholder
                written = "{" + f + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
                raise node.fail(f"placeholder {written[:60]} in {shown(token)}: placeholders take no format "
                                f"spec or conversion (write {{{f}}}; {{{{ and }}}} stand for literal braces)")
    return Command(argv, timeout.number(0.001, 1e7) if timeout is not None else 600.0, node.key)


def substitute(token: str, fields: dict[str, str]) -> str:
    """``token`` with each ``{placeholder}`` replaced by its value, literally (``{{``/``}}`` are braces).

    Not ``str.format``: the values are paths and must never be interpreted, and the parser above has already
    refused format specs and conversions, which ``format`` would honour (a width of 3e9 builds a 3 GB string).
    """
    pieces = string.Formatter().parse(token)
    return "".join(literal + (fields[f] if f is not None else "") for literal, f, _, _ in pieces)


def _names(node) -> tuple[tuple[str, str], ...]:
    if not isinstance(node.value, dict):
        raise node.fail("expected a mapping of dump tensor name (or glob, or 're:' regex) to float tensor name")
    out = []
    for k in node.value:
        target = node.child(k).string()
        if str(k).startswith("re:"):
            try:
                compiled = re.compile(str(k)[3:])
            except re.error as exc:
                raise node.child(k).fail(f"bad regular expression: {exc}") from None
            for number, group in re.findall(r"\\(\d+)|\\g<([^>]*)>", target):
                ref = number or group
                known = int(ref) <= compiled.groups if ref.isdigit() else ref in compiled.groupindex
                if not known:
                    raise node.child(k).fail(f"{shown(target)} refers to group {shown(ref)}, but the expression has "
                                             f"{compiled.groups} group(s)")
        out.append((str(k), target))
    return tuple(out)


def parse_dumps(node) -> tuple[DumpSpec, ...]:
    """The ``dumps`` key of a model entry (``node`` is the spec parser's position object)."""
    modes = node.mapping(DUMP_MODES)
    specs = []
    for mode, mn in modes.items():
        keys = ("path", "format", "names", "layout", "model_layout", "crop_channels", "dequantize", "command",
                "timeout")
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
            path=m["path"].path(want=FOLDER) if "path" in m else None,
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
