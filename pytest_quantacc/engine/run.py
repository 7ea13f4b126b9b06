"""The entry point of the engine: spec model -> conversion -> the backend that fits -> results, without pytest.

``evaluate_model`` is what a pytest item asks for (once per model, shared by that model's items) and what a
script calls directly; it dispatches to the ONNX Runtime backend or, for ``dumps`` specs, the dump backend.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from ..convert.prepare import model_inputs, prepare_float
from ..convert.quantize import quantize
from ..errors import QuantaccInputError
from ..samples import load_samples
from ..spec.model import ModelSpec, Spec
from .ort_backend import simulate
from .results import ModelResult



def evaluate_model(mspec: ModelSpec, base: Path, threads: int = 0, memory_budget: int | None = None) -> ModelResult:
    """Convert, simulate and compare one spec model. Input problems come back in ``error``, not raised.

    ``memory_budget`` (bytes) bounds the compared tensors held at once; None: a quarter of the memory available.
    """
    if mspec.dumps:
        from .dump_backend import evaluate_dumps

        return evaluate_dumps(mspec, base, threads, memory_budget)
    seconds: dict[str, float] = {}
    try:
        t0 = time.perf_counter()
        float_path = prepare_float(mspec, base)
        inputs = model_inputs(float_path)
        calib = load_samples(mspec.calibration.path, mspec.calibration.limit, inputs, mspec.spec_path,
                             f"{mspec.key}.calibration.data")
        evals = calib if mspec.evaluation == mspec.calibration else load_samples(
            mspec.evaluation.path, mspec.evaluation.limit, inputs, mspec.spec_path, f"{mspec.key}.evaluation.data")
        artifacts = quantize(mspec, float_path, calib, base)
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
