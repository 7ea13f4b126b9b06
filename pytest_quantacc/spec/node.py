"""A position in the parsed YAML: every check made through it can name the spec file and the key path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import QuantaccInputError





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
                hint = did_you_mean(str(k), allowed)
                raise Node(self.spec, self._sub(k), None).fail(
                    f"unknown key{hint}; allowed here: {', '.join(allowed)}"
                )
        for k in required:
            if k not in self.value:
                raise Node(self.spec, self._sub(k), None).fail("required key is missing")
        return {k: self.child(k) for k in self.value}

    def _sub(self, k: Any) -> str:
        return f"{self.key}.{k}" if self.key else str(k)

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
            raise self.fail(f"{v} is out of range [{lo}, {hi}]")
        return float(v)

    def integer(self, lo: int) -> int:
        v = self.value
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.fail(f"expected a whole number, got {kind_of(v)}")
        if v < lo:
            raise self.fail(f"{v} is below the minimum {lo}")
        return v

    def choice(self, options: tuple[str, ...]) -> str:
        if self.value not in options:
            raise self.fail(f"{self.value!r} is not one of {', '.join(options)}{did_you_mean(str(self.value), options)}")
        return self.value

    def path(self, must_exist: bool = True) -> Path:
        text = self.string()
        try:
            p = (self.spec.parent / text).resolve()
            exists = p.exists()
        except (OSError, ValueError) as exc:  # NUL bytes, names too long for the file system
            raise self.fail(f"not a usable path ({exc})") from None
        if must_exist and not exists:
            raise self.fail(f"file not found: {p}")
        return p


def kind_of(v: Any) -> str:
    if v is None:
        return "nothing (null)"
    return f"{type(v).__name__} {v!r}" if not isinstance(v, (dict, list)) else type(v).__name__


def did_you_mean(word: str, options: tuple[str, ...]) -> str:
    import difflib

    hits = difflib.get_close_matches(word, options, n=1)
    return f" (did you mean {hits[0]!r}?)" if hits else ""
