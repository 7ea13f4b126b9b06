"""The YAML spec (contract section 2) read into :mod:`.model`'s dataclasses.

Validation is strict on purpose: an unknown key is almost always a typo, and a typo that silently falls
back to a default would make a CI gate pass for the wrong reason. Every error names the spec file and the
key path (``models[0].quantization.method``) so the user can go straight to the line.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any
import yaml

from ..errors import QuantaccInputError
from .dumps import DumpSpec, parse_dumps
from .model import ACTIVATION_TYPES, AccuracyGate, BaselineGate, BrokenModel, DataSpec, EXTRA_MODES, GATE_GRANULARITIES, GATE_LAYERS, Gate, KnownBad, LayerRule, METHODS, MODES, ModelSpec, OfflineGate, Override, Quantization, SPEC_VERSION, Spec, Thresholds, WEIGHT_TYPES
from .node import Node, kind_of
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


def _data(node: Node, extra: tuple[str, ...] = ()) -> DataSpec:
    m = node.mapping(("data", "limit", *extra), required=("data",))
    return DataSpec(
        path=m["data"].path(),
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
        raise m["metric"].fail(f"{text!r}: expected top1 or a user function as module.py:function")
    path = Node(node.spec, m["metric"].key, module).path()
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
            "exclude_op_types", "overrides")
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
    )


def _model(node: Node, index: int, spec: Path) -> ModelSpec:
    keys = ("name", "model", "calibration", "evaluation", "quantization", "modes", "thresholds", "layers",
            "known_bad", "offline", "dumps", "preprocess", "accuracy", "baseline", "gate")
    m = node.mapping(keys, required=("name", "model", "calibration"))
    name = m["name"].string()
    if any(c in name for c in "[]/:") or name.strip() != name:
        raise m["name"].fail(f"{name!r} may not contain '[', ']', '/', ':' or surrounding spaces (it is part of test ids)")
    calibration = _data(m["calibration"])
    modes = MODES
    dumps = parse_dumps(m["dumps"]) if "dumps" in m else ()
    if dumps:
        modes = ("float", "fixed")  # the dumps replace ONNX Runtime's quantized model
    if "modes" in m:
        modes = tuple(n.choice(MODES + EXTRA_MODES) for n in m["modes"].sequence())
        if len(set(modes)) != len(modes) or len(modes) < 2:
            raise m["modes"].fail("list at least two different modes (a comparison needs two sides)")
    preprocess = parse_preprocess(m["preprocess"]) if "preprocess" in m else None
    _check_extensions(m, modes, dumps, preprocess)
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
        quantization=_quantization(m["quantization"]) if "quantization" in m else Quantization(),
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
    )


def _check_extensions(m: dict[str, Node], modes: tuple[str, ...], dumps: tuple[DumpSpec, ...],
                      preprocess: Preprocess | None) -> None:
    """Mode combinations the dump backend and the pipeline check can actually run."""
    where = m["modes"] if "modes" in m else m["name"]
    if dumps and set(modes) - {"float", "fixed"}:
        raise where.fail("with 'dumps', the modes are float and fixed (the dumps stand for fixed); "
                         "offline and original run ONNX Runtime's own models")
    if dumps and preprocess is not None:
        raise m["preprocess"].fail("'preprocess' and 'dumps' cannot be combined (the dumps have their own input)")
    if "original" in modes:
        if preprocess is None or preprocess.hook is None:
            raise where.fail("mode 'original' needs preprocess.hook: the user's own preprocessing "
                             "(module.py:function) that feeds the original model")
        if "float" not in modes:
            raise where.fail("mode 'original' is compared with mode 'float'; list both")


def load_spec(path: str | Path) -> Spec:
    """Read and validate a spec file; raises ``QuantaccInputError`` naming the file and key on any problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise QuantaccInputError(path, "", f"cannot read the spec: {exc}") from None
    try:
        raw = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError) as exc:
        raise QuantaccInputError(path, "", f"not valid YAML: {exc or 'nested too deeply'}") from None
    root = Node(path, "", raw)
    if not isinstance(raw, Mapping):
        raise root.fail(f"a spec is a mapping with keys 'quantacc' and 'models', got {kind_of(raw)}")
    top = root.mapping(("quantacc", "defaults", "models"), required=("quantacc", "models"))
    if type(top["quantacc"].value) is not int or top["quantacc"].value != SPEC_VERSION:
        raise top["quantacc"].fail(f"unsupported spec version {top['quantacc'].value!r}; this plugin reads version 1")
    defaults = top["defaults"].value if "defaults" in top else {}
    if defaults is not None and not isinstance(defaults, Mapping):
        raise top["defaults"].fail(f"expected a mapping, got {kind_of(defaults)}")
    entries = top["models"].sequence()
    if not entries:
        raise top["models"].fail("the list is empty; name at least one model")
    models: list[ModelSpec] = []
    broken: list[BrokenModel] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        merged_value = _deep_merge(defaults or {}, entry.value) if isinstance(entry.value, Mapping) else entry.value
        name = merged_value.get("name") if isinstance(merged_value, Mapping) else None
        label = name if isinstance(name, str) and name else f"models[{i}]"
        try:
            if not isinstance(entry.value, Mapping):
                raise entry.fail(f"expected a mapping, got {kind_of(entry.value)}")
            if label in seen:
                raise Node(path, f"{entry.key}.name", name).fail(
                    f"duplicate model name {label!r} (also models[{seen[label]}])")
            seen[label] = i
            models.append(_model(Node(path, entry.key, merged_value), i, path))
        except QuantaccInputError as exc:
            broken.append(BrokenModel(i, label if label not in seen or seen[label] == i else f"models[{i}]", exc))
    return Spec(path=path, models=tuple(models), broken=tuple(broken))
