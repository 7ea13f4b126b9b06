"""Errors that reach users.

Every problem with what the user wrote or supplied (spec, model, data) is a ``QuantaccInputError`` that
names the spec file and the key path, so the pytest layer can show one clear paragraph instead of a
traceback. Anything else escaping the engine is a bug in pytest-quantacc, not in the user's input.
"""

from __future__ import annotations

from pathlib import Path


class QuantaccInputError(Exception):
    """A problem with the user's spec, model or data, located by spec file and key path."""

    def __init__(self, spec: Path | str, key: str, problem: str) -> None:
        self.spec = str(spec)
        self.key = key
        self.problem = problem
        super().__init__(self.message)

    @property
    def message(self) -> str:
        where = f"{self.spec}: {self.key}" if self.key else self.spec
        return f"{where}: {self.problem}"
