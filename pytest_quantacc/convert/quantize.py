"""ONNX Runtime static (QDQ) quantization of ``float.onnx`` into ``fixed.onnx`` and ``offline.onnx``.

- ``fixed.onnx``: the QDQ model. Run with optimizations disabled it is the fake-quant simulator; run with
  them on it is the deployable model.
- ``offline.onnx``: what ONNX Runtime turns ``fixed.onnx`` into with all optimizations (fused integer
  kernels such as QLinearConv), saved for inspection only.

Each file is written to a temporary name and renamed, and ``manifest.json`` (last) records the content
keys, so an interrupted run never leaves a half-written artifact that a later run would trust.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import logging
import os
import tempfile
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import onnx

from ..errors import QuantaccInputError
from ..files import save_model
from ..graph.extdata import data_name, inline_small, intact, path_has_external_data, publish
from ..graph.structure import consumers
from ..samples import Samples
from ..spec.model import ModelSpec, Quantization
from ..spec.node import shown
from .hardening import check_quantizable, explain_quantizer_failure, with_explanation
from .ort_options import BY_NAME, validate_extra_options
from .prepare import external_options, first_line, quiet_ort
from .workdir import Artifacts, data_key, digest, read_manifest, write_manifest

_QUANT_TYPES = {"uint8": "QUInt8", "int8": "QInt8", "uint16": "QUInt16", "int16": "QInt16", "int4": "QInt4",
                "uint4": "QUInt4"}


_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile", "distribution": "Distribution"}


# extra_options quantize_static hands to its calibrator, and the calibrator's names for them (quantize.py of
# onnxruntime); ranges computed here (entropy, external data) must get them too.
_CALIB_KEYS = {"CalibTensorRangeSymmetric": "symmetric", "CalibMovingAverage": "moving_average",
               "CalibMovingAverageConstant": "averaging_constant",
               "CalibMaxIntermediateOutputs": "max_intermediate_outputs", "CalibPercentile": "percentile"}


def extra_options(mspec: ModelSpec) -> dict:
    """``quantization.extra_options`` checked against ONNX Runtime's table, as ``quantize_static`` takes them.

    Errors name the option (``models[i].quantization.extra_options.<Name>``). Options that our own keys set
    (``overrides`` -> TensorQuantOverrides, ``percentile`` -> CalibPercentile) may not be given twice, and an
    option that needs a package must find it installed.
    """
    q = mspec.quantization

    def fail(message: str) -> QuantaccInputError:
        name, _, problem = message.partition(": ")
        return mspec.error(f"quantization.extra_options.{name}", problem)

    options = validate_extra_options(q.extra_options(), fail)
    owned = {"TensorQuantOverrides": ("overrides", bool(q.overrides)),
             "CalibPercentile": ("percentile", q.method == "percentile")}
    for name in options:
        key, used = owned.get(name, ("", False))
        if used:
            raise fail(f"{name}: also set by quantization.{key}; give it in one place")
        needs = BY_NAME[name].needs
        if needs and options[name] and importlib.util.find_spec(needs) is None:
            raise fail(f"{name}: needs the Python package {needs!r}, which is not installed")
    if options.get("SmoothQuant") and (q.method == "entropy" or path_has_external_data(mspec.model)):
        raise fail("SmoothQuant: not available with method entropy or a model with external data (their ranges "
                   "are calibrated before quantize_static, on the model SmoothQuant has not transformed yet)")
    return options


class _Reader:
    """ONNX Runtime's calibration reader protocol over our checked samples."""

    def __init__(self, samples: Samples) -> None:
        self._it = iter(samples)

    def get_next(self):
        return next(self._it, None)


@contextmanager
def _captured_logging():
    """The quantizer reports through the root logger; keep it for the report instead of the terminal."""
    records: list[str] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    root.handlers = [_Keep()]
    root.setLevel(logging.WARNING)
    try:
        yield records
    finally:
        root.handlers, root.level = saved_handlers, saved_level


