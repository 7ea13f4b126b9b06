"""A position in the parsed YAML: every check made through it can name the spec file and the key path.
"""

from __future__ import annotations

import math
import os
import reprlib
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import QuantaccInputError

SHOWN_CHARS = 80  # how much of a user's value a message quotes


FILE, FOLDER, FILE_OR_FOLDER = "a file", "a folder", "a file or a folder"  # what a path key must name


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxtuple, _REPR.maxset = 2, 4, 4, 4, 4
_REPR.maxstring, _REPR.maxlong, _REPR.maxother = SHOWN_CHARS, 40, SHOWN_CHARS


def shown(value: Any) -> str:
    """``repr`` of a user's value, at most about SHOWN_CHARS characters, in time bounded by that length.

    Every message quotes values through this: a YAML alias bomb (a few hundred bytes expanding to billions of
    nodes) or a 10 MB string must not become a message of that size; reprlib stops descending early.
    """
    try:
        text = _REPR.repr(value)
    except Exception:  # an int beyond Python's digit limit for str(), a broken __repr__
        text = f"<{type(value).__name__}>"
    return text if len(text) <= SHOWN_CHARS + 3 else text[:SHOWN_CHARS] + "..."


def larger_than(value: Any, limit: int) -> bool:
    """Whether ``value`` holds more than ``limit`` lists, mappings and scalars, counted without walking past the
    limit: YAML aliases share one object many times, so a few hundred bytes can stand for billions of values,
    and anything that walks or serializes the whole value (``json.dumps``) must ask this first."""
    todo, seen = [value], 0
    while todo:
        v = todo.pop()
        seen += 1
        if seen > limit:
            return True
        if isinstance(v, Mapping):
            todo.extend(v.keys())
            todo.extend(v.values())
        elif isinstance(v, list):
            todo.extend(v)
    return False


def shown_path(p: Path | str) -> str:
    """A path for a message: as it is (it is the user's own location), unless absurdly long."""
    text = str(p)
    return text if len(text) <= 1000 else text[:1000] + "..."


def path_problem(p: Path, want: str = FILE) -> str | None:
    """Why ``p`` cannot be read as ``want`` (FILE, FOLDER or FILE_OR_FOLDER), or None when it can.

    Checked with ``stat`` before anything opens the path: a directory, a device (``/dev/zero``), a FIFO or a
    socket given as a model or data file would otherwise be hashed or parsed, hanging or growing without bound.
    Symlinks are followed (a loop is reported as one).
    """
    try:
        st = os.stat(p)
    except FileNotFoundError:
        return "folder not found" if want == FOLDER else "file not found"
    except OSError as exc:  # ELOOP, EACCES on a parent, ENAMETOOLONG
        return f"cannot be looked up ({exc.strerror or exc})"
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        if want == FILE:
            return "is a directory, not a file"
        return None if os.access(p, os.R_OK | os.X_OK) else "is a folder that cannot be read (permissions)"
    if not stat.S_ISREG(mode):
        what = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
                else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
        return f"is {what}, not a regular file"
    if want == FOLDER:
        return "is a file, not a folder"
    return None if os.access(p, os.R_OK) else "cannot be read (permissions)"


