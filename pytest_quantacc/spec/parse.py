"""The YAML spec (contract section 2) read into :mod:`.model`'s dataclasses.

Validation is strict on purpose: an unknown key is almost always a typo, and a typo that silently falls
back to a default would make a CI gate pass for the wrong reason. Every error names the spec file and the
key path (``models[0].quantization.method``) so the user can go straight to the line.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from ..errors import QuantaccInputError
from .dumps import DumpSpec, parse_dumps
from .model import (
    ACTIVATION_TYPES,
    EXTRA_MODES,
    FORMATS,
    GATE_GRANULARITIES,
    GATE_LAYERS,
    METHODS,
    MODES,
    SPEC_VERSION,
    WEIGHT_TYPES,
    AccuracyGate,
    BaselineGate,
    BrokenModel,
    DataSpec,
    Gate,
    KnownBad,
    LayerRule,
    ModelSpec,
    OfflineGate,
    Override,
    Quantization,
    Spec,
    Thresholds,
)
from .node import FILE, FILE_OR_FOLDER, Node, kind_of, larger_than, path_problem, read_bounded, shown, shown_path
from .preprocess import Preprocess, parse_preprocess


def _deep_merge(base: Any, over: Any) -> Any:
    if isinstance(base, Mapping) and isinstance(over, Mapping):
        out = dict(base)
        for k, v in over.items():
            out[k] = _deep_merge(base[k], v) if k in base else v
        return out
    return over


def _thresholds(node: Node, base: Thresholds) -> Thresholds:
    m = node.mapping(("cos", "rmse"))
    return Thresholds(
        cos=m["cos"].number(-1.0, 1.0) if "cos" in m else base.cos,
        rmse=m["rmse"].number(0.0, math.inf) if "rmse" in m else base.rmse,
    )


MAX_SPEC_BYTES = 16 << 20  # a spec (or a dequantize file) larger than this is not something a person wrote


MAX_NAME_BYTES = 100  # a model name is a folder name and part of a lock file name and of test ids


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a model name (it is a folder under the spec's work folder and part of test ids),
    or None. Checked before the name reaches the file system, so nothing escapes the per-spec work folder."""
    if any(c in name for c in "[]/:\\") or name.strip() != name:
        return ("may not contain '[', ']', '/', '\\', ':' or surrounding spaces (it is part of test ids and a "
                "folder name)")
    if name in (".", ".."):
        return "may not be '.' or '..' (it names the model's folder)"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "may not contain control characters such as NUL or a line break (it names the model's folder)"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return "is not valid text (it names the model's folder)"
    if size > MAX_NAME_BYTES:
        return f"is {size} bytes long; at most {MAX_NAME_BYTES} (it names the model's folder)"
    return None


def _data_path(node: Node) -> Path:
    """A .npz file, or a folder whose .npz entries are all regular files (one sample each)."""
    path = node.path(want=FILE_OR_FOLDER)
    if path.is_dir():
        try:
            entries = sorted(e for e in path.iterdir() if e.suffix == ".npz")
        except OSError as exc:
            raise node.fail(f"cannot list the folder {shown_path(path)}: {exc.strerror or exc}") from None
        for entry in entries:
            problem = path_problem(entry, FILE)
            if problem is not None:
                raise node.fail(f"{shown_path(entry)} {problem} (every .npz in a data folder is one sample file)")
    return path


def _data(node: Node, extra: tuple[str, ...] = ()) -> DataSpec:
    m = node.mapping(("data", "limit", *extra), required=("data",))
    return DataSpec(
        path=_data_path(m["data"]),
        key=m["data"].key,
        limit=m["limit"].integer(1) if "limit" in m else None,
        labels=m["labels"].path() if "labels" in m else None,
        output=m["output"].string() if "output" in m else None,
    )