def _check_names(mspec: ModelSpec, model: onnx.ModelProto, q: Quantization) -> None:
    names = [n.name for n in model.graph.node]
    known = set(names)
    for i, node in enumerate(q.exclude_nodes):
        if node not in known:
            raise mspec.error(f"quantization.exclude_nodes[{i}]",
                              f"no node named {shown(node)} in the model{_hint(node, names)}")
    for o in q.overrides:
        if o.node not in known:
            raise mspec.error(f"quantization.overrides.{o.node[:80]}",
                              f"no node named {shown(o.node)} in the model{_hint(o.node, names)}")


def _hint(name: str, names: list[str]) -> str:
    hits = difflib.get_close_matches(name, names, n=3)
    return f" (close: {', '.join(hits)})" if hits else ""


def _tensor_overrides(model: onnx.ModelProto, q: Quantization, qtype) -> dict:
    """Per-node precision -> ONNX Runtime ``TensorQuantOverrides`` keyed by the node's tensors."""
    by_name = {n.name: n for n in model.graph.node}
    inits = {i.name for i in model.graph.initializer}
    users = consumers(model)
    overrides: dict[str, list[dict]] = {}
    for o in q.overrides:
        node = by_name[o.node]
        if o.activations:
            for t in node.output:
                # A Relu/Clip right after the node is folded into it by the quantizer, which then quantizes the
                # activation's output in its place: the override must follow it there.
                after = users.get(t, [])
                folded = [after[0].output[0]] if len(after) == 1 and after[0].op_type in ("Relu", "Clip") else []
                for name in [t, *folded] if t else []:
                    overrides[name] = [{"quant_type": getattr(qtype, _QUANT_TYPES[o.activations])}]
        if o.weights:
            for t in node.input[1:2]:
                if t in inits:
                    overrides[t] = [{"quant_type": getattr(qtype, _QUANT_TYPES[o.weights])}]
    return overrides


_ENTROPY_BINS = {"num_bins": 2048, "num_quantized_bins": 128}


def _calibrate(float_model: Path, calibration: Samples, q: Quantization, op_types: list[str], tmp: Path,
               external: bool = False, user: dict | None = None):
    """The calibration reader, or the ranges computed here and handed over as a cache.

    ``quantize_static`` gives the entropy calibrator ONNX Runtime's defaults of 128 histogram bins and 128
    quantized bins, so the only threshold it can pick is the full range: "entropy" would silently be minmax.
    With 2048 bins (the usual setting for 8-bit KL calibration) the threshold search has room to clip.

    A model with external data is calibrated here for every method, with the options ``quantize_static``
    would use: inside ``quantize_static`` the calibrator (its own copy of the model plus a session) runs
    while the quantizer's copy is held, three copies of the weights at once; here the calibrator is gone
    before the quantizer loads the model (measured on 2.4 GB of weights: peak RSS 7.1 -> 4.8 GiB).
    """
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    options = {"entropy": dict(_ENTROPY_BINS), "percentile": {"percentile": q.percentile}, "minmax": {},
               "distribution": {}}
    if q.method != "entropy" and not external:
        return _Reader(calibration), {}
    calib = {_CALIB_KEYS[k]: v for k, v in (user or {}).items() if k in _CALIB_KEYS}
    calibrator = create_calibrator(float_model, op_types, augmented_model_path=str(tmp / "augmented.onnx"),
                                   calibrate_method=getattr(CalibrationMethod, _METHODS[q.method]),
                                   extra_options={**calib, **options[q.method]}, use_external_data_format=external)
    calibrator.collect_data(_Reader(calibration))
    save_tensors_data(calibrator.compute_data(), tmp / "calibration.json")
    del calibrator  # its copy of the model and its session: gone before the quantizer loads its own
    return None, {"calibration_cache_path": str(tmp / "calibration.json")}


