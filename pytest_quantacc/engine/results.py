"""Every result type, in one place: what evaluation measured and how each check came out.

Data only (frozen dataclasses and their read-only views); the rules that decide a status are in
:mod:`.judge`. Every stage after evaluation (diagnosis, remedies, cache, reports, the pytest layer) reads
these types, so they import nothing above the spec, the graph helpers and the metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from ..convert.prepare import PreparedModel
from ..convert.workdir import Artifacts
from ..errors import QuantaccInputError
from ..graph.match import Layer
from ..spec.model import KnownBad, ModelSpec, Thresholds
from .metrics import Agreement, Summary
from .slices import PartMetrics, PartsSummary

Status = Literal["passed", "failed", "xfailed", "xpassed", "skipped"]
PASSED: Status = "passed"
FAILED: Status = "failed"
XFAILED: Status = "xfailed"
XPASSED: Status = "xpassed"
SKIPPED: Status = "skipped"

DiagnosisKind = Literal["abrupt", "gradual"]
GateUse = Literal["accumulated", "own"]
StatsRole = Literal["output", "input", "weights", "input producer weights"]
CacheUse = Literal["computed", "reused", "off"]  # inference ran / stored metrics re-judged / --quantacc-no-cache
BaselineVerdict = Literal["regressed", "improved", "same"]
REGRESSED: BaselineVerdict = "regressed"
IMPROVED: BaselineVerdict = "improved"
SAME: BaselineVerdict = "same"


@dataclass(frozen=True)
class LayerResult:
    """One compared tensor: where it is, its metrics over samples, and its outcome."""

    layer: Layer
    summary: Summary | None
    thresholds: Thresholds
    status: Status
    reason: str | None = None  # why skipped, or the known_bad reason
    known_bad: KnownBad | None = None
    inherited_from: str | None = None  # set by diagnosis when the failure comes from an upstream known_bad
    own: Summary | None = None  # the layer's own error: its quantized computation fed with float inputs
    parts: tuple[PartsSummary, ...] = ()  # accumulated metrics per Concat slice / per channel (engine.slices)
    own_parts: tuple[PartsSummary, ...] = ()  # the own error, per the same parts
    diverges: bool = False  # the accumulated metrics (whole or a part) break the thresholds: set by judge
    gate: GateUse = "accumulated"  # which metrics decided the status (spec gate.layers; outputs: accumulated)

    @property
    def breaks(self) -> bool:
        """The judged metrics break the thresholds (whether or not the layer is known bad)."""
        return self.status in (FAILED, XFAILED)

    @property
    def own_breaks(self) -> bool:
        """Its own error (quantized computation fed float inputs), whole or in a part, breaks the thresholds,
        where measured."""
        t = self.thresholds
        return self.own is not None and (not t.passes(self.own["cos"], self.own["rmse"]) or
                                         any(p.breaks(t.cos, t.rmse) for ps in self.own_parts for p in ps.parts))

    def lowest_cos(self) -> tuple[float, str | None]:
        """The accumulated cos, or its worst part's when lower, with that part's label (None: the whole)."""
        cos, label = self.summary["cos"], None
        for ps in self.parts:
            for p in ps.parts:
                if p.cos is not None and p.cos < cos:
                    cos, label = p.cos, ps.label(p)
        return cos, label

    def worst_part(self, kind: str, own: bool = False) -> tuple[PartsSummary, PartMetrics] | None:
        """The ``kind`` ("slice" / "channel") part furthest past the thresholds, with the split it belongs to."""
        for ps in self.own_parts if own else self.parts:
            if ps.kind == kind and ps.parts:
                return ps, ps.worst(self.thresholds.cos, self.thresholds.rmse)
        return None


@dataclass(frozen=True)
class Comparison:
    reference: str
    target: str
    layers: tuple[LayerResult, ...]
    first_diverging: LayerResult | None = None
    diagnosis: Diagnosis | None = None

    def get(self, tensor: str) -> LayerResult | None:
        return next((r for r in self.layers if r.layer.tensor == tensor), None)

    def with_layers(self, layers: tuple[LayerResult, ...]) -> Comparison:
        """The same comparison over updated layer results (the first diverging layer follows them)."""
        return replace(self, layers=layers, first_diverging=next((r for r in layers if r.diverges), None))


@dataclass(frozen=True)
class AgreementResult:
    """Fixed vs offline agreement over every quantized tensor both expose."""

    tensors: tuple[Agreement, ...]
    tolerance_steps: int
    max_mismatch_rate: float
    reference: str = "fixed"  # "offline" with dumps.offline: the PC's deployable model against...
    target: str = "offline"  # ..."board", the dumped values in the same quantization steps

    @property
    def worst(self) -> Agreement | None:
        return max(self.tensors, key=lambda a: (a.mismatch_rate, a.max_steps), default=None)

    @property
    def first_failing(self) -> Agreement | None:
        """The first tensor in graph order beyond the gate: where the integer kernels start to disagree
        (tensors after it also carry the difference of their inputs)."""
        return next((t for t in self.tensors if t.mismatch_rate > self.max_mismatch_rate), None)

    @property
    def passed(self) -> bool:
        return self.first_failing is None


@dataclass(frozen=True)
class ForeignModel:
    """The user's own quantized model (``quantized:``): what it holds, and what of it could not be compared.

    ``unmatched`` lists every QDQ tensor with no float counterpart, with the reason (a gate that silently skipped
    tensors it cannot place would pass for the wrong reason).
    """

    path: Path
    kind: str  # QuantizationKind.describe()
    unmatched: tuple[tuple[str, str], ...] = ()  # (QDQ tensor, reason)


@dataclass(frozen=True)
class ModelResult:
    spec: ModelSpec
    artifacts: Artifacts | None = None
    comparisons: tuple[Comparison, ...] = ()
    agreement: AgreementResult | None = None
    error: QuantaccInputError | None = None
    quantized_layers: int = 0
    samples: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    command: CommandRun | None = None  # what a dump-writing command did
    pipeline: PipelineResult | None = None  # mode original's check
    passes: int = 1  # passes over the graph the memory budget required (chunking.py)
    memory: str | None = None  # why there was more than one pass
    foreign: ForeignModel | None = None  # set when the spec gives ``quantized:``
    # Why only the model outputs are compared (a QOperator model: its integer kernels expose no fake-quant tensors)
    outputs_only: str | None = None

    def comparison(self, reference: str, target: str) -> Comparison | None:
        return next((c for c in self.comparisons if (c.reference, c.target) == (reference, target)), None)

    @property
    def status(self) -> Status:
        if self.error is not None or self.quantized_layers == 0:
            return FAILED
        failed = any(r.status == FAILED or (r.status == XPASSED and r.known_bad and r.known_bad.strict)
                     for c in self.comparisons for r in c.layers)
        if self.pipeline is not None and not self.pipeline.passed:
            return FAILED
        if failed or (self.agreement is not None and not self.agreement.passed):
            return FAILED
        return PASSED

@dataclass(frozen=True)
class Root:
    """A layer whose own error (its quantized computation fed float inputs) breaks the thresholds: where
    quantization damage is made rather than carried. ``part``: the slice / channel that breaks when the whole
    tensor's own error passes (a Concat's small-range input, an outlier channel)."""

    layer: str
    op_type: str
    position: int
    own_cos: float
    own_rmse: float
    part: str | None = None
    part_cos: float | None = None
    part_rmse: float | None = None

    def text(self) -> str:
        head = f"{self.layer} ({self.op_type}) own cos {self.own_cos:.4f} rmse {self.own_rmse:.4f}"
        if self.part is None:
            return head
        cos = "-" if self.part_cos is None else f"{self.part_cos:.4f}"
        return f"{head}; {self.part}: own cos {cos} rmse {self.part_rmse:.4f}"

    def as_json(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class Drop:
    """One step of the graph: accumulated cos of a layer's worst input (``before``) and of the layer itself
    (``after``; the worst part's when the layer is split). Large drops locate damage even where no own error
    was measured."""

    layer: str
    op_type: str
    position: int
    before: float
    after: float
    part: str | None = None

    @property
    def drop(self) -> float:
        return self.before - self.after

    def text(self) -> str:
        where = f" ({self.part})" if self.part else ""
        return f"{self.layer}{where} {self.before:.4f} -> {self.after:.4f} (-{self.drop:.4f})"

    def as_json(self) -> dict:
        return {**{k: getattr(self, k) for k in self.__dataclass_fields__}, "drop": self.drop}


@dataclass(frozen=True)
class Diagnosis:
    layer: str | None  # the first diverging layer's node name
    kind: DiagnosisKind | None
    inputs: tuple[str, ...]  # compared layers feeding the diverging layer
    why: tuple[str, ...]
    todo: tuple[str, ...]
    contributors: tuple[str, ...] = ()  # layers whose own error contributes most
    roots: tuple[Root, ...] = ()  # every layer whose own error breaks the thresholds, in graph order
    drops: tuple[Drop, ...] = ()  # the largest single-step drops of accumulated cos, largest first
    # Filled by remedy.search.deepen: statistics of the tensors involved, the verified spec patch and its
    # measured result, and every remedy attempt.
    stats: tuple[TensorStats, ...] = ()
    remedy: dict | None = None
    remedy_result: dict | None = None
    attempts: tuple[Attempt, ...] = ()
    # The mixed-precision search (remedy/sensitivity.py, minimal.py): per-site sensitivity as JSON rows (most
    # sensitive first), the search's settings, curve, cuts and cache state, and the offered remedy's cost.
    sensitivity: tuple[dict, ...] = ()
    search: dict | None = None
    cost: dict | None = None

@dataclass(frozen=True)
class TensorStats:
    """Quantization statistics of one tensor; fields that do not apply are None."""

    role: StatsRole
    tensor: str
    node: str
    dtype: str
    scale: float  # per-tensor scale, or the largest per-channel scale
    zero_point: int
    per_channel: bool
    error: float  # relative RMSE of quantize-dequantize, whole tensor
    channel_error_median: float | None = None  # relative RMSE per channel: median over channels
    channel_error_worst: float | None = None
    calibrated: tuple[float, float] | None = None  # the range the quantization parameters represent
    observed: tuple[float, float] | None = None  # min/max seen on evaluation data
    clipped: float | None = None  # fraction of values outside the calibrated range
    collapsed: float | None = None  # fraction of non-zero values quantized to the zero point (weights: to zero)
    levels: int | None = None  # distinct quantized values used
    channel_spread: float | None = None  # largest per-channel max|x| / median per-channel max|x|
    widest_channel: int | None = None
    calibration_observed: tuple[float, float] | None = None  # min/max the calibration data itself reaches
    uncovered: float | None = None  # fraction of evaluation values outside the calibration data's own range
    clipped_covered: float | None = None  # fraction clipped although the calibration data reaches them
    zero_point_exact: float | None = None  # the zero point before rounding, from the calibration data's range

    def as_json(self) -> dict:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        for k in ("calibrated", "observed", "calibration_observed"):
            if out[k] is not None:
                out[k] = list(out[k])
        return out

    def describe(self) -> str:
        """One line a person reads in the failure message."""
        head = (f"{self.role} {self.tensor} ({self.node}): {self.dtype}, scale {self.scale:.4g}, zero point "
                f"{self.zero_point}, {'per-channel' if self.per_channel else 'per-tensor'}; quantization error "
                f"rmse {self.error:.3f}")
        if self.channel_error_median is not None:
            head += f", per channel median {self.channel_error_median:.3f} / worst {self.channel_error_worst:.3f}"
        parts = [head]
        if self.calibrated is not None and self.observed is not None:
            parts.append(f"representable range [{self.calibrated[0]:.4g}, {self.calibrated[1]:.4g}] vs observed "
                         f"[{self.observed[0]:.4g}, {self.observed[1]:.4g}]"
                         + (f" (calibration data's own range [{self.calibration_observed[0]:.4g}, "
                            f"{self.calibration_observed[1]:.4g}])" if self.calibration_observed else ""))
        if self.clipped is None and self.collapsed is not None:
            parts.append(f"{100 * self.collapsed:.1f}% of non-zero weights round to zero, {self.levels} levels used")
        if self.clipped is not None:
            parts.append(f"{100 * self.clipped:.2f}% clipped, {100 * self.collapsed:.1f}% of non-zero values "
                         f"collapsed to zero, {self.levels} levels used")
        if self.channel_spread is not None and self.channel_spread >= 10:
            parts.append(f"channel {self.widest_channel} has a {self.channel_spread:.0f}x larger range than the "
                         f"median channel")
        return "; ".join(parts)

@dataclass(frozen=True)
class Attempt:
    """One remedy tried: the spec patch, and what the re-converted model measured."""

    label: str
    patch: dict
    passes: bool
    first_diverging_layer: str | None
    layer_cos: float | None
    layer_rmse: float | None
    outputs_cos: float | None
    outputs_rmse: float | None
    seconds: float
    error: str | None = None
    # Filled by remedy.search.deepen: the deployment cost of the attempt's model (remedy/cost.py's cost_json),
    # whether it is worse than the default conversion, and where its fixed.onnx is.
    cost: dict | None = None
    harmful: bool = False
    model: str | None = None
    # With the spec's accuracy gate: the deployable model's task accuracy on every evaluation sample (None:
    # no gate, or the attempt produced no model); ``passes`` then includes the gate.
    accuracy: float | None = None

    def result_json(self) -> dict:
        return {"passes": self.passes, "first_diverging_layer": self.first_diverging_layer,
                "outputs_cos": self.outputs_cos, "outputs_rmse": self.outputs_rmse,
                "layer_cos": self.layer_cos, "layer_rmse": self.layer_rmse,
                **({} if self.accuracy is None else {"accuracy": self.accuracy})}

    def as_json(self) -> dict:
        return {"label": self.label, "patch": self.patch, **self.result_json(), "seconds": round(self.seconds, 3),
                **({"error": self.error} if self.error else {}), "harmful": self.harmful, "cost": self.cost}

@dataclass(frozen=True)
class Suspect:
    mistake: str
    cos: float  # original model on the simulated mistake vs original model on the hook's input (worst output)
    fits: bool


@dataclass(frozen=True)
class PipelineResult:
    """original (user's model, user's preprocessing) vs float (folded model, raw input), per model output."""

    outputs: tuple[tuple[str, Summary], ...]  # (output name, metrics)
    cos: float
    suspects: tuple[Suspect, ...] = ()

    @property
    def passed(self) -> bool:
        return all(s["cos"] >= self.cos for _, s in self.outputs)

@dataclass(frozen=True)
class CommandRun:
    """What an external command did: the exact argv, its exit code, time and output tails (for the report)."""

    argv: tuple[str, ...]
    returncode: int
    seconds: float
    stdout: str
    stderr: str

@dataclass(frozen=True)
class AccuracyResult:
    """Accuracy of the float and the deployable model; ``drop`` is what the gate limits."""

    metric: str
    output: str
    float_value: float
    offline_value: float
    samples: int
    max_drop: float

    @property
    def drop(self) -> float:
        return self.float_value - self.offline_value

    @property
    def passed(self) -> bool:
        return self.drop <= self.max_drop

@dataclass(frozen=True)
class Evaluated:
    """A model's result, its task accuracy (when the spec asks), and where it came from.

    ``cache`` is ``computed`` (inference ran), ``reused`` (stored metrics re-judged, no inference) or
    ``off`` (``--quantacc-no-cache``).
    """

    result: ModelResult
    accuracy: AccuracyResult | None = None
    accuracy_error: QuantaccInputError | None = None
    cache: CacheUse = "computed"
    # The float reference and samples this process evaluated with (None when results came from elsewhere):
    # the remedy search reads the same samples instead of loading them again.
    prepared: PreparedModel | None = field(default=None, compare=False, repr=False)

@dataclass(frozen=True)
class LayerDelta:
    """One layer now vs its baseline."""

    comparison: str
    layer: str
    tensor: str
    baseline: dict[str, float]
    now: dict[str, float]
    verdict: BaselineVerdict

    def text(self) -> str:
        return (f"{self.layer}: cos {self.baseline['cos']:.6f} -> {self.now['cos']:.6f}, "
                f"rmse {self.baseline['rmse']:.6f} -> {self.now['rmse']:.6f}")


@dataclass(frozen=True)
class BaselineCheck:
    """A model's layers against its baseline entry (``found`` False when the file or the entry is missing)."""

    path: Path
    found: bool
    tolerance_cos: float
    tolerance_rmse: float
    deltas: tuple[LayerDelta, ...] = ()
    stale: tuple[str, ...] = ()  # "<comparison>: <layer>" recorded but no longer compared
    error: str | None = None

    def delta(self, reference: str, target: str, tensor: str) -> LayerDelta | None:
        name = f"{reference}-vs-{target}"
        return next((d for d in self.deltas if d.comparison == name and d.tensor == tensor), None)

    @property
    def regressed(self) -> tuple[LayerDelta, ...]:
        return tuple(d for d in self.deltas if d.verdict == REGRESSED)

    @property
    def improved(self) -> tuple[LayerDelta, ...]:
        return tuple(d for d in self.deltas if d.verdict == IMPROVED)
