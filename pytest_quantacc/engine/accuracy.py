"""Task accuracy of the float and the deployable (offline) model on the labelled evaluation set.

Layer metrics locate quantization damage; the question a release is signed off on is "how much accuracy
did we lose" (vendors' "keep the loss within 1%"). This runs the float model and the deployable integer
model (``fixed.onnx`` with all ONNX Runtime optimizations, as shipped) over the evaluation samples and
scores one output of each against the labels. It is a separate pass from the layer comparison on purpose:
it reads one output only, and keeps the layer engine unchanged; it runs only for specs that ask for it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from ..convert.workdir import Artifacts
from ..graph.structure import FLOAT_TYPES, elem_types
from ..samples import Samples
from ..spec.model import ModelSpec
from ..spec.node import shown
from .results import AccuracyResult
from .runner import Runner
from .usercode import import_user_module


def load_labels(mspec: ModelSpec, samples: int) -> np.ndarray:
    """The first ``samples`` labels (the evaluation ``limit`` applies to labels as to data)."""
    path = mspec.evaluation.labels
    key = "evaluation.labels"
    try:
        labels = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise mspec.error(key, f"{path.name} is not a readable .npy array ({exc})") from None
    if not isinstance(labels, np.ndarray) or labels.ndim == 0:
        raise mspec.error(key, f"{path.name}: expected an array with one label per sample (.npy)")
    if mspec.accuracy is not None and mspec.accuracy.function is None and labels.dtype.kind not in "iu":
        # top1 compares arg-max indices with labels: strings or floats would compare unequal (0% accuracy)
        raise mspec.error(key, f"{path.name} holds {labels.dtype} labels; top1 needs integer class indices")
    if labels.dtype.kind not in "biuf":
        raise mspec.error(key, f"{path.name} holds {labels.dtype} labels; a metric gets numbers (class indices "
                               f"or values)")
    if len(labels) < samples:
        raise mspec.error(key, f"{path.name} holds {len(labels)} labels but the evaluation data has {samples} samples")
    return labels[:samples]


def _output(mspec: ModelSpec, model: onnx.ModelProto) -> str:
    names = [o.name for o in model.graph.output]
    wanted = mspec.evaluation.output
    if wanted is not None:
        if wanted not in names:
            raise mspec.error("evaluation.output", f"the model has no output {shown(wanted)}; its outputs: "
                                                  f"{', '.join(names)}")
        return wanted
    types = elem_types(model)
    floats = [n for n in names if types.get(n) in FLOAT_TYPES]
    if not floats:
        raise mspec.error("accuracy", "the model has no float output to score; name one with evaluation.output")
    return floats[0]


def top1(outputs: np.ndarray | list[np.ndarray], labels: np.ndarray) -> float:
    """Fraction of rows whose arg-max over the last axis is the label: one label per row of each sample's output
    (a classifier's batch of one: one row, one label per sample). ``outputs``: stacked, or one array per sample."""
    hits = [np.reshape(o, (-1, np.shape(o)[-1])).argmax(-1) == np.reshape(y, -1) for o, y in zip(outputs, labels)]
    return float(np.mean(np.concatenate(hits)))


def _scorable(mspec: ModelSpec, name: str, outputs: list[np.ndarray], labels: np.ndarray) -> None:
    """top1 needs, per sample, as many rows of the output's last axis as that sample has labels."""
    for i, (o, y) in enumerate(zip(outputs, labels)):
        rows = o.size // o.shape[-1] if o.ndim and o.shape[-1] else 0
        if rows != np.size(y):
            shapes = sorted({tuple(x.shape) for x in outputs})
            shown = ", ".join(str(list(x)) for x in shapes[:4]) + (
                f" and {len(shapes) - 4} more" if len(shapes) > 4 else "")
            key = "evaluation.output" if mspec.evaluation.output is None else "evaluation.labels"
            raise mspec.error(key, f"output {name} cannot be scored by top1: sample {i} has shape {list(o.shape)} "
                                   f"({rows} rows of the last axis) for {np.size(y)} label(s); its shapes: {shown}. "
                                   f"top1 needs one label per row: name the output to score with evaluation.output "
                                   f"(a per-sample class score output), or give a metric: module.py:function")


def _user_metric(mspec: ModelSpec):
    gate = mspec.accuracy
    where = f"accuracy.metric ({gate.metric})"
    try:
        module = import_user_module(f"quantacc_metric_{abs(hash(gate.module))}", gate.module)
    except (Exception, SystemExit) as exc:  # the user's module may raise anything while importing
        raise mspec.error(where, f"importing {gate.module.name} failed: {type(exc).__name__}: {exc}") from None
    fn = getattr(module, gate.function, None)
    if not callable(fn):
        raise mspec.error(where, f"{gate.module.name} defines no function {gate.function}")
    return fn


def _score(mspec: ModelSpec, fn, outputs: np.ndarray | list[np.ndarray], labels: np.ndarray) -> float:
    try:
        value = float(fn(outputs, labels))
    except (Exception, SystemExit) as exc:  # a user metric failing is an input problem, reported with its words
        raise mspec.error(f"accuracy.metric ({mspec.accuracy.metric})",
                          f"the metric raised {type(exc).__name__}: {exc}") from None
    if not np.isfinite(value):
        raise mspec.error(f"accuracy.metric ({mspec.accuracy.metric})", f"the metric returned {value}")
    return value


def task_accuracy(mspec: ModelSpec, art: Artifacts, evals: Samples, threads: int = 0) -> AccuracyResult:
    """Score the float and the deployable model on ``evals``; input problems raise QuantaccInputError."""
    labels = load_labels(mspec, len(evals))
    name = _output(mspec, onnx.load(str(art.float_model), load_external_data=False))
    fn = top1 if mspec.accuracy.function is None else _user_metric(mspec)  # the user's module imported once
    float_value = _value(mspec, fn, name, _outputs(art.float_model, name, evals, False, threads), labels)
    deployed = _value(mspec, fn, name, _outputs(art.fixed_model, name, evals, True, threads), labels)
    return AccuracyResult(mspec.accuracy.metric, name, float_value, deployed, len(evals), mspec.accuracy.max_drop)


def deployed_accuracy(mspec: ModelSpec, model: Path, evals: Samples, threads: int = 0) -> float:
    """The task accuracy of one deployable model (a remedy attempt's fixed.onnx, all optimizations on)."""
    labels = load_labels(mspec, len(evals))
    name = _output(mspec, onnx.load(str(model), load_external_data=False))
    fn = top1 if mspec.accuracy.function is None else _user_metric(mspec)
    return _value(mspec, fn, name, _outputs(model, name, evals, True, threads), labels)


def _outputs(model: Path, name: str, evals: Samples, optimize: bool, threads: int) -> list[np.ndarray]:
    run = Runner(model, [name], optimize=optimize, threads=threads)
    return [run.run(sample)[name] for sample in evals]


def _value(mspec: ModelSpec, fn, name: str, outputs: list[np.ndarray], labels: np.ndarray) -> float:
    if fn is top1:
        _scorable(mspec, name, outputs, labels)
        return top1(outputs, labels)
    # A user metric gets one array when every sample's output has the same shape, else the list of them
    # (samples of different sizes cannot be stacked).
    arg = np.stack(outputs) if len({o.shape for o in outputs}) == 1 else outputs
    return _score(mspec, fn, arg, labels)
