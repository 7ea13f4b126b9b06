"""What the user wrote, validated: the spec as frozen dataclasses (contract section 2).

Every later stage reads these; none of them reparses YAML. Imports neither onnx nor numpy.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import QuantaccInputError
from .dumps import DumpSpec
from .node import did_you_mean, shown
from .preprocess import Preprocess

SPEC_VERSION = 1


METHODS = ("minmax", "entropy", "percentile", "distribution")


ACTIVATION_TYPES = ("uint8", "int8", "uint16", "int16")


WEIGHT_TYPES = ("int8", "uint8", "int16", "uint16", "int4", "uint4")  # 4-bit: ONNX Runtime >= 1.18


FORMATS = ("qdq", "qoperator")  # ONNX Runtime's QuantFormat


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
    format: str = "qdq"
    # quantize_static's extra_options as canonical JSON (sorted keys): hashable, and covered by every cache key
    extra_options_json: str = "{}"

    def extra_options(self) -> dict:
        """The ``extra_options`` mapping as the user wrote it (checked against ONNX Runtime's table at conversion)."""
        return json.loads(self.extra_options_json)


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


GATE_LAYERS = ("accumulated", "own")
GATE_GRANULARITIES = ("tensor", "channel")


@dataclass(frozen=True)
class Gate:
    """What a layer item is judged on (contract section "Layer gate and masking-proof metrics").

    ``layers``: ``accumulated`` (the float-vs-fixed value, error of every layer before included: the contract's
    default) or ``own`` (the layer's quantized computation fed float inputs: a deep model whose error builds up
    gradually fails only where a layer adds error itself). ``granularity``: ``tensor`` or ``channel`` (every
    channel of a channel-first tensor judged on its own too). Concat outputs are judged per slice either way.
    """

    layers: str = "accumulated"
    granularity: str = "tensor"


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
    gate: Gate = field(default_factory=Gate)
    # A QDQ model another tool made from ``model``: compared as it is instead of our conversion (no calibration)
    quantized: Path | None = None

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

    def unmatched_pattern(self, nodes: list[str]) -> QuantaccInputError | None:
        """The first ``layers`` pattern or ``known_bad`` entry that matches none of the float model's ``nodes``.

        Both are silent when they match nothing: a typo in ``known_bad`` would quietly stop a layer from being
        xfailed, one in ``layers`` would quietly keep the model's default thresholds. So it is an error."""
        checks = [("layers", rule.pattern) for rule in self.layers]
        checks += [(f"known_bad[{i}].layer", kb.layer) for i, kb in enumerate(self.known_bad)]
        for key, pattern in checks:
            if not any(fnmatch.fnmatchcase(n, pattern) for n in nodes):
                return self.error(key, f"{shown(pattern)} matches no node of the float model"
                                       f"{did_you_mean(pattern, nodes)}; node names: {shown(nodes[:8])[1:-1]}"
                                       + (", ..." if len(nodes) > 8 else ""))
        return None

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