def quantize(mspec: ModelSpec, float_model: Path, calibration: Samples, base: Path,
             workdir: Path | None = None) -> Artifacts:
    """Quantize ``float.onnx`` with the spec's settings (or reuse a matching earlier result).

    The results go to ``workdir`` (default: float.onnx's folder, whose manifest keys them); remedy attempts
    write theirs to subfolders while reading the one float.onnx and its side file.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    ort = quiet_ort()
    workdir = workdir or float_model.parent
    q = mspec.quantization
    fixed, offline = workdir / "fixed.onnx", workdir / "offline.onnx"
    manifest = read_manifest(workdir)
    key = digest(manifest.get("float", ""), data_key(mspec.calibration.path, workdir), str(mspec.calibration.limit),
                  json.dumps(asdict(q), sort_keys=True))
    if manifest.get("fixed") == key and intact(fixed) and intact(offline):
        return Artifacts(workdir, float_model, fixed, offline, tuple(manifest.get("log", ())))

    # The graph is all that is checked here; the quantizer reads the weights itself.
    model = onnx.load(str(float_model), load_external_data=False)
    # Decided by "float.onnx has external data", not by size, so small external-data models take this path too.
    external = path_has_external_data(float_model)
    _check_names(mspec, model, q)
    op_types = sorted(set(QDQRegistry) | set(QLinearOpsRegistry))
    op_types = [t for t in op_types if t not in set(q.exclude_op_types)]
    user = extra_options(mspec)
    extra = dict(user)
    if q.overrides:
        extra["TensorQuantOverrides"] = _tensor_overrides(model, q, QuantType)
    if q.method == "percentile":
        extra["CalibPercentile"] = q.percentile
    check_quantizable(mspec, model, calibration, op_types)
    with _captured_logging() as log, tempfile.TemporaryDirectory(dir=workdir, prefix=".q.") as tmp:
        out = Path(tmp) / "fixed.onnx"
        try:
            reader, cache = _calibrate(float_model, calibration, q, op_types, Path(tmp), external, user)
            quantize_static(
                str(float_model), str(out), reader,
                quant_format=QuantFormat.QOperator if q.format == "qoperator" else QuantFormat.QDQ,
                op_types_to_quantize=op_types,
                per_channel=q.per_channel,
                reduce_range=q.reduce_range,
                activation_type=getattr(QuantType, _QUANT_TYPES[q.activations]),
                weight_type=getattr(QuantType, _QUANT_TYPES[q.weights]),
                nodes_to_exclude=list(q.exclude_nodes),
                calibrate_method=getattr(CalibrationMethod, _METHODS[q.method]),
                extra_options=extra,
                use_external_data_format=external,
                **cache,
            )
        except Exception as exc:  # the quantizer raises many types; the user needs its words and our context
            error = mspec.error("quantization", f"ONNX Runtime's quantizer failed: {type(exc).__name__}: "
                                f"{first_line(exc)}")
            raise with_explanation(error, explain_quantizer_failure(mspec, model, calibration, exc,
                                                                    data_dir=float_model.parent)) from None
        write_manifest(workdir, {**manifest, "fixed": ""})  # files are replaced one by one below
        if external:
            # The quantizer wrote its weights to <tmp>/fixed.onnx.data: renamed into place with the graph,
            # whose small tensors (scales, zero points) are inlined for match.py.
            fixed_graph = onnx.load(str(out), load_external_data=False)
            inline_small(fixed_graph, Path(tmp))
            publish(fixed_graph, Path(tmp), fixed, save_model)
        else:
            os.replace(out, fixed)
            (workdir / data_name(fixed)).unlink(missing_ok=True)
        opts = external_options(ort, data_name(offline)) if external else ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.optimized_model_filepath = str(Path(tmp) / "offline.onnx")
        try:
            ort.InferenceSession(str(fixed), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # the quantizer wrote a model ONNX Runtime rejects: say so, not a traceback
            raise mspec.error("quantization", f"ONNX Runtime cannot load the quantized model the quantizer wrote "
                              f"({fixed.name}): {first_line(exc)}") from None
        # ONNX Runtime already named the side file offline.onnx.data: it is moved, and the graph file as written.
        publish(onnx.load(opts.optimized_model_filepath, load_external_data=False), Path(tmp), offline,
                lambda m, dest: os.replace(opts.optimized_model_filepath, dest))
    logs = tuple(dict.fromkeys(m for m in log if "pre-processing" not in m))
    write_manifest(workdir, {**manifest, "fixed": key, "log": list(logs)})
    return Artifacts(workdir, float_model, fixed, offline, logs)
