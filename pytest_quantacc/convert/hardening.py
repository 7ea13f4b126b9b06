"""Pre-processing and checks for the model shapes real exporters produce and ONNX Runtime's quantizer trips on.

Each function here exists because a structurally valid model made the quantizer crash, silently do nothing
or fail with a message that does not say what to change:

- opset 11/12 models: per-channel QDQ writes ``DequantizeLinear(axis=...)``, which needs opset 13; the
  quantizer writes it anyway and the result does not load. ``upgrade_opset`` converts the float model.
- every computation inside ``If``/``Loop`` subgraphs: the quantizer does not enter subgraphs, so it
  quantizes nothing (or, with histogram calibration, fails with "Histogram has not been collected").
- calibration samples of different shapes: the entropy and percentile calibrators stack all samples of a
  tensor into one array, which fails on ragged shapes.
- extreme values (attention masks filled with the float32 minimum): a histogram cannot bin a range of
  1e38; the failure names no tensor, so ``explain_quantizer_failure`` finds it.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..errors import QuantaccInputError
from ..samples import Samples
from ..spec.model import ModelSpec

PER_CHANNEL_OPSET = 13  # DequantizeLinear's axis attribute
# Part of float.onnx's cache key: a float.onnx written before these rewrites (opset upgrade, inherited
# names) must not be reused.
FLOAT_REWRITES = "opset13+inherited-names"
_HISTOGRAM_METHODS = ("entropy", "percentile")
_EXTREME = 1e30  # beyond any real activation; where fill values such as float32.min live


def default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def upgrade_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model at opset 13 when it is older (so per-channel QDQ is valid), else unchanged.

    A model the converter cannot upgrade is returned unchanged: per-tensor quantization still works on it,
    and ``check_quantizable`` refuses per-channel with the converter's reason.
    """
    if default_opset(model) >= PER_CHANNEL_OPSET:
        return model
    from onnx import version_converter

    try:
        return version_converter.convert_version(model, PER_CHANNEL_OPSET)
    except Exception:  # the converter raises its own C++ error types; the model stays as it was
        return model


def _has_subgraph(node: onnx.NodeProto) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)


def check_quantizable(mspec: ModelSpec, model: onnx.ModelProto, calibration: Samples, op_types: list[str]) -> None:
    """Refuse, with the reason and the spec key, settings the quantizer would crash on or silently ignore.

    (An already-quantized model never gets here: convert/prepare.refuse_quantized stops it before ONNX Runtime
    loads it.)"""
    q = mspec.quantization
    opset = default_opset(model)
    if q.per_channel and opset < PER_CHANNEL_OPSET:
        raise mspec.error("quantization.per_channel",
                          f"per-channel quantization needs opset >= {PER_CHANNEL_OPSET} (DequantizeLinear's axis); "
                          f"{mspec.model.name} is opset {opset} and onnx's version converter could not upgrade it. "
                          f"Use per_channel: false or re-export the model at opset {PER_CHANNEL_OPSET} or later")
    wanted = set(op_types)
    top = [n for n in model.graph.node if n.op_type in wanted and n.name not in q.exclude_nodes]
    holders = [n for n in model.graph.node if _has_subgraph(n)]
    if not top and holders:
        where = ", ".join(f"{n.name} ({n.op_type})" for n in holders[:5])
        raise mspec.error("model", f"every quantizable node of {mspec.model.name} sits inside the subgraphs of "
                                   f"{where}; ONNX Runtime's quantizer does not quantize inside If/Loop/Scan "
                                   f"subgraphs, so nothing would be quantized")
    if q.method in _HISTOGRAM_METHODS:
        by_input: dict[str, set[tuple[int, ...]]] = {}
        for arrays in calibration.arrays:
            for name, a in arrays.items():
                by_input.setdefault(name, set()).add(tuple(a.shape[1:]))
        ragged = {k: sorted(v) for k, v in by_input.items() if len(v) > 1}
        if ragged:
            name, seen = next(iter(sorted(ragged.items())))
            raise mspec.error("calibration.data",
                              f"calibration samples differ in shape (input {name}: "
                              f"{', '.join(str(list(s)) for s in seen[:4])}); ONNX Runtime's {q.method} calibrator "
                              f"needs samples of one shape. Use method: minmax, or calibration data of one shape")


