"""Errors that reach users.

Every problem with what the user wrote or supplied (spec, model, data) is a ``QuantaccInputError`` that
names the spec file and the key path, so the pytest layer can show one clear paragraph instead of a
traceback. Anything else escaping the engine is a bug in pytest-quantacc, not in the user's input.
"""

from __future__ import annotations

from pathlib import Path


class QuantaccInputError(Exception):
    """A problem with the user's spec, model or data, located by spec file and key path."""

    def __init__(self, spec: Path | str, key: str, problem: str, line: int | None = None) -> None:
        self.spec = str(spec)
        self.key = key
        self.problem = problem
        self.line = line  # 1-based line of the key in the spec file, when the parser could tell
        super().__init__(self.message)

    @property
    def message(self) -> str:
        where = f"{self.spec}: {self.key}" if self.key else self.spec
        return f"{where}: {self.problem}" + (f" (line {self.line})" if self.line else "")


def unexpected(spec: Path | str, key: str, exc: BaseException) -> QuantaccInputError:
    """An error nobody anticipated while evaluating a model, located at the model entry of its spec.

    Reported once per model like an input error (the session goes on), with the underlying error's type and
    first line, so the user sees what failed without a traceback repeated on every item.
    """
    text = str(exc).strip()
    line = text.splitlines()[0][:500] if text else ""
    return QuantaccInputError(spec, key,
                              f"evaluation failed: {type(exc).__name__}" + (f": {line}" if line else "")
                              + " (if your files look right, this is a bug in pytest-quantacc: please report it)")
