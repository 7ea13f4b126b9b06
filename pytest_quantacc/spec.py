"""The YAML spec (contract section 2) as validated, frozen dataclasses.

Validation is strict on purpose: an unknown key is almost always a typo, and a typo that silently falls
back to a default would make a CI gate pass for the wrong reason. Every error names the spec file and the
key path (``models[0].quantization.method``) so the user can go straight to the line.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .dumps import DumpSpec, parse_dumps
from .errors import QuantaccInputError
from .pipeline import Preprocess, parse_preprocess

SPEC_VERSION = 1
METHODS = ("minmax", "entropy", "percentile")
ACTIVATION_TYPES = ("uint8", "int8", "uint16", "int16")
WEIGHT_TYPES = ("int8", "uint8", "int16", "uint16")
MODES = ("float", "fixed", "offline")
EXTRA_MODES = ("original",)  # opt-in: the user's own model on the user's own preprocessing (pipeline.py)


@dataclass(frozen=True)
class Thresholds:
    """A layer fails when cos < ``cos`` or rmse > ``rmse`` (contract section 4)."""

    cos: float = 0.99
    rmse: float = 0.1

    def passes(self, cos: float, rmse: float) -> bool:
        return cos >= self.cos and rmse <= self.rmse


@dataclass(frozen=True)
class LayerRule:
    """Per-layer thresholds for node names matching ``pattern`` (a name or a glob)."""

    pattern: str
    thresholds: Thresholds


@dataclass(frozen=True)
class KnownBad:
    """A layer expected to fail: its test becomes xfail; ``strict`` turns an unexpected pass into a failure."""

    layer: str
    reason: str
    strict: bool = False

    def matches(self, layer: str) -> bool:
        return fnmatch.fnmatchcase(layer, self.layer)


@dataclass(frozen=True)
class DataSpec:
    path: Path
    key: str  # key path in the spec, for error messages
    limit: int | None = None
    labels: Path | None = None  # evaluation only: one label per sample (.npy), for task accuracy
    output: str | None = None  # evaluation only: the model output task accuracy reads (default: first float one)


@dataclass(frozen=True)
class Override:
    """Per-node precision: the node's output activations and/or its weights in another type."""

    node: str
    activations: str | None = None
    weights: str | None = None


@dataclass(frozen=True)
class Quantization:
    method: str = "minmax"
    percentile: float = 99.999
    per_channel: bool = False
    reduce_range: bool = False
    activations: str = "uint8"
    weights: str = "int8"
    exclude_nodes: tuple[str, ...] = ()
    exclude_op_types: tuple[str, ...] = ()
    overrides: tuple[Override, ...] = ()


@dataclass(frozen=True)
class OfflineGate:
    """Fixed vs offline agreement gate.

    ONNX Runtime's fused integer kernels round differently from fake-quant, so a healthy model shows
    small differences; an element counts as a mismatch only beyond ``tolerance_steps`` quantization steps,
    and the item fails when the worst tensor's mismatch rate exceeds ``max_mismatch_rate``.
    """

    tolerance_steps: int = 2
    max_mismatch_rate: float = 0.01


@dataclass(frozen=True)
class AccuracyGate:
    """Task accuracy: the deployable model may lose at most ``max_drop`` of the float model's accuracy.

    Layer metrics say where quantization hurts; this is what the product owner signs off on ("keep the
    accuracy loss within 1%"). ``metric`` is ``top1`` or a user function given as ``module.py:function``
    (``module`` resolved against the spec's folder).
    """

    max_drop: float
    metric: str = "top1"
    module: Path | None = None  # set when metric is a user function
    function: str | None = None


@dataclass(frozen=True)
class BaselineGate:
    """The ratchet: a layer may not get worse than its recorded baseline by more than these tolerances.

    ``None`` means the ini default (``quantacc_baseline_tolerance_cos`` / ``_rmse``); ``required`` turns a
    missing baseline into a failure instead of a note.
    """

    cos: float | None = None
    rmse: float | None = None
    required: bool = False


