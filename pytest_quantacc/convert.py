"""Model conversion: the float reference model and ONNX Runtime static (QDQ) quantization.

Artifacts land in a per-model work folder the user can open in Netron:

- ``float.onnx``: the user's model after the float rewrites conversion applies before quantizing (ONNX
  Runtime basic optimizations: constant folding, BatchNorm fused into Conv, ...), with every node named.
  This, not the user's file, is the reference: it is the graph the quantizer sees.
- ``fixed.onnx``: the QDQ model (QuantizeLinear/DequantizeLinear around each quantized tensor). Run with
  optimizations disabled it is the fake-quant simulator; run with them on it is the deployable model.
- ``offline.onnx``: what ONNX Runtime turns ``fixed.onnx`` into with all optimizations (fused integer
  kernels such as QLinearConv), saved for inspection only.

Each file is written to a temporary name and renamed, and ``manifest.json`` (last) records the content
keys, so an interrupted run never leaves a half-written artifact that a later run would trust.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import onnx

from . import __version__
from .data import Samples
from .extdata import INLINE_BYTES, data_name, inline_small, intact, path_has_external_data, publish, side_files
from .hardening import (FLOAT_REWRITES, check_quantizable, explain_quantizer_failure, inherit_names, upgrade_opset,
                        with_explanation)
from .onnxgraph import consumers, input_infos, name_nodes
from .spec import ModelSpec, Quantization

_QUANT_TYPES = {"uint8": "QUInt8", "int8": "QInt8", "uint16": "QUInt16", "int16": "QInt16"}
_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}


@dataclass(frozen=True)
class Artifacts:
    workdir: Path
    float_model: Path
    fixed_model: Path
    offline_model: Path
    log: tuple[str, ...] = ()  # what the quantizer warned about, for the report


def _ort():
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    return ort


def _digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()[:16]


_MEMO = "digests.json"


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _hash_file(path: Path, known: dict | None = None) -> str:
    """sha256 of a file's bytes. ``known`` maps a resolved path to ``[size, mtime_ns, sha256]`` from earlier
    calls: reused while the file's size and modification time are unchanged, updated when hashed."""
    where, stamp = str(path.resolve()), _stamp(path)
    hit = known.get(where) if known is not None else None
    if isinstance(hit, list) and hit[:2] == stamp:
        return hit[2]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    if known is not None:
        known[where] = [*stamp, h.hexdigest()]
    return h.hexdigest()


@contextmanager
def _remembered(memo_dir: Path | None):
    """The digests remembered in ``<memo_dir>/digests.json`` (None without a folder), written back if changed.

    Used under the model folder's lock: hashing a 2.4 GB weights file and gigabytes of evaluation data took
    most of a warm run that otherwise only re-checks stored metrics.
    """
    if memo_dir is None or not memo_dir.is_dir():
        yield None
        return
    known = _read_json(memo_dir / _MEMO)
    before = dict(known)
    yield known
    if known != before:
        _write_json(memo_dir / _MEMO, known)


def _file_digest(path: Path, memo_dir: Path | None = None) -> str:
    """sha256 of a file, remembered in ``memo_dir`` (see :func:`_remembered`) when one is given."""
    with _remembered(memo_dir) as known:
        return _hash_file(path, known)