def explain_quantizer_failure(mspec: ModelSpec, float_model: onnx.ModelProto, calibration: Samples,
                              exc: BaseException, data_dir=None) -> str | None:
    """Name the tensors behind a calibration failure: the first tensor the float model fills with NaN or Inf
    from finite data (any method: a min/max of NaN makes no scale), or, for histogram methods, values beyond
    +-1e30 (fill values).

    Runs the float model on the first few calibration samples with every float tensor exposed; only called
    after the quantizer has failed, so a healthy run never pays for it. ``float_model`` may be the graph
    without its external data; ONNX Runtime then reads the weights from ``data_dir``.
    """
    import onnxruntime as ort

    from ..graph.structure import FLOAT_TYPES, elem_types, expose

    types = elem_types(float_model)
    names = [t for n in float_model.graph.node for t in n.output if t and types.get(t) in FLOAT_TYPES]
    producer = {t: n.name for n in float_model.graph.node for t in n.output}
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    if data_dir is not None:
        opts.add_session_config_entry("session.model_external_initializers_file_folder_path", str(data_dir))
    try:
        session = ort.InferenceSession(expose(float_model, names).SerializeToString(), opts,
                                       providers=["CPUExecutionProvider"])
        extreme: dict[str, float] = {}
        for i, sample in enumerate(calibration):
            if i == 4:
                break
            for name, value in zip(names, session.run(names, sample)):  # node order: producers first
                if value.size and not np.isfinite(value).all():
                    kind = "NaN" if np.isnan(value).any() else "Inf"
                    return (f"The float model itself produces {kind} in tensor {name} (node {producer[name]}) on "
                            f"calibration sample {i}, whose inputs are finite (a Log or Sqrt of a negative value, a "
                            f"division by zero, an overflow?); no quantization scale can be derived from it. Fix "
                            f"the model or the data so that {name} stays finite")
                peak = float(np.max(np.abs(value))) if value.size else 0.0
                if peak > _EXTREME:
                    extreme[name] = max(extreme.get(name, 0.0), peak)
    except Exception:  # explaining is best effort: the quantizer's own words are reported regardless
        return None
    if not extreme or mspec.quantization.method not in _HISTOGRAM_METHODS:
        return None
    nodes = list(dict.fromkeys(producer[t] for t in extreme))
    listed = "; ".join(f"{t} (node {producer[t]}, |x| up to {v:.3g})" for t, v in list(extreme.items())[:4])
    return (f"tensors with values beyond +-1e30, as attention masks filled with the float32 minimum have: {listed}. "
            f"A {mspec.quantization.method} histogram cannot cover such a range. Use method: minmax (then check "
            f"the layers after them), or leave these nodes and their consumers in float with exclude_nodes: "
            f"[{', '.join(nodes[:4])}, ...]")


def with_explanation(error: QuantaccInputError, extra: str | None) -> QuantaccInputError:
    """The quantizer's error with our explanation appended (same spec file and key)."""
    if not extra:
        return error
    return QuantaccInputError(error.spec, error.key, f"{error.problem.rstrip('.')}. {extra}")


def inherit_names(user: onnx.ModelProto, rewritten: onnx.ModelProto) -> None:
    """Name nodes the float rewrites left unnamed after the user's node that wrote the same tensor, in place.

    ONNX Runtime inlines function ops it has no kernel for (HardSwish becomes HardSigmoid + Mul) and the new
    nodes carry no name; without this the user's ``backbone/act1`` would be reported as ``Mul_1``. The node
    that now writes the user's tensor takes the user's node name; names are never duplicated.
    """
    writer = {t: n.name for n in user.graph.node if n.name for t in n.output if t}
    taken = {n.name for n in rewritten.graph.node if n.name}
    for node in rewritten.graph.node:
        if node.name:
            continue
        name = next((writer[t] for t in node.output if t in writer), None)
        if name and name not in taken:
            node.name = name
            taken.add(name)
