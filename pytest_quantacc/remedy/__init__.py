"""What to do about a failing model: root-cause statistics, verified remedies, the fix file.

``from pytest_quantacc.remedy import deepen, patch_yaml, write_fix`` (docs/diagnosis.md) resolves lazily, so
importing one module of this package does not import the others.
"""

from __future__ import annotations

import importlib

_EXPORTS = {"deepen": "search", "DEFAULT_ATTEMPTS": "search", "patch_yaml": "fixfile", "write_fix": "fixfile",
            "fix_path": "fixfile"}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
