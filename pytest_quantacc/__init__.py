"""pytest-quantacc: layer-by-layer accuracy gates for quantized ONNX models.

The engine works without pytest::

    from pytest_quantacc import load_spec, evaluate
    results = evaluate(load_spec("quantacc.yaml"), base=Path("work"))

The pytest plugin (``pytest --quantacc spec.yaml``) is a thin layer over the same calls.
"""

__version__ = "0.1.0"

from .errors import QuantaccInputError  # noqa: E402
from .evaluate import ModelResult, evaluate, evaluate_model  # noqa: E402
from .spec import ModelSpec, Spec, load_spec  # noqa: E402

__all__ = ["QuantaccInputError", "ModelResult", "ModelSpec", "Spec", "evaluate", "evaluate_model", "load_spec",
           "__version__"]
