"""The entry point of the engine: spec model -> conversion -> the backend that fits -> results, without pytest.

``evaluate_model`` is what a pytest item asks for (once per model, shared by that model's items) and what a
script calls directly; it dispatches to the ONNX Runtime backend or, for ``dumps`` specs, the dump backend.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import onnx

from ..convert.adopt import adopt
from ..convert.prepare import PreparedModel, prepare
from ..convert.quantize import quantize
from ..convert.workdir import Artifacts
from ..errors import QuantaccInputError
from ..graph.foreign import ForeignLayers, foreign_layers, match_foreign, quantization_kind
from ..samples import Samples
from ..spec.model import ModelSpec, Spec
from .ort_backend import simulate
from .progress import Progress, timed
from .results import ForeignModel, ModelResult


def evaluate_model(mspec: ModelSpec, base: Path, threads: int = 0, memory_budget: int | None = None,
                   prepared: PreparedModel | None = None, progress: Progress | None = None) -> ModelResult:
    """Convert, simulate and compare one spec model. Input problems come back in ``error``, not raised.

    ``memory_budget`` (bytes) bounds the compared tensors held at once; None: a quarter of the memory available.
    ``prepared``: the model's float reference and samples when the caller already has them (the cache does).
    ``progress``: told when conversion, evaluation and the own-error pass start and end (:mod:`.progress`).
    """
    if mspec.dumps and mspec.dumps[0].mode == "offline":
        from .dump_backend import evaluate_board

        return evaluate_board(mspec, base, threads, memory_budget, prepared)
    if mspec.dumps:
        from .dump_backend import evaluate_dumps

        return evaluate_dumps(mspec, base, threads, memory_budget)
    if mspec.quantized is not None:
        return evaluate_foreign(mspec, base, threads, memory_budget, prepared)
    seconds: dict[str, float] = {}
    try:
        t0 = time.perf_counter()
        with timed(progress, "converting"):
            prepared = prepared or prepare(mspec, base)
            calib, evals = prepared.calibration, prepared.evaluation
            artifacts = quantize(mspec, prepared.float_model, calib, base)
        seconds["convert"] = time.perf_counter() - t0
    except QuantaccInputError as exc:
        return ModelResult(mspec, error=exc, seconds=seconds)
    t0 = time.perf_counter()
    try:
        with timed(progress, f"evaluating {len(evals)} samples"):
            if mspec.quantization.format == "qoperator":
                result = outputs_only(mspec, artifacts, evals, threads, memory_budget, FORMAT_QOPERATOR)
            else:
                result = simulate(mspec, artifacts, evals, threads, memory_budget, progress=progress)
    except Exception as exc:
        if not type(exc).__module__.startswith("onnxruntime"):
            raise
        # ONNX Runtime refusing the data at run time (a Gather index beyond its table, a shape only some samples
        # have): the models loaded and calibrated, so it is the evaluation data that does not fit them.
        key = "evaluation.data" if mspec.evaluation != mspec.calibration else "calibration.data"
        text = str(exc).strip().splitlines()
        return ModelResult(mspec, artifacts, error=mspec.error(key, f"ONNX Runtime failed running the models on "
                           f"these samples: {type(exc).__name__}: {text[0][:500] if text else ''}"), seconds=seconds)
    seconds["simulate"] = time.perf_counter() - t0
    if "original" in mspec.modes:
        from .pipeline_check import check_pipeline

        try:
            result = replace(result, pipeline=check_pipeline(mspec, artifacts.float_model, evals, threads))
        except QuantaccInputError as exc:
            return ModelResult(mspec, artifacts, error=exc, seconds=seconds)
    return replace(result, seconds=seconds)


QOPERATOR_OUTPUTS_ONLY = ("a QOperator model computes with fused integer kernels (QLinearConv, ...) that expose no "
                          "fake-quant tensors to compare layer by layer: only its outputs are compared with the float "
                          "model's (float vs offline); give a QDQ model for the layer-by-layer gate")
FORMAT_QOPERATOR = ("quantization.format is qoperator: ONNX Runtime wrote fused integer kernels (QLinearConv, ...) "
                    "that expose no fake-quant tensors, so only the outputs are compared (float vs offline); use "
                    "format: qdq for the layer-by-layer gate")


def outputs_only(mspec: ModelSpec, artifacts: Artifacts, evals: Samples, threads: int, memory_budget: int | None,
                 why: str) -> ModelResult:
    """A QOperator model: float vs offline on the model outputs; ``quantized_layers`` counts its integer kernels."""
    kind = quantization_kind(onnx.load(str(artifacts.fixed_model), load_external_data=False))
    result = simulate(mspec, artifacts, evals, threads, memory_budget, ForeignLayers((), {}), {"float", "offline"})
    kernels = sum(n for op, n in kind.ops if op not in ("QuantizeLinear", "DequantizeLinear"))
    return replace(result, outputs_only=why, quantized_layers=kernels)


def evaluate_foreign(mspec: ModelSpec, base: Path, threads: int = 0, memory_budget: int | None = None,
                     prepared: PreparedModel | None = None) -> ModelResult:
    """The user's own quantized model (``quantized:``) in place of our conversion, compared the same way.

    The float model is prepared as always; the QDQ model's tensors are paired with it by structure
    (graph/foreign.py, the first evaluation sample deciding where structure cannot) and the pairs become the
    layers the ONNX Runtime backend compares. A QOperator model is compared on its outputs only.
    """
    seconds: dict[str, float] = {}
    try:
        t0 = time.perf_counter()
        prepared = prepared or prepare(mspec, base)
        evals = prepared.evaluation
        artifacts, kind = adopt(mspec, prepared.float_model)
        seconds["convert"] = time.perf_counter() - t0
    except QuantaccInputError as exc:
        return ModelResult(mspec, error=exc, seconds=seconds)
    t0 = time.perf_counter()
    if kind.kind == "qoperator":
        if not {"float", "offline"} <= set(mspec.modes):
            return ModelResult(mspec, artifacts, error=mspec.error("modes", f"{mspec.quantized.name} is a "
                               f"{kind.describe()}: it is compared on its outputs, float vs offline; list both modes"),
                               seconds=seconds)
        result = outputs_only(mspec, artifacts, evals, threads, memory_budget, QOPERATOR_OUTPUTS_ONLY)
        info = ForeignModel(mspec.quantized, kind.describe())
    else:
        float_model = onnx.load(str(artifacts.float_model), load_external_data=False)
        qdq_model = onnx.load(str(artifacts.fixed_model))
        match = match_foreign(float_model, qdq_model, next(iter(evals), None))
        result = simulate(mspec, artifacts, evals, threads, memory_budget,
                          foreign_layers(float_model, qdq_model, match))
        info = ForeignModel(mspec.quantized, kind.describe(),
                            tuple((u.qdq_tensor, u.reason) for u in match.unmatched))
    seconds["simulate"] = time.perf_counter() - t0
    return replace(result, foreign=info, seconds=seconds)


def evaluate(spec: Spec, base: Path, threads: int = 0, memory_budget: int | None = None) -> list[ModelResult]:
    """Evaluate every valid model of a spec (entries that failed validation are in ``spec.broken``)."""
    return [evaluate_model(m, base, threads, memory_budget) for m in spec.models]