@dataclass(frozen=True)
class ModelSpec:
    name: str
    index: int
    spec_path: Path
    model: Path
    calibration: DataSpec
    evaluation: DataSpec
    quantization: Quantization
    modes: tuple[str, ...]
    thresholds: Thresholds
    layers: tuple[LayerRule, ...] = ()
    known_bad: tuple[KnownBad, ...] = ()
    offline: OfflineGate = field(default_factory=OfflineGate)
    dumps: tuple[DumpSpec, ...] = ()  # modes whose tensors come from dumps instead of ONNX Runtime
    preprocess: Preprocess | None = None  # deployment input folded into the float model
    accuracy: AccuracyGate | None = None
    baseline: BaselineGate = field(default_factory=BaselineGate)

    @property
    def key(self) -> str:
        return f"models[{self.index}]"

    def thresholds_for(self, layer: str) -> Thresholds:
        """The first ``layers`` rule whose pattern matches the node name wins; else the model's thresholds."""
        for rule in self.layers:
            if fnmatch.fnmatchcase(layer, rule.pattern):
                return rule.thresholds
        return self.thresholds

    def known_bad_for(self, layer: str) -> KnownBad | None:
        return next((kb for kb in self.known_bad if kb.matches(layer)), None)

    def error(self, key: str, problem: str) -> QuantaccInputError:
        """An input error located at ``models[i].<key>`` of this model's spec file."""
        return QuantaccInputError(self.spec_path, f"{self.key}.{key}" if key else self.key, problem)


@dataclass(frozen=True)
class BrokenModel:
    """A model entry that failed validation; the other entries of the spec still run."""

    index: int
    name: str
    error: QuantaccInputError


@dataclass(frozen=True)
class Spec:
    path: Path
    models: tuple[ModelSpec, ...]
    broken: tuple[BrokenModel, ...] = ()


class _Node:
    """A position in the parsed YAML, so every check can name its key path."""

    def __init__(self, spec: Path, key: str, value: Any) -> None:
        self.spec, self.key, self.value = spec, key, value

    def fail(self, problem: str) -> QuantaccInputError:
        return QuantaccInputError(self.spec, self.key, problem)

    def child(self, name: str | int) -> _Node:
        key = f"{self.key}[{name}]" if isinstance(name, int) else (f"{self.key}.{name}" if self.key else name)
        return _Node(self.spec, key, self.value[name])

    def mapping(self, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> dict[str, _Node]:
        if not isinstance(self.value, Mapping):
            raise self.fail(f"expected a mapping, got {_kind(self.value)}")
        for k in self.value:
            if not isinstance(k, str) or k not in allowed:
                hint = _close(str(k), allowed)
                raise _Node(self.spec, self._sub(k), None).fail(
                    f"unknown key{hint}; allowed here: {', '.join(allowed)}"
                )
        for k in required:
            if k not in self.value:
                raise _Node(self.spec, self._sub(k), None).fail("required key is missing")
        return {k: self.child(k) for k in self.value}

    def _sub(self, k: Any) -> str:
        return f"{self.key}.{k}" if self.key else str(k)

    def sequence(self) -> list[_Node]:
        if not isinstance(self.value, list):
            raise self.fail(f"expected a list, got {_kind(self.value)}")
        return [self.child(i) for i in range(len(self.value))]

    def string(self) -> str:
        if not isinstance(self.value, str) or not self.value:
            raise self.fail(f"expected a non-empty string, got {_kind(self.value)}")
        return self.value

    def strings(self) -> tuple[str, ...]:
        return tuple(n.string() for n in self.sequence())

    def boolean(self) -> bool:
        if not isinstance(self.value, bool):
            raise self.fail(f"expected true or false, got {_kind(self.value)}")
        return self.value

    def number(self, lo: float, hi: float) -> float:
        v = self.value
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and math.isnan(v)):
            raise self.fail(f"expected a number, got {_kind(v)}")
        if not lo <= v <= hi:
            raise self.fail(f"{v} is out of range [{lo}, {hi}]")
        return float(v)

    def integer(self, lo: int) -> int:
        v = self.value
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.fail(f"expected a whole number, got {_kind(v)}")
        if v < lo:
            raise self.fail(f"{v} is below the minimum {lo}")
        return v

    def choice(self, options: tuple[str, ...]) -> str:
        if self.value not in options:
            raise self.fail(f"{self.value!r} is not one of {', '.join(options)}{_close(str(self.value), options)}")
        return self.value

    def path(self, must_exist: bool = True) -> Path:
        text = self.string()
        try:
            p = (self.spec.parent / text).resolve()
            exists = p.exists()
        except (OSError, ValueError) as exc:  # NUL bytes, names too long for the file system
            raise self.fail(f"not a usable path ({exc})") from None
        if must_exist and not exists:
            raise self.fail(f"file not found: {p}")
        return p


