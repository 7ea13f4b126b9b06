"""The entry point of the engine: spec model -> conversion -> the backend that fits -> results, without pytest.

``evaluate_model`` is what a pytest item asks for (once per model, shared by that model's items) and what a
script calls directly; it dispatches to the ONNX Runtime backend or, for ``dumps`` specs, the dump backend.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from ..convert.prepare import PreparedModel, prepare
from ..convert.quantize import quantize
from ..errors import QuantaccInputError
from ..spec.model import ModelSpec, Spec
from .ort_backend import simulate
from .results import ModelResult





def evaluate_model(mspec: ModelSpec, base: Path, threads: int = 0, memory_budget: int | None = None,
                   prepared: PreparedModel | None = None) -> ModelResult:
    """Convert, simulate and compare one spec model. Input problems come back in ``error``, not raised.

    ``memory_budget`` (bytes) bounds the compared tensors held at once; None: a quarter of the memory available.
    ``prepared``: the model's float reference and samples when the caller already has them (the cache does).
    """
    if mspec.dumps:
        from .dump_backend import evaluate_dumps

        return evaluate_dumps(mspec, base, threads, memory_budget)
    seconds: dict[str, float] = {}
    try:
        t0 = time.perf_counter()
        prepared = prepared or prepare(mspec, base)
        calib, evals = prepared.calibration, prepared.evaluation
        artifacts = quantize(mspec, prepared.float_model, calib, base)
        seconds["convert"] = time.perf_counter() - t0
    except QuantaccInputError as exc:
        return ModelResult(mspec, error=exc, seconds=seconds)
    t0 = time.perf_counter()
    result = simulate(mspec, artifacts, evals, threads, memory_budget)
    seconds["simulate"] = time.perf_counter() - t0
    if "original" in mspec.modes:
        from .pipeline_check import check_pipeline

        try:
            result = replace(result, pipeline=check_pipeline(mspec, artifacts.float_model, evals, threads))
        except QuantaccInputError as exc:
            return ModelResult(mspec, artifacts, error=exc, seconds=seconds)
    return replace(result, seconds=seconds)


def evaluate(spec: Spec, base: Path, threads: int = 0, memory_budget: int | None = None) -> list[ModelResult]:
    """Evaluate every valid model of a spec (entries that failed validation are in ``spec.broken``)."""
    return [evaluate_model(m, base, threads, memory_budget) for m in spec.models]
