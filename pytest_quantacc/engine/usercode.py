"""Importing the user's own Python files (preprocessing hooks, accuracy metrics).

They live in the user's folders, which may be read-only, shared or under version control: importing them must
not leave ``__pycache__/`` behind, so bytecode writing is off while they are executed.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def import_user_module(name: str, path: Path, register: bool = False) -> ModuleType:
    """Execute ``path`` as module ``name`` without writing bytecode; ``register`` also puts it in sys.modules
    (for code that pickles or looks itself up by name). Whatever the module raises propagates."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path.name} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    if register:
        sys.modules[name] = module
    before = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = before
    return module
