"""Errors that reach users.

Every problem with what the user wrote or supplied (spec, model, data) is a ``QuantaccInputError`` that
names the spec file and the key path, so the pytest layer can show one clear paragraph instead of a
traceback. Anything else escaping the engine is a bug in pytest-quantacc, not in the user's input.
"""

from __future__ import annotations

from pathlib import Path

MAX_PROBLEM_CHARS = 8000  # a message is read by a person: past this it is cut (values are quoted bounded anyway)


class QuantaccInputError(Exception):
    """A problem with the user's spec, model or data, located by spec file and key path."""

    def __init__(self, spec: Path | str, key: str, problem: str, line: int | None = None) -> None:
        self.spec = str(spec)
        self.key = key if len(key) <= 500 else key[:500] + "..."
        self.problem = problem if len(problem) <= MAX_PROBLEM_CHARS else problem[:MAX_PROBLEM_CHARS] + " [...]"
        self.line = line  # 1-based line of the key in the spec file, when the parser could tell
        super().__init__(self.message)

    @property
    def message(self) -> str:
        where = f"{self.spec}: {self.key}" if self.key else self.spec
        return f"{where}: {self.problem}" + (f" (line {self.line})" if self.line else "")


def unexpected(spec: Path | str, key: str, exc: BaseException, stage: str = "evaluation") -> QuantaccInputError:
    """An error nobody anticipated while evaluating a model (or, per ``stage``, loading or collecting a spec),
    located at the model entry of its spec.

    Reported once per model like an input error (the session goes on), with the underlying error's type and
    first line, so the user sees what failed without a traceback repeated on every item.
    """
    try:
        text = str(exc).strip()
    except Exception:  # a user exception whose __str__ fails
        text = ""
    line = text.splitlines()[0][:500] if text else ""
    return QuantaccInputError(spec, key,
                              f"{stage} failed: {type(exc).__name__}" + (f": {line}" if line else "")
                              + " (if your files look right, this is a bug in pytest-quantacc: please report it)")
