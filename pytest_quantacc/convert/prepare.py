"""The float reference: the user's model after the float rewrites ONNX Runtime applies before quantizing.

``float.onnx`` (constant folding, BatchNorm fused into Conv, opset >= 13, every node named) is the graph the
quantizer sees, so it, not the user's file, is what every comparison uses as the reference.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import onnx

from ..files import save_model
from ..graph.extdata import INLINE_BYTES, inline_small, intact, path_has_external_data, publish, side_files
from ..graph.foreign import quantization_kind
from ..graph.structure import input_infos, name_nodes
from ..samples import InputInfo, Samples, load_samples
from ..spec.model import ModelSpec
from .hardening import inherit_names, upgrade_opset
from .workdir import digest, model_key, read_manifest, workdir_for, write_manifest


def quiet_ort():
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    return ort


def load_onnx(mspec: ModelSpec, load_external_data: bool = True) -> onnx.ModelProto:
    """Load the user's model, or raise an input error saying why it is not a usable ONNX model."""
    try:
        return onnx.load(str(mspec.model), load_external_data=load_external_data)
    except Exception as exc:  # protobuf's DecodeError, OSError, ... all mean "not a readable ONNX file"
        raise mspec.error("model",
                          f"{mspec.model.name} is not a readable ONNX model ({type(exc).__name__}: {exc})") from None


def refuse_quantized(mspec: ModelSpec, user: onnx.ModelProto) -> None:
    """``model:`` must be the float model: quantizing a quantized model again would gate the wrong thing.

    ONNX Runtime's quantizer skips what is already quantized (or fails deep inside), and every layer would then
    compare a quantized model with itself requantized. The error says what was found and where such a model goes.
    """
    kind = quantization_kind(user)
    if kind.kind == "float":
        return
    raise mspec.error("model", f"{mspec.model.name} is already quantized: {kind.describe()}. 'model' is the float "
                               "model; to gate a model quantized by another tool, give the float model as 'model' "
                               "and the quantized one as 'quantized: path/to/model.qdq.onnx'")


def prepare_float(mspec: ModelSpec, base: Path) -> Path:
    """Write (or reuse) ``float.onnx``: the model after ONNX Runtime's basic float rewrites, nodes named."""
    workdir = workdir_for(base, mspec)
    dest = workdir / "float.onnx"
    key = model_key(mspec.model, workdir)
    if mspec.preprocess is not None:
        key = digest(key, mspec.preprocess.digest())
    manifest = read_manifest(workdir)
    if manifest.get("float") == key and intact(dest):
        return dest
    if path_has_external_data(mspec.model):
        return _prepare_external(mspec, workdir, dest, key)
    ort = quiet_ort()
    user = load_onnx(mspec)
    refuse_quantized(mspec, user)
    workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=workdir, prefix=".opt.") as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        source = mspec.model
        if mspec.preprocess is not None:  # deployment preprocessing folded in front (pipeline.py)
            from .fold import fold

            source = Path(tmp) / "folded.onnx"
            onnx.save_model(fold(mspec.preprocess, user, lambda why: mspec.error("preprocess", why)), str(source))
        try:
            ort.InferenceSession(str(source), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/NotImplemented types
            raise mspec.error("model", f"ONNX Runtime cannot load {mspec.model.name}: {first_line(exc)}") from None
        model = onnx.load(opts.optimized_model_filepath)
    model = _float_rewrites(user, model)
    save_model(model, dest)
    write_manifest(workdir, {"float": key})
    return dest


def _float_rewrites(user: onnx.ModelProto, model: onnx.ModelProto) -> onnx.ModelProto:
    model = upgrade_opset(model)  # opset >= 13, so that per-channel QDQ is valid
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # shape inference is best effort: the quantizer and our matching cope without it
        pass
    inherit_names(user, model)
    name_nodes(model)
    return model


def external_options(ort, name: str):
    """Session options that make ONNX Runtime save its optimized model with the weights in ``name``.

    Tensors up to INLINE_BYTES stay in the graph (see extdata), the rest go to the side file.
    """
    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.optimized_model_external_initializers_file_name", name)
    opts.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes",
                                  str(INLINE_BYTES + 1))
    return opts


def _prepare_external(mspec: ModelSpec, workdir: Path, dest: Path, key: str) -> Path:
    """``float.onnx`` of a model whose weights are in side files, without reading the weights into Python.

    ONNX Runtime loads the user's graph (handed over as bytes, its weights read from the model's folder),
    optimizes it and writes the result with its weights in one new side file; the rewrites here touch the
    graph only (onnx's version converter and shape inference keep external tensors as they are, and the
    small tensors they may read, shapes and axes, are inlined), and the side file is renamed to
    ``float.onnx.data``. Never serializes more than the graph, so it works beyond protobuf's 2 GB.
    """
    ort = quiet_ort()
    user = load_onnx(mspec, load_external_data=False)
    refuse_quantized(mspec, user)
    if not intact(mspec.model):
        raise mspec.error("model", f"{mspec.model.name} refers to external data files that are missing or shorter "
                                   f"than its tensors need ({', '.join(side_files(user))}, looked up in "
                                   f"{mspec.model.parent})")
    inline_small(user, mspec.model.parent)  # ONNX Runtime's load-time shape inference reads shape tensors
    workdir.mkdir(parents=True, exist_ok=True)
    write_manifest(workdir, {})  # what follows replaces files one by one: nothing is trusted until it is done
    with tempfile.TemporaryDirectory(dir=workdir, prefix=".opt.") as tmp:
        opts = external_options(ort, "opt.onnx.data")
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        opts.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                      str(mspec.model.parent.resolve()))
        source = user
        if mspec.preprocess is not None:  # deployment preprocessing folded in front (pipeline.py)
            from .fold import fold

            source = fold(mspec.preprocess, user, lambda why: mspec.error("preprocess", why))
        try:
            ort.InferenceSession(source.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/NotImplemented types
            raise mspec.error("model", f"ONNX Runtime cannot load {mspec.model.name}: {first_line(exc)}") from None
        model = _float_rewrites(user, onnx.load(opts.optimized_model_filepath, load_external_data=False))
        publish(model, Path(tmp), dest, save_model)
    write_manifest(workdir, {"float": key})
    return dest


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def model_inputs(float_model: Path):
    return input_infos(onnx.load(str(float_model), load_external_data=False))


@dataclass(frozen=True)
class PreparedModel:
    """One model's float reference, prepared once per evaluation, and its samples, loaded on first use.

    Evaluation, task accuracy and the remedy search all read the same checked samples; a warm cache hit
    reads none (the properties are never touched), so it stays as cheap as re-judging stored metrics.
    """

    spec: ModelSpec
    float_model: Path

    @cached_property
    def inputs(self) -> tuple[InputInfo, ...]:
        return model_inputs(self.float_model)

    @cached_property
    def calibration(self) -> Samples:
        m = self.spec
        return load_samples(m.calibration.path, m.calibration.limit, self.inputs, m.spec_path,
                            f"{m.key}.calibration.data")

    @cached_property
    def evaluation(self) -> Samples:
        m = self.spec
        if m.evaluation == m.calibration:
            return self.calibration
        return load_samples(m.evaluation.path, m.evaluation.limit, self.inputs, m.spec_path,
                            f"{m.key}.evaluation.data")


def prepare(mspec: ModelSpec, base: Path) -> PreparedModel:
    """``prepare_float`` as a :class:`PreparedModel` (raises the input error when the model is unusable)."""
    return PreparedModel(mspec, prepare_float(mspec, base))
