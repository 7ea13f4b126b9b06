"""pytest-quantacc: layer-by-layer accuracy gates for quantized ONNX models.

The engine works without pytest::

    from pytest_quantacc import load_spec, evaluate
    results = evaluate(load_spec("quantacc.yaml"), base=Path("work"))

The pytest plugin (``pytest --quantacc spec.yaml``) is a thin layer over the same calls. Names are
resolved lazily: pytest imports this package for every run (the plugin lives in it), and numpy, onnx and
onnxruntime must load only when quantacc is actually used.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "QuantaccInputError": "errors",
    "ModelResult": "engine.results",
    "evaluate": "engine.run",
    "evaluate_model": "engine.run",
    "ModelSpec": "spec.model",
    "Spec": "spec.model",
    "load_spec": "spec.parse",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