def _model_key(model: Path, memo_dir: Path | None = None) -> str:
    """Model bytes plus any external-data files beside it, and the tool versions that shape the float model."""
    ort = _ort()
    with _remembered(memo_dir) as known:
        parts = [_hash_file(model, known), ort.__version__, onnx.__version__, __version__, FLOAT_REWRITES]
        try:
            proto = onnx.load(str(model), load_external_data=False)
        except Exception:  # not ONNX: the key only has to differ; load_onnx reports the problem
            return _digest(*parts)
        locations = sorted({e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"})
        parts += [_hash_file(model.parent / loc, known) for loc in locations if (model.parent / loc).is_file()]
    return _digest(*parts)


def _data_key(path: Path, memo_dir: Path | None = None) -> str:
    files = sorted(path.glob("*.npz")) if path.is_dir() else [path]
    with _remembered(memo_dir) as known:
        return _digest(*[_hash_file(f, known) for f in files])


def workdir_for(base: Path, mspec: ModelSpec) -> Path:
    return base / f"{mspec.spec_path.stem}-{_digest(str(mspec.spec_path))[:6]}" / mspec.name


def _atomic_save(model: onnx.ModelProto, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    os.close(fd)
    try:
        large = model.ByteSize() > 1_900_000_000
        onnx.save_model(model, tmp, save_as_external_data=large, location=f"{dest.name}.data" if large else None)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def _read_manifest(workdir: Path) -> dict:
    return _read_json(workdir / "manifest.json")


def _write_manifest(workdir: Path, manifest: dict) -> None:
    _write_json(workdir / "manifest.json", manifest)


def load_onnx(mspec: ModelSpec, load_external_data: bool = True) -> onnx.ModelProto:
    """Load the user's model, or raise an input error saying why it is not a usable ONNX model."""
    try:
        return onnx.load(str(mspec.model), load_external_data=load_external_data)
    except Exception as exc:  # protobuf's DecodeError, OSError, ... all mean "not a readable ONNX file"
        raise mspec.error("model", f"{mspec.model.name} is not a readable ONNX model ({type(exc).__name__}: {exc})") from None


def prepare_float(mspec: ModelSpec, base: Path) -> Path:
    """Write (or reuse) ``float.onnx``: the model after ONNX Runtime's basic float rewrites, nodes named."""
    workdir = workdir_for(base, mspec)
    dest = workdir / "float.onnx"
    key = _model_key(mspec.model, workdir)
    if mspec.preprocess is not None:
        key = _digest(key, mspec.preprocess.digest())
    manifest = _read_manifest(workdir)
    if manifest.get("float") == key and intact(dest):
        return dest
    if path_has_external_data(mspec.model):
        return _prepare_external(mspec, workdir, dest, key)
    ort = _ort()
    user = load_onnx(mspec)
    workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=workdir, prefix=".opt.") as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        source = mspec.model
        if mspec.preprocess is not None:  # deployment preprocessing folded in front (pipeline.py)
            from .pipeline import fold

            source = Path(tmp) / "folded.onnx"
            onnx.save_model(fold(mspec.preprocess, user, lambda why: mspec.error("preprocess", why)), str(source))
        try:
            ort.InferenceSession(str(source), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/NotImplemented types
            raise mspec.error("model", f"ONNX Runtime cannot load {mspec.model.name}: {_first_line(exc)}") from None
        model = onnx.load(opts.optimized_model_filepath)
    model = _float_rewrites(user, model)
    _atomic_save(model, dest)
    _write_manifest(workdir, {"float": key})
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


def _external_options(ort, name: str):
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
    ort = _ort()
    user = load_onnx(mspec, load_external_data=False)
    if not intact(mspec.model):
        raise mspec.error("model", f"{mspec.model.name} refers to external data files that are missing or shorter "
                                   f"than its tensors need ({', '.join(side_files(user))}, looked up in "
                                   f"{mspec.model.parent})")
    inline_small(user, mspec.model.parent)  # ONNX Runtime's load-time shape inference reads shape tensors
    workdir.mkdir(parents=True, exist_ok=True)
    _write_manifest(workdir, {})  # what follows replaces files one by one: nothing is trusted until it is done
    with tempfile.TemporaryDirectory(dir=workdir, prefix=".opt.") as tmp:
        opts = _external_options(ort, "opt.onnx.data")
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        opts.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                      str(mspec.model.parent.resolve()))
        source = user
        if mspec.preprocess is not None:  # deployment preprocessing folded in front (pipeline.py)
            from .pipeline import fold

            source = fold(mspec.preprocess, user, lambda why: mspec.error("preprocess", why))
        try:
            ort.InferenceSession(source.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/NotImplemented types
            raise mspec.error("model", f"ONNX Runtime cannot load {mspec.model.name}: {_first_line(exc)}") from None
        model = _float_rewrites(user, onnx.load(opts.optimized_model_filepath, load_external_data=False))
        publish(model, Path(tmp), dest, _atomic_save)
    _write_manifest(workdir, {"float": key})
    return dest


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


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
            raise mspec.error(f"quantization.exclude_nodes[{i}]", f"no node named {node!r} in the model{_hint(node, names)}")
    for o in q.overrides:
        if o.node not in known:
            raise mspec.error(f"quantization.overrides.{o.node}", f"no node named {o.node!r} in the model{_hint(o.node, names)}")


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
               external: bool = False):
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

    options = {"entropy": dict(_ENTROPY_BINS), "percentile": {"percentile": q.percentile}, "minmax": {}}
    if q.method != "entropy" and not external:
        return _Reader(calibration), {}
    calibrator = create_calibrator(float_model, op_types, augmented_model_path=str(tmp / "augmented.onnx"),
                                   calibrate_method=getattr(CalibrationMethod, _METHODS[q.method]),
                                   extra_options=options[q.method], use_external_data_format=external)
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

    ort = _ort()
    workdir = workdir or float_model.parent
    q = mspec.quantization
    fixed, offline = workdir / "fixed.onnx", workdir / "offline.onnx"
    manifest = _read_manifest(workdir)
    key = _digest(manifest.get("float", ""), _data_key(mspec.calibration.path, workdir), str(mspec.calibration.limit),
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
    extra = {"TensorQuantOverrides": _tensor_overrides(model, q, QuantType)} if q.overrides else {}
    if q.method == "percentile":
        extra["CalibPercentile"] = q.percentile
    check_quantizable(mspec, model, calibration, op_types)
    with _captured_logging() as log, tempfile.TemporaryDirectory(dir=workdir, prefix=".q.") as tmp:
        out = Path(tmp) / "fixed.onnx"
        try:
            reader, cache = _calibrate(float_model, calibration, q, op_types, Path(tmp), external)
            quantize_static(
                str(float_model), str(out), reader,
                quant_format=QuantFormat.QDQ,
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
                                f"{_first_line(exc)}")
            raise with_explanation(error, explain_quantizer_failure(mspec, model, calibration, exc,
                                                                    data_dir=float_model.parent)) from None
        _write_manifest(workdir, {**manifest, "fixed": ""})  # files are replaced one by one below
        if external:
            # The quantizer wrote its weights to <tmp>/fixed.onnx.data: renamed into place with the graph,
            # whose small tensors (scales, zero points) are inlined for match.py.
            fixed_graph = onnx.load(str(out), load_external_data=False)
            inline_small(fixed_graph, Path(tmp))
            publish(fixed_graph, Path(tmp), fixed, _atomic_save)
        else:
            os.replace(out, fixed)
            (workdir / data_name(fixed)).unlink(missing_ok=True)
        opts = _external_options(ort, data_name(offline)) if external else ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.optimized_model_filepath = str(Path(tmp) / "offline.onnx")
        try:
            ort.InferenceSession(str(fixed), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # the quantizer wrote a model ONNX Runtime rejects: say so, not a traceback
            raise mspec.error("quantization", f"ONNX Runtime cannot load the quantized model the quantizer wrote "
                              f"({fixed.name}): {_first_line(exc)}") from None
        # ONNX Runtime already named the side file offline.onnx.data: it is moved, and the graph file as written.
        publish(onnx.load(opts.optimized_model_filepath, load_external_data=False), Path(tmp), offline,
                lambda m, dest: os.replace(opts.optimized_model_filepath, dest))
    logs = tuple(dict.fromkeys(m for m in log if "pre-processing" not in m))
    _write_manifest(workdir, {**manifest, "fixed": key, "log": list(logs)})
    return Artifacts(workdir, float_model, fixed, offline, logs)


def model_inputs(float_model: Path):
    return input_infos(onnx.load(str(float_model), load_external_data=False))
