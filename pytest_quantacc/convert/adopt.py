"""The user's own quantized model (``quantized:``) as ``fixed.onnx`` and ``offline.onnx``, instead of converting.

Another tool (NNCF, AMD Quark, TensorRT's QDQ export, a vendor toolchain) already quantized the model, so there
is nothing to calibrate: the model is checked, its graph inputs and outputs are given the float model's names
(tools rename them; every session is fed and read by the float model's names), and it is written as
``fixed.onnx`` (run unfused: the fake-quant simulator of *that* model) and, optimized by ONNX Runtime with every
optimization, as ``offline.onnx``. The manifest keys both by the float model and the quantized file's bytes.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx

from ..files import save_model
from ..graph.extdata import intact
from ..graph.foreign import QuantizationKind, quantization_kind
from ..spec.model import ModelSpec
from .prepare import first_line, quiet_ort
from .workdir import Artifacts, digest, model_key, read_manifest, write_manifest

_CLASH = "__quantacc_renamed"


def quantized_kind(mspec: ModelSpec) -> tuple[onnx.ModelProto, QuantizationKind]:
    """The quantized model's graph and what kind of quantization it holds; an input error when it is no use."""
    try:
        model = onnx.load(str(mspec.quantized), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError, OSError, ...: not a readable ONNX file
        raise mspec.error("quantized", f"{mspec.quantized.name} is not a readable ONNX model "
                                       f"({type(exc).__name__}: {exc})") from None
    kind = quantization_kind(model)
    if kind.kind == "float":
        raise mspec.error("quantized", f"{mspec.quantized.name} is a {kind.describe()}: 'quantized' names the "
                                       "model your tool quantized (QDQ or QOperator)")
    if kind.kind == "dynamic":
        raise mspec.error("quantized", f"{mspec.quantized.name} is a {kind.describe()}: its ranges are computed "
                                       "per input at run time, there are no static quantization parameters to "
                                       "gate; give a statically quantized (QDQ or QOperator) model")
    return model, kind


def adopt(mspec: ModelSpec, float_model: Path) -> tuple[Artifacts, QuantizationKind]:
    """Write (or reuse) ``fixed.onnx`` / ``offline.onnx`` from the user's quantized model, beside float.onnx."""
    graph, kind = quantized_kind(mspec)
    workdir = float_model.parent
    fixed, offline = workdir / "fixed.onnx", workdir / "offline.onnx"
    manifest = read_manifest(workdir)
    key = digest("quantized", manifest.get("float", ""), model_key(mspec.quantized, workdir))
    if manifest.get("fixed") == key and intact(fixed) and intact(offline):
        return Artifacts(workdir, float_model, fixed, offline), kind
    model = onnx.load(str(mspec.quantized))  # with its weights: the copy in the work folder stands alone
    float_graph = onnx.load(str(float_model), load_external_data=False)
    rename_io(mspec, float_graph, model)
    ort = quiet_ort()
    with tempfile.TemporaryDirectory(dir=workdir, prefix=".adopt.") as tmp:
        out = Path(tmp) / "fixed.onnx"
        save_model(model, out)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.optimized_model_filepath = str(Path(tmp) / "offline.onnx")
        try:
            plain = ort.SessionOptions()
            plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            ort.InferenceSession(str(out), plain, providers=["CPUExecutionProvider"])
            ort.InferenceSession(str(out), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/NotImplemented types
            raise mspec.error("quantized", f"ONNX Runtime cannot load {mspec.quantized.name}: "
                                           f"{first_line(exc)}") from None
        write_manifest(workdir, {**manifest, "fixed": ""})  # files are replaced one by one below
        os.replace(out, fixed)
        os.replace(opts.optimized_model_filepath, offline)
    write_manifest(workdir, {**manifest, "fixed": key, "log": []})
    return Artifacts(workdir, float_model, fixed, offline), kind


def rename_io(mspec: ModelSpec, float_model: onnx.ModelProto, model: onnx.ModelProto) -> None:
    """Give ``model``'s graph inputs and outputs the float model's names: by name, else by position.

    A tensor of ``model`` that already carries one of the new names is renamed out of the way first. Counts that
    differ cannot be paired by position: an input error, since the two models are not the same network.
    """
    g = model.graph
    mapping: dict[str, str] = {}
    for what, ours, theirs in (("inputs", float_model.graph.input, g.input),
                               ("outputs", float_model.graph.output, g.output)):
        names = [v.name for v in ours]
        inits = {i.name for i in g.initializer}
        others = [v.name for v in theirs if v.name not in inits]
        if set(others) <= set(names):
            continue
        if len(others) != len(names):
            raise mspec.error("quantized", f"{mspec.quantized.name} has {len(others)} graph {what} "
                                           f"({', '.join(others)}), the float model {len(names)} "
                                           f"({', '.join(names)}): they are not the same network")
        mapping.update({old: new for old, new in zip(others, names) if old != new})
    if not mapping:
        return
    taken = {t for n in g.node for t in (*n.input, *n.output)} | {i.name for i in g.initializer}
    clashes = {new: new + _CLASH for new in mapping.values() if new in taken and new not in mapping}
    _rename(g, {**clashes, **mapping})


def _rename(g: onnx.GraphProto, mapping: dict[str, str]) -> None:
    for n in g.node:
        for i, t in enumerate(n.input):
            n.input[i] = mapping.get(t, t)
        for i, t in enumerate(n.output):
            n.output[i] = mapping.get(t, t)
    for v in (*g.input, *g.output, *g.value_info):
        v.name = mapping.get(v.name, v.name)
    for init in g.initializer:
        init.name = mapping.get(init.name, init.name)
