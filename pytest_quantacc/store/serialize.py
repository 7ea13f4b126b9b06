"""ModelResult <-> plain JSON-able dicts, and re-judging stored metrics against a changed spec.

Two consumers need results outside the process that computed them: the evaluation cache (a re-run reads
the metrics a previous run stored) and pytest-xdist (the controller writes the terminal summary and the
JSON report, but only workers compute). Both get the same dict, so what the controller reports is exactly
what a serial run would have computed.

What is stored is measurements (per-layer metrics, own error, agreement counts, accuracies), not verdicts:
``recheck`` recomputes every status from the spec's current thresholds, per-layer thresholds and known_bad
the same way ``evaluate`` does, so changing a threshold needs no inference.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import onnx

from ..convert.workdir import Artifacts
from ..engine.diagnose import diagnose
from ..engine.judge import apply_inheritance, inherit_outputs, judge_comparison
from ..engine.metrics import Agreement, Summary
from ..engine.results import (
    AccuracyResult,
    AgreementResult,
    Comparison,
    Diagnosis,
    Drop,
    ForeignModel,
    LayerResult,
    ModelResult,
    Root,
)
from ..engine.slices import PartMetrics, PartsSummary
from ..errors import QuantaccInputError
from ..graph.match import Layer, QParams
from ..spec.model import KnownBad, ModelSpec, Thresholds

FORMAT = 2  # bump when the dict layout changes: stored entries of another format are rebuilt
# 2: per-part metrics (parts, own_parts), diverges, gate; diagnosis roots and drops


def _summary(d: dict | None) -> Summary | None:
    return None if d is None else Summary(dict(d["mean"]), dict(d["worst"]), d["samples"])


def _pipeline_dict(p) -> dict | None:
    """Mode original's result (pipeline.PipelineResult), for xdist payloads (never stored in the cache)."""
    if p is None:
        return None
    return {"outputs": [[name, asdict(s)] for name, s in p.outputs], "cos": p.cos,
            "suspects": [asdict(x) for x in p.suspects]}


def _pipeline(d: dict | None):
    if d is None:
        return None
    from ..engine.results import PipelineResult, Suspect

    return PipelineResult(tuple((name, _summary(s)) for name, s in d["outputs"]), d["cos"],
                          tuple(Suspect(**x) for x in d["suspects"]))


def _layer(d: dict) -> Layer:
    qp = d.get("qparams")
    qparams = QParams(qp["dtype"], tuple(qp["scale"]), tuple(qp["zero_point"]), qp["axis"]) if qp else None
    return Layer(d["name"], d["op_type"], d["tensor"], d["position"], d["fixed_tensor"], d["quant_tensor"], qparams,
                 d["skip"], d["fused_into"], tuple(d["perm"]) if d.get("perm") is not None else None)


def _parts(items: list[dict]) -> tuple[PartsSummary, ...]:
    return tuple(PartsSummary(p["kind"], p["axis"], tuple(PartMetrics(**m) for m in p["parts"]), tuple(p["names"]),
                              p["node"]) for p in items)


def _layer_result(d: dict) -> LayerResult:
    kb = d["known_bad"]
    return LayerResult(_layer(d["layer"]), _summary(d["summary"]), Thresholds(**d["thresholds"]), d["status"],
                       d["reason"], KnownBad(**kb) if kb else None, d["inherited_from"], _summary(d["own"]),
                       _parts(d["parts"]), _parts(d["own_parts"]), d["diverges"], d["gate"])


def _comparison(d: dict) -> Comparison:
    layers = tuple(_layer_result(x) for x in d["layers"])
    first = layers[d["first_diverging"]] if d["first_diverging"] is not None else None
    diag = d["diagnosis"]
    diagnosis = _diagnosis(diag) if diag else None
    return Comparison(d["reference"], d["target"], layers, first, diagnosis)


def _diagnosis(diag: dict) -> Diagnosis:
    """A diagnosis with what remedy.deepen added (statistics, remedy attempts), so an xdist controller reports
    the same diagnosis as a serial run."""
    from ..engine.results import Attempt, TensorStats

    def stats(s: dict) -> TensorStats:
        return TensorStats(**{k: tuple(v) if isinstance(v, list) else v for k, v in s.items()})

    return Diagnosis(diag["layer"], diag["kind"], tuple(diag["inputs"]), tuple(diag["why"]), tuple(diag["todo"]),
                     tuple(diag["contributors"]), tuple(Root(**x) for x in diag["roots"]),
                     tuple(Drop(**x) for x in diag["drops"]), stats=tuple(stats(s) for s in diag.get("stats", ())),
                     remedy=diag.get("remedy"), remedy_result=diag.get("remedy_result"),
                     attempts=tuple(Attempt(**a) for a in diag.get("attempts", ())),
                     sensitivity=tuple(diag.get("sensitivity", ())), search=diag.get("search"), cost=diag.get("cost"))


def _comparison_dict(c: Comparison) -> dict:
    return {
        "reference": c.reference, "target": c.target,
        "layers": [asdict(r) for r in c.layers],
        "first_diverging": c.layers.index(c.first_diverging) if c.first_diverging is not None else None,
        "diagnosis": asdict(c.diagnosis) if c.diagnosis is not None else None,
        # whether the own-error pass ran: a recheck that finds a new failure needs it and must re-evaluate
        "own_pass": any(r.own is not None for r in c.layers),
    }