def _accuracy(node: Node, evaluation: DataSpec) -> AccuracyGate:
    m = node.mapping(("max_drop", "metric"), required=("max_drop",))
    if evaluation.labels is None:
        raise node.fail("task accuracy needs labels: add evaluation.labels (a .npy file, one label per sample)")
    max_drop = m["max_drop"].number(0.0, math.inf)  # in the metric's units (a user metric may not be a fraction)
    if "metric" not in m or m["metric"].value == "top1":
        return AccuracyGate(max_drop)
    text = m["metric"].string()
    module, _, function = text.rpartition(":")
    if not module.endswith(".py") or not function.isidentifier():
        raise m["metric"].fail(f"{shown(text)}: expected top1 or a user function as module.py:function")
    path = Node(node.spec, m["metric"].key, module).path(want=FILE)
    return AccuracyGate(max_drop, text, path, function)


def _baseline(node: Node) -> BaselineGate:
    m = node.mapping(("tolerance", "required"))
    tol = m["tolerance"].mapping(("cos", "rmse")) if "tolerance" in m else {}
    return BaselineGate(
        cos=tol["cos"].number(0.0, 2.0) if "cos" in tol else None,
        rmse=tol["rmse"].number(0.0, math.inf) if "rmse" in tol else None,
        required=m["required"].boolean() if "required" in m else False,
    )


def _gate(node: Node) -> Gate:
    m = node.mapping(("layers", "granularity"))
    d = Gate()
    return Gate(layers=m["layers"].choice(GATE_LAYERS) if "layers" in m else d.layers,
                granularity=m["granularity"].choice(GATE_GRANULARITIES) if "granularity" in m else d.granularity)


def _quantization(node: Node) -> Quantization:
    keys = ("method", "percentile", "per_channel", "reduce_range", "activations", "weights", "exclude_nodes",
            "exclude_op_types", "overrides", "format", "extra_options")
    m = node.mapping(keys)
    d = Quantization()
    overrides = []
    if "overrides" in m:
        om = m["overrides"]
        if not isinstance(om.value, Mapping):
            raise om.fail(f"expected a mapping of node name to settings, got {kind_of(om.value)}")
        for name in om.value:
            o = om.child(name).mapping(("activations", "weights"))
            overrides.append(Override(
                node=str(name),
                activations=o["activations"].choice(ACTIVATION_TYPES) if "activations" in o else None,
                weights=o["weights"].choice(WEIGHT_TYPES) if "weights" in o else None,
            ))
    return Quantization(
        method=m["method"].choice(METHODS) if "method" in m else d.method,
        percentile=m["percentile"].number(50.0, 100.0) if "percentile" in m else d.percentile,
        per_channel=m["per_channel"].boolean() if "per_channel" in m else d.per_channel,
        reduce_range=m["reduce_range"].boolean() if "reduce_range" in m else d.reduce_range,
        activations=m["activations"].choice(ACTIVATION_TYPES) if "activations" in m else d.activations,
        weights=m["weights"].choice(WEIGHT_TYPES) if "weights" in m else d.weights,
        exclude_nodes=m["exclude_nodes"].strings() if "exclude_nodes" in m else (),
        exclude_op_types=m["exclude_op_types"].strings() if "exclude_op_types" in m else (),
        overrides=tuple(overrides),
        format=m["format"].choice(FORMATS) if "format" in m else d.format,
        extra_options_json=_extra_options(m["extra_options"]) if "extra_options" in m else d.extra_options_json,
    )