def read_bounded(p: Path, limit: int, fail) -> bytes:
    """The bytes of the regular file ``p``, refusing more than ``limit``; ``fail(problem)`` makes the error.

    Opened non-blocking and checked on the open descriptor, so a FIFO swapped in after a check cannot hang
    the read, and a device cannot feed it forever.
    """
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise fail(f"cannot read {p}: {exc.strerror or exc}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise fail(f"{p} is not a regular file")
    with os.fdopen(fd, "rb") as f:
        if st.st_size > limit:
            raise fail(f"{p} is {st.st_size} bytes; more than the {limit} bytes such a file may have")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise fail(f"{p} is larger than the {limit} bytes such a file may have")
    return data





class Node:
    """A position in the parsed YAML, so every check can name its key path."""

    def __init__(self, spec: Path, key: str, value: Any) -> None:
        self.spec, self.key, self.value = spec, key, value

    def fail(self, problem: str) -> QuantaccInputError:
        return QuantaccInputError(self.spec, self.key, problem)

    def child(self, name: str | int) -> Node:
        key = f"{self.key}[{name}]" if isinstance(name, int) else (f"{self.key}.{name}" if self.key else name)
        return Node(self.spec, key, self.value[name])

    def mapping(self, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> dict[str, Node]:
        if not isinstance(self.value, Mapping):
            raise self.fail(f"expected a mapping, got {kind_of(self.value)}")
        for k in self.value:
            if not isinstance(k, str) or k not in allowed:
                hint = did_you_mean(k, allowed)
                raise Node(self.spec, self._sub(k), None).fail(
                    f"unknown key{hint}; allowed here: {', '.join(allowed)}"
                )
        for k in required:
            if k not in self.value:
                raise Node(self.spec, self._sub(k), None).fail("required key is missing")
        return {k: self.child(k) for k in self.value}

    def _sub(self, k: Any) -> str:
        if not isinstance(k, str):
            k = shown(k)
        elif len(k) > SHOWN_CHARS:
            k = k[:SHOWN_CHARS] + "..."
        return f"{self.key}.{k}" if self.key else k

    def sequence(self) -> list[Node]:
        if not isinstance(self.value, list):
            raise self.fail(f"expected a list, got {kind_of(self.value)}")
        return [self.child(i) for i in range(len(self.value))]

    def string(self) -> str:
        if not isinstance(self.value, str) or not self.value:
            raise self.fail(f"expected a non-empty string, got {kind_of(self.value)}")
        return self.value

    def strings(self) -> tuple[str, ...]:
        return tuple(n.string() for n in self.sequence())

    def boolean(self) -> bool:
        if not isinstance(self.value, bool):
            raise self.fail(f"expected true or false, got {kind_of(self.value)}")
        return self.value

    def number(self, lo: float, hi: float) -> float:
        v = self.value
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and math.isnan(v)):
            raise self.fail(f"expected a number, got {kind_of(v)}")
        if not lo <= v <= hi:
            raise self.fail(f"{shown(v)} is out of range [{lo}, {hi}]")
        try:
            return float(v)
        except OverflowError:  # an integer YAML read exactly, beyond float range (an unbounded upper limit)
            raise self.fail(f"{shown(v)} is beyond the range of a floating-point number") from None

    def integer(self, lo: int) -> int:
        v = self.value
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.fail(f"expected a whole number, got {kind_of(v)}")
        if v < lo:
            raise self.fail(f"{shown(v)} is below the minimum {lo}")
        return v

    def choice(self, options: tuple[str, ...]) -> str:
        if not isinstance(self.value, str) or self.value not in options:
            raise self.fail(f"{shown(self.value)} is not one of {', '.join(options)}"
                            f"{did_you_mean(self.value, options)}")
        return self.value

    def path(self, must_exist: bool = True, want: str = FILE) -> Path:
        """The path this key names, relative to the spec's folder, checked before anything reads it: it is
        ``want`` (FILE, FOLDER or FILE_OR_FOLDER), readable, and neither a device, a FIFO nor a socket."""
        text = self.string()
        if "\0" in text:
            raise self.fail(f"not a usable path: {shown(text)} holds a NUL character")
        try:
            p = (self.spec.parent / text).resolve()
        except (OSError, RuntimeError, ValueError) as exc:  # a symlink loop (RuntimeError before Python 3.13)
            raise self.fail(f"not a usable path {shown(text)} ({exc})") from None
        if must_exist:
            problem = path_problem(p, want)
            if problem is not None:
                if problem.endswith("not found"):
                    raise self.fail(f"{problem}: {shown_path(p)}")
                written = os.path.abspath(self.spec.parent / text)
                where = shown_path(written)
                if written != str(p):
                    where += f" (a link to {shown_path(p)})"
                raise self.fail(f"{where} {problem}")
        return p


def kind_of(v: Any) -> str:
    if v is None:
        return "nothing (null)"
    return f"{type(v).__name__} {shown(v)}" if not isinstance(v, (dict, list)) else type(v).__name__


def did_you_mean(word: Any, options: tuple[str, ...] | list[str]) -> str:
    """`` (did you mean 'x'?)`` for a near miss among ``options``, else empty (only strings can be near misses)."""
    import difflib

    if not isinstance(word, str) or len(word) > 200:
        return ""
    hits = difflib.get_close_matches(word, options, n=1)
    return f" (did you mean {hits[0]!r}?)" if hits else ""