def to_dict(result: ModelResult, accuracy: AccuracyResult | None = None) -> dict:
    """Everything the report needs except the spec itself (the reader has it, or reloads it)."""
    art = result.artifacts
    err = result.error
    a = result.agreement
    return {
        "format": FORMAT,
        "spec": str(result.spec.spec_path), "name": result.spec.name,
        "artifacts": None if art is None else {"workdir": str(art.workdir), "float_model": str(art.float_model),
                                               "fixed_model": str(art.fixed_model),
                                               "offline_model": str(art.offline_model), "log": list(art.log)},
        "comparisons": [_comparison_dict(c) for c in result.comparisons],
        "granularity": result.spec.gate.granularity,  # channel parts are measured only when the gate asks
        "agreement": None if a is None else {"tensors": [asdict(t) for t in a.tensors],
                                             "tolerance_steps": a.tolerance_steps,
                                             "max_mismatch_rate": a.max_mismatch_rate,
                                             "reference": a.reference, "target": a.target},
        "error": None if err is None else {"spec": err.spec, "key": err.key, "problem": err.problem},
        "quantized_layers": result.quantized_layers, "samples": result.samples, "seconds": dict(result.seconds),
        "passes": result.passes, "memory": result.memory, "pipeline": _pipeline_dict(result.pipeline),
        "accuracy": None if accuracy is None else asdict(accuracy),
        "foreign": None if result.foreign is None else {
            "path": str(result.foreign.path), "kind": result.foreign.kind,
            "unmatched": [list(u) for u in result.foreign.unmatched]},
        "outputs_only": result.outputs_only,
    }


def from_dict(d: dict, mspec: ModelSpec) -> tuple[ModelResult, AccuracyResult | None]:
    """The exact result ``to_dict`` was given (statuses as computed then)."""
    art = d["artifacts"]
    artifacts = Artifacts(Path(art["workdir"]), Path(art["float_model"]), Path(art["fixed_model"]),
                          Path(art["offline_model"]), tuple(art["log"])) if art else None
    a = d["agreement"]
    agreement = AgreementResult(tuple(Agreement(**t) for t in a["tensors"]), a["tolerance_steps"],
                                a["max_mismatch_rate"], a.get("reference", "fixed"),
                                a.get("target", "offline")) if a else None
    err = d["error"]
    error = QuantaccInputError(err["spec"], err["key"], err["problem"]) if err else None
    result = ModelResult(mspec, artifacts, tuple(_comparison(c) for c in d["comparisons"]), agreement, error,
                         d["quantized_layers"], d["samples"], dict(d["seconds"]),
                         passes=d.get("passes", 1), memory=d.get("memory"), pipeline=_pipeline(d.get("pipeline")),
                         foreign=_foreign(d.get("foreign")), outputs_only=d.get("outputs_only"))
    acc = d.get("accuracy")
    return result, (AccuracyResult(**acc) if acc else None)


def _foreign(d: dict | None) -> ForeignModel | None:
    if d is None:
        return None
    return ForeignModel(Path(d["path"]), d["kind"], tuple(tuple(u) for u in d["unmatched"]))


def _without_channels(c: Comparison) -> Comparison:
    """Per-channel parts stored by a run with ``gate: {granularity: channel}`` dropped (the gate no longer asks)."""
    def keep(parts: tuple[PartsSummary, ...]) -> tuple[PartsSummary, ...]:
        return tuple(p for p in parts if p.kind != "channel")

    return replace(c, layers=tuple(replace(r, parts=keep(r.parts), own_parts=keep(r.own_parts)) for r in c.layers))


def recheck(d: dict, mspec: ModelSpec, float_model: Path) -> tuple[ModelResult, AccuracyResult | None] | None:
    """Stored measurements judged against ``mspec``; None when they cannot answer without inference.

    That happens when the new thresholds make a layer fail but the stored run passed and so never measured
    each layer's own error (the second pass only a failing model pays for): the caller re-evaluates.
    """
    result, accuracy = from_dict(d, mspec)
    if result.error is not None:
        return result, accuracy
    if mspec.gate.granularity == "channel" and d["granularity"] != "channel":
        return None  # channels were not measured
    if mspec.gate.granularity != "channel":
        result = replace(result, comparisons=tuple(_without_channels(c) for c in result.comparisons))
    graph = onnx.load(str(float_model), load_external_data=False)
    outputs = {o.name for o in graph.graph.output}
    comparisons = []
    for stored, c in zip(d["comparisons"], result.comparisons):
        c = judge_comparison(replace(c, diagnosis=None), mspec, outputs)
        if (c.reference, c.target) == ("float", "fixed"):
            if c.first_diverging is not None or mspec.gate.layers == "own":
                if not stored["own_pass"]:
                    return None
                c = apply_inheritance(graph, c)
            c = replace(c, diagnosis=diagnose(graph, c))
        elif comparisons and (c.reference, c.target) == ("float", "offline"):
            c = inherit_outputs(c, comparisons[0])
        comparisons.append(c)
    agreement = result.agreement
    if agreement is not None:
        agreement = replace(agreement, max_mismatch_rate=mspec.offline.max_mismatch_rate)
    if accuracy is not None and mspec.accuracy is not None:
        accuracy = replace(accuracy, max_drop=mspec.accuracy.max_drop)
    return replace(result, comparisons=tuple(comparisons), agreement=agreement), accuracy