def _kind(v: Any) -> str:
    if v is None:
        return "nothing (null)"
    return f"{type(v).__name__} {v!r}" if not isinstance(v, (dict, list)) else type(v).__name__


def _close(word: str, options: tuple[str, ...]) -> str:
    import difflib

    hits = difflib.get_close_matches(word, options, n=1)
    return f" (did you mean {hits[0]!r}?)" if hits else ""


def _deep_merge(base: Any, over: Any) -> Any:
    if isinstance(base, Mapping) and isinstance(over, Mapping):
        out = dict(base)
        for k, v in over.items():
            out[k] = _deep_merge(base[k], v) if k in base else v
        return out
    return over


def _thresholds(node: _Node, base: Thresholds) -> Thresholds:
    m = node.mapping(("cos", "rmse"))
    return Thresholds(
        cos=m["cos"].number(-1.0, 1.0) if "cos" in m else base.cos,
        rmse=m["rmse"].number(0.0, math.inf) if "rmse" in m else base.rmse,
    )


def _data(node: _Node, extra: tuple[str, ...] = ()) -> DataSpec:
    m = node.mapping(("data", "limit", *extra), required=("data",))
    return DataSpec(
        path=m["data"].path(),
        key=m["data"].key,
        limit=m["limit"].integer(1) if "limit" in m else None,
        labels=m["labels"].path() if "labels" in m else None,
        output=m["output"].string() if "output" in m else None,
    )


def _accuracy(node: _Node, evaluation: DataSpec) -> AccuracyGate:
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
    path = _Node(node.spec, m["metric"].key, module).path()
    return AccuracyGate(max_drop, text, path, function)


def _baseline(node: _Node) -> BaselineGate:
    m = node.mapping(("tolerance", "required"))
    tol = m["tolerance"].mapping(("cos", "rmse")) if "tolerance" in m else {}
    return BaselineGate(
        cos=tol["cos"].number(0.0, 2.0) if "cos" in tol else None,
        rmse=tol["rmse"].number(0.0, math.inf) if "rmse" in tol else None,
        required=m["required"].boolean() if "required" in m else False,
    )


def _quantization(node: _Node) -> Quantization:
    keys = ("method", "percentile", "per_channel", "reduce_range", "activations", "weights", "exclude_nodes",
            "exclude_op_types", "overrides")
    m = node.mapping(keys)
    d = Quantization()
    overrides = []
    if "overrides" in m:
        om = m["overrides"]
        if not isinstance(om.value, Mapping):
            raise om.fail(f"expected a mapping of node name to settings, got {_kind(om.value)}")
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


def _model(node: _Node, index: int, spec: Path) -> ModelSpec:
    keys = ("name", "model", "calibration", "evaluation", "quantization", "modes", "thresholds", "layers",
            "known_bad", "offline", "dumps", "preprocess", "accuracy", "baseline")
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
            raise lm.fail(f"expected a mapping of layer name or glob to thresholds, got {_kind(lm.value)}")
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
    )


def _check_extensions(m: dict[str, _Node], modes: tuple[str, ...], dumps: tuple[DumpSpec, ...],
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
    root = _Node(path, "", raw)
    if not isinstance(raw, Mapping):
        raise root.fail(f"a spec is a mapping with keys 'quantacc' and 'models', got {_kind(raw)}")
    top = root.mapping(("quantacc", "defaults", "models"), required=("quantacc", "models"))
    if type(top["quantacc"].value) is not int or top["quantacc"].value != SPEC_VERSION:
        raise top["quantacc"].fail(f"unsupported spec version {top['quantacc'].value!r}; this plugin reads version 1")
    defaults = top["defaults"].value if "defaults" in top else {}
    if defaults is not None and not isinstance(defaults, Mapping):
        raise top["defaults"].fail(f"expected a mapping, got {_kind(defaults)}")
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
                raise entry.fail(f"expected a mapping, got {_kind(entry.value)}")
            if label in seen:
                raise _Node(path, f"{entry.key}.name", name).fail(
                    f"duplicate model name {label!r} (also models[{seen[label]}])")
            seen[label] = i
            models.append(_model(_Node(path, entry.key, merged_value), i, path))
        except QuantaccInputError as exc:
            broken.append(BrokenModel(i, label if label not in seen or seen[label] == i else f"models[{i}]", exc))
    return Spec(path=path, models=tuple(models), broken=tuple(broken))