def _extra_options(node: Node) -> str:
    """``extra_options`` as canonical JSON. Names and values are checked against ONNX Runtime's table when the
    model is converted (convert/ort_options.py needs onnxruntime's types, which the spec layer does not import)."""
    if not isinstance(node.value, Mapping) or not all(isinstance(k, str) for k in node.value):
        raise node.fail(f"expected a mapping of ONNX Runtime quantize_static extra_options (name: value), "
                        f"got {kind_of(node.value)}")
    if larger_than(node.value, 10_000):  # a YAML alias bomb would expand to billions of values here
        raise node.fail("more than 10,000 values: not ONNX Runtime options (a YAML alias bomb?)")
    try:
        return json.dumps(node.value, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise node.fail(f"values must be numbers, strings, booleans, lists or mappings ({exc})") from None


def _model(node: Node, index: int, spec: Path, own: Mapping | None = None) -> ModelSpec:
    """One model entry (``node``: merged with the defaults; ``own``: the entry as written, when it differs)."""
    keys = ("name", "model", "calibration", "evaluation", "quantization", "modes", "thresholds", "layers",
            "known_bad", "offline", "dumps", "preprocess", "accuracy", "baseline", "gate", "quantized")
    quantized = isinstance(node.value, Mapping) and "quantized" in node.value
    m = node.mapping(keys, required=("name", "model") + (("evaluation",) if quantized else ("calibration",)))
    name = m["name"].string()
    problem = name_problem(name)
    if problem is not None:
        raise m["name"].fail(f"{shown(name)} {problem}")
    if quantized:
        _check_quantized(m, own if own is not None else node.value)
    calibration = _data(m["calibration"]) if "calibration" in m else _data(m["evaluation"], ("labels", "output"))
    modes = MODES
    dumps = parse_dumps(m["dumps"]) if "dumps" in m else ()
    if dumps:
        modes = ("float", dumps[0].mode)  # the dumps replace ONNX Runtime's model of that mode
    qoperator = not quantized and _format(m) == "qoperator"
    if qoperator:
        modes = ("float", "offline")  # integer kernels only: nothing runs as fake-quant
    if "modes" in m:
        modes = tuple(n.choice(MODES + EXTRA_MODES) for n in m["modes"].sequence())
        if len(set(modes)) != len(modes) or len(modes) < 2:
            raise m["modes"].fail("list at least two different modes (a comparison needs two sides)")
    preprocess = parse_preprocess(m["preprocess"]) if "preprocess" in m else None
    _check_extensions(m, modes, dumps, preprocess)
    if qoperator and ("fixed" in modes or dumps):
        raise (m["dumps"] if dumps else m["modes"]).fail(
            "with quantization.format: qoperator the modes are float and offline: a QOperator model has only "
            "integer kernels, nothing to run as fake-quant (fixed) or to compare with dumps")
    thresholds = _thresholds(m["thresholds"], Thresholds()) if "thresholds" in m else Thresholds()
    rules = []
    if "layers" in m:
        lm = m["layers"]
        if not isinstance(lm.value, Mapping):
            raise lm.fail(f"expected a mapping of layer name or glob to thresholds, got {kind_of(lm.value)}")
        rules = [LayerRule(str(k), _thresholds(lm.child(k), thresholds)) for k in lm.value]
    known_bad = []
    for kb in (m["known_bad"].sequence() if "known_bad" in m else []):
        km = kb.mapping(("layer", "reason", "strict"), required=("layer", "reason"))
        known_bad.append(KnownBad(km["layer"].string(), km["reason"].string(),
                                  km["strict"].boolean() if "strict" in km else False))
    offline = OfflineGate()
    if "offline" in m:
        om = m["offline"].mapping(("tolerance_steps", "max_mismatch_rate"))
        offline = OfflineGate(
            tolerance_steps=om["tolerance_steps"].integer(0) if "tolerance_steps" in om else offline.tolerance_steps,
            max_mismatch_rate=(om["max_mismatch_rate"].number(0.0, 1.0) if "max_mismatch_rate" in om
                               else offline.max_mismatch_rate),
        )
    evaluation = _data(m["evaluation"], ("labels", "output")) if "evaluation" in m else calibration
    return ModelSpec(
        name=name,
        index=index,
        spec_path=spec,
        model=m["model"].path(),
        calibration=calibration,
        evaluation=evaluation,
        quantization=_quantization(m["quantization"]) if "quantization" in m and not quantized else Quantization(),
        modes=modes,
        thresholds=thresholds,
        layers=tuple(rules),
        known_bad=tuple(known_bad),
        offline=offline,
        dumps=dumps,
        preprocess=preprocess,
        accuracy=_accuracy(m["accuracy"], evaluation) if "accuracy" in m else None,
        baseline=_baseline(m["baseline"]) if "baseline" in m else BaselineGate(),
        gate=_gate(m["gate"]) if "gate" in m else Gate(),
        quantized=m["quantized"].path() if quantized else None,
    )


def _format(m: dict[str, Node]) -> str:
    q = m.get("quantization")
    if q is None or not isinstance(q.value, Mapping) or "format" not in q.value:
        return "qdq"
    return q.child("format").choice(FORMATS)


def _check_quantized(m: dict[str, Node], own: Mapping) -> None:
    """``quantized`` replaces our conversion: settings that drive the conversion (or another backend) cannot apply.

    ``quantization`` inherited from ``defaults`` is ignored for such an entry; written in the entry itself it is an
    error, as any setting that would silently do nothing.
    """
    if "quantization" in own:
        raise m["quantization"].fail("'quantization' configures our conversion; with 'quantized' the model is "
                                     "already quantized by your tool (remove one of the two)")
    for key, why in (("dumps", "the dumps stand for the fixed model"),
                     ("preprocess", "the quantized model was made without the folded preprocessing")):
        if key in m:
            raise m[key].fail(f"'{key}' cannot be combined with 'quantized' ({why})")


def _check_extensions(m: dict[str, Node], modes: tuple[str, ...], dumps: tuple[DumpSpec, ...],
                      preprocess: Preprocess | None) -> None:
    """Mode combinations the dump backend and the pipeline check can actually run."""
    where = m["modes"] if "modes" in m else m["name"]
    if dumps and set(modes) - {"float", dumps[0].mode}:
        raise where.fail(f"with 'dumps', the modes are float and {dumps[0].mode} (the dumps stand for "
                         f"{dumps[0].mode}); the other modes run ONNX Runtime's own models")
    if dumps and preprocess is not None:
        raise m["preprocess"].fail("'preprocess' and 'dumps' cannot be combined (the dumps have their own input)")
    if "original" in modes:
        if preprocess is None or preprocess.hook is None:
            raise where.fail("mode 'original' needs preprocess.hook: the user's own preprocessing "
                             "(module.py:function) that feeds the original model")
        if "float" not in modes:
            raise where.fail("mode 'original' is compared with mode 'float'; list both")


def load_spec(path: str | Path) -> Spec:
    """Read and validate a spec file; raises ``QuantaccInputError`` naming the file, key and line on any problem."""
    path = Path(path)
    try:
        spec = _load_spec(path)
    except QuantaccInputError as exc:
        raise _located(exc, path, _composed(path)) from None
    if not spec.broken:
        return spec
    tree = _composed(path)  # once for all the broken entries (a large spec with many of them)
    return replace(spec, broken=tuple(replace(b, error=_located(b.error, path, tree)) for b in spec.broken))


_KEY_TOKEN = re.compile(r"\[(\d+)\]|([^.\[\]]+)")


def _composed(path: Path) -> yaml.Node | None:
    """The spec's YAML as nodes (lines known, nothing constructed), read as boundedly as the spec itself; None
    when it cannot be read or parsed (the error then goes without a line)."""
    try:
        return yaml.compose(read_bounded(path, MAX_SPEC_BYTES, lambda why: OSError(why)).decode("utf-8"))
    except Exception:  # OSError, UnicodeDecodeError, YAMLError, RecursionError: no line to add
        return None


def _located(exc: QuantaccInputError, path: Path, node: yaml.Node | None) -> QuantaccInputError:
    """The error with the line of its key path in the spec file (the deepest part of the path that is there:
    a key inherited from ``defaults`` points at its entry); ``node``: the spec composed by ``_composed``."""
    if exc.line is not None or exc.spec != str(path) or node is None:
        return exc
    tokens = [int(i) if i else k for i, k in _KEY_TOKEN.findall(exc.key)]
    line = node.start_mark.line if node is not None else None
    i = 0
    while node is not None and i < len(tokens):
        if isinstance(node, yaml.SequenceNode) and isinstance(tokens[i], int) and tokens[i] < len(node.value):
            node, i = node.value[tokens[i]], i + 1
        elif isinstance(node, yaml.MappingNode):
            # a key may itself hold dots (extra.Sigmoid.nnapi): the longest run of tokens that is a key wins
            keys = {k.value: (k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode)}
            run = next((j for j in range(len(tokens), i, -1)
                        if ".".join(str(t) for t in tokens[i:j]) in keys), None)
            if run is None:
                break
            key_node, node = keys[".".join(str(t) for t in tokens[i:run])]
            line, i = key_node.start_mark.line, run
            continue
        else:
            break
        line = node.start_mark.line
    if line is None:
        return exc
    return QuantaccInputError(exc.spec, exc.key, exc.problem, line + 1)


def _load_spec(path: Path) -> Spec:
    def unreadable(why: str) -> QuantaccInputError:
        return QuantaccInputError(path, "", f"cannot read the spec: {why}")

    try:
        text = read_bounded(path, MAX_SPEC_BYTES, unreadable).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise unreadable(str(exc)) from None
    try:
        raw = yaml.safe_load(text)
    except Exception as exc:  # YAMLError, RecursionError, ValueError (an integer beyond str()'s digit limit), ...
        raise QuantaccInputError(path, "", f"not valid YAML: {str(exc)[:500] or 'nested too deeply'}") from None
    root = Node(path, "", raw)
    if not isinstance(raw, Mapping):
        raise root.fail(f"a spec is a mapping with keys 'quantacc' and 'models', got {kind_of(raw)}")
    top = root.mapping(("quantacc", "defaults", "models"), required=("quantacc", "models"))
    if type(top["quantacc"].value) is not int or top["quantacc"].value != SPEC_VERSION:
        raise top["quantacc"].fail(f"unsupported spec version {shown(top['quantacc'].value)}; "
                                   f"this plugin reads version 1")
    defaults = top["defaults"].value if "defaults" in top else {}
    if defaults is not None and not isinstance(defaults, Mapping):
        raise top["defaults"].fail(f"expected a mapping, got {kind_of(defaults)}")
    if larger_than(defaults, 100_000):  # merged into every entry: aliases could make that billions of steps
        raise top["defaults"].fail("more than 100,000 values (a YAML alias bomb?); defaults are a few settings")
    entries = top["models"].sequence()
    if not entries:
        raise top["models"].fail("the list is empty; name at least one model")
    models: list[ModelSpec] = []
    broken: list[BrokenModel] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        merged_value = _deep_merge(defaults or {}, entry.value) if isinstance(entry.value, Mapping) else entry.value
        name = merged_value.get("name") if isinstance(merged_value, Mapping) else None
        label = name if isinstance(name, str) and name and name_problem(name) is None else f"models[{i}]"
        try:
            if not isinstance(entry.value, Mapping):
                raise entry.fail(f"expected a mapping, got {kind_of(entry.value)}")
            if label in seen:
                raise Node(path, f"{entry.key}.name", name).fail(
                    f"duplicate model name {shown(label)} (also models[{seen[label]}])")
            seen[label] = i
            models.append(_model(Node(path, entry.key, merged_value), i, path, entry.value))
        except QuantaccInputError as exc:
            broken.append(BrokenModel(i, label if label not in seen or seen[label] == i else f"models[{i}]", exc))
    return Spec(path=path, models=tuple(models), broken=tuple(broken))
