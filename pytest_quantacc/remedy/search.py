"""What to do about a failing model, verified: try the usual remedies and keep the smallest one that works.

A suggestion ("try int16 for conv5") is a guess until someone re-runs the conversion; on real models the
obvious guess is often wrong (an override on ``flatten`` does nothing when ``flatten`` shares its range with
``relu2``; 16-bit activations do not help when the producer's *weights* are what collapsed). So for a model
whose float-vs-fixed comparison fails, this module re-converts the model with modified quantization settings
(``dataclasses.replace`` of the ModelSpec, artifacts in ``<work folder>/remedies/<attempt>/``), re-evaluates
float vs fixed only, and reports every attempt with the layer's and the outputs' metrics.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
import onnx

from ..convert.prepare import model_inputs
from ..convert.quantize import quantize
from ..convert.workdir import digest, read_manifest, write_manifest
from ..engine.judge import finish
from ..engine.metrics import Accumulator, accumulate
from ..engine.ort_backend import plan_passes
from ..engine.passes import default_budget
from ..engine.results import Attempt, Comparison, Diagnosis, FAILED, ModelResult, TensorStats
from ..engine.runner import Runner
from ..errors import QuantaccInputError
from ..graph.match import match_layers
from ..graph.structure import prune
from ..samples import load_samples
from ..spec.model import ModelSpec, Override, Quantization
from .fixfile import patch_yaml
from .rootcause import Site, explain, gather, site



DEFAULT_ATTEMPTS = 8


_CACHE_BYTES = 256 << 20  # float outputs kept in memory across attempts up to this size


@dataclass(frozen=True)
class _Knob:
    """One precision step around the root-cause layer: 16 bits for one field of one node, or float."""

    label: str
    node: str
    field: str  # "activations" | "weights" | "exclude"
    score: float  # how damaged the tensor is; the most damaged is raised first


def _apply(q: Quantization, patch: dict) -> Quantization:
    changes = dict(patch)
    if "overrides" in changes:
        changes["overrides"] = tuple(Override(n, v.get("activations"), v.get("weights"))
                                     for n, v in changes["overrides"].items())
    if "exclude_nodes" in changes:
        changes["exclude_nodes"] = tuple(changes["exclude_nodes"])
    return replace(q, **changes)


def _patch(q: Quantization, knobs: list[_Knob], base: dict | None = None) -> dict:
    """The spec patch (complete values of the touched keys) for these knobs on top of ``q``."""
    patch = dict(base or {})
    overrides = {o.node: {k: v for k, v in (("activations", o.activations), ("weights", o.weights)) if v}
                 for o in q.overrides}
    exclude = list(q.exclude_nodes)
    for k in knobs:
        if k.field == "exclude":
            exclude += [k.node] if k.node not in exclude else []
        else:
            overrides.setdefault(k.node, {})[k.field] = "int16"
    if any(k.field != "exclude" for k in knobs):
        fields = ("activations", "weights")  # one order, so the snippet reads the same everywhere
        patch["overrides"] = {n: {f: v[f] for f in fields if f in v} for n, v in overrides.items()}
    if any(k.field == "exclude" for k in knobs):
        patch["exclude_nodes"] = exclude
    return patch


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") or "attempt"


class _Trial:
    """Re-convert and re-evaluate one model with patched quantization settings, sharing the float run."""

    def __init__(self, mspec: ModelSpec, result: ModelResult, root: str, threads: int,
                 memory_budget: int | None = None) -> None:
        art = result.artifacts
        self.mspec, self.art, self.root, self.threads = mspec, art, root, threads
        self.float_model = onnx.load(str(art.float_model), load_external_data=False)
        self.outputs = [o.name for o in self.float_model.graph.output]
        inputs = model_inputs(art.float_model)
        self.calib = load_samples(mspec.calibration.path, mspec.calibration.limit, inputs, mspec.spec_path,
                                  f"{mspec.key}.calibration.data")
        self.evals = self.calib if mspec.evaluation == mspec.calibration else load_samples(
            mspec.evaluation.path, mspec.evaluation.limit, inputs, mspec.spec_path, f"{mspec.key}.evaluation.data")
        fixed = result.comparison("float", "fixed")
        self.tensors = [r.layer.tensor for r in fixed.layers if r.layer.skip is None]
        # Under the memory budget the evaluation had, in as many passes over the graph (chunking.py).
        self.passes = plan_passes(self.float_model, [r.layer for r in fixed.layers if r.layer.skip is None],
                                  self.evals, {"float", "fixed"}, memory_budget or default_budget(), 1).passes
        self._cache: list[dict] | None = None

    def _pairs(self, tensors: list[str]):
        """(sample, float values) per evaluation sample; computed once when they fit and there is one pass."""
        if self._cache is not None:
            yield from zip(self.evals, self._cache)
            return
        float_run = Runner(prune(self.float_model, tensors), [], optimize=False, threads=self.threads,
                           data_dir=self.art.workdir)
        kept: list[dict] | None = [] if len(self.passes) == 1 else None
        size = 0
        for sample in self.evals:
            f = float_run.run(sample)
            size += sum(v.nbytes for v in f.values())
            if kept is not None and size <= _CACHE_BYTES:
                kept.append(f)
            else:
                kept = None
            yield sample, f
        self._cache = kept

    def run(self, label: str, patch: dict) -> Attempt:
        t0 = time.perf_counter()
        mspec = replace(self.mspec, quantization=_apply(self.mspec.quantization, patch), modes=("float", "fixed"))
        sub = self.art.workdir / "remedies" / f"{_slug(label)[:60]}-{digest(json.dumps(patch, sort_keys=True))[:8]}"
        sub.mkdir(parents=True, exist_ok=True)
        # The attempt quantizes the model's own float.onnx into ``sub``: no link or copy of it (onnx refuses
        # external data files with several hard links, and a 2 GB copy per attempt is not an option).
        if read_manifest(sub).get("float") is None:
            write_manifest(sub, {"float": read_manifest(self.art.workdir).get("float", "")})
        try:
            return self._measure(label, patch, mspec, sub, t0)
        except QuantaccInputError as exc:  # the quantizer refused these settings
            return Attempt(label, patch, False, None, None, None, None, None, time.perf_counter() - t0, exc.problem)
        except Exception as exc:  # ONNX Runtime cannot run the result (e.g. no 16-bit kernel): a failed attempt
            return Attempt(label, patch, False, None, None, None, None, None, time.perf_counter() - t0,
                           f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}")

    def _measure(self, label: str, patch: dict, mspec: ModelSpec, sub: Path, t0: float) -> Attempt:
        art = quantize(mspec, self.art.float_model, self.calib, sub, workdir=sub)
        fixed_model = onnx.load(str(art.fixed_model), load_external_data=False)
        layers = match_layers(self.float_model, fixed_model)
        by_tensor = {lay.tensor: lay for lay in layers if lay.skip is None}
        accs: dict[str, Accumulator] = {}
        skips: dict[str, str] = {}
        for chunk in self.passes:
            compared = [by_tensor[t] for t in chunk if t in by_tensor]
            if not compared:
                continue
            run = Runner(prune(fixed_model, [lay.fixed_tensor for lay in compared]), [], optimize=False,
                         threads=self.threads, data_dir=art.workdir)
            for sample, f in self._pairs(list(chunk)):
                fx = run.run(sample)
                for lay in compared:
                    accumulate(accs, skips, lay.tensor, f.get(lay.tensor), fx.get(lay.fixed_tensor))
        comp = finish(layers, accs, skips, mspec, "float", "fixed")
        return _attempt(label, patch, comp, self.root, self.outputs, time.perf_counter() - t0)


def _attempt(label: str, patch: dict, comp: Comparison, root: str, outputs: list[str], seconds: float) -> Attempt:
    measured = [r for r in comp.layers if r.summary is not None and r.status != "skipped"]
    layer = next((r for r in measured if r.layer.name == root), None)
    outs = [r for r in measured if r.layer.tensor in outputs]
    first = next((r for r in comp.layers if r.status == FAILED), None)
    return Attempt(label, patch, first is None, first.layer.name if first else None,
                   layer.summary["cos"] if layer else None, layer.summary["rmse"] if layer else None,
                   min((r.summary["cos"] for r in outs), default=None),
                   max((r.summary["rmse"] for r in outs), default=None), seconds)


def _knobs(where: Site, stats: tuple[TensorStats, ...]) -> list[_Knob]:
    """Precision steps around the root-cause layer, most damaged tensor first."""
    def damage(role: str) -> float:
        s = next((x for x in stats if x.role == role), None)
        if s is None:
            return 0.0
        return max(s.error, s.channel_error_median or 0.0, s.collapsed or 0.0)

    knobs = []
    if where.producer and where.input_tensor:
        knobs.append(_Knob(f"16-bit input activations ({where.input_tensor}, set on {where.producer})",
                           where.producer, "activations", damage("input")))
    if where.producer_weight:
        knobs.append(_Knob(f"16-bit weights of the input producer {where.producer}", where.producer, "weights",
                           damage("input producer weights")))
    if where.weight:
        knobs.append(_Knob(f"16-bit weights of {where.compute}", where.compute, "weights", damage("weights")))
    knobs.append(_Knob(f"16-bit output activations of {where.node}", where.compute, "activations", damage("output")))
    return sorted(knobs, key=lambda k: -k.score)


def search(trial: _Trial, diagnosis: Diagnosis, where: Site, stats: tuple[TensorStats, ...],
           budget: int) -> tuple[Attempt | None, tuple[Attempt, ...]]:
    """Try remedies in order until one passes (then shrink it); returns (verified remedy, every attempt)."""
    q = trial.mspec.quantization
    tried: list[Attempt] = []

    def attempt(label: str, patch: dict) -> Attempt | None:
        if len(tried) >= budget:
            return None
        a = trial.run(label, patch)
        tried.append(a)
        return a

    whole: list[tuple[str, dict]] = []
    if not q.per_channel:
        whole.append(("per-channel weights", {"per_channel": True}))
    if q.method != "percentile":
        whole.append(("percentile calibration", {"method": "percentile"}))
    if diagnosis.kind == "gradual" and q.method != "entropy":
        whole.append(("entropy calibration", {"method": "entropy"}))
    for label, patch in whole:
        a = attempt(label, patch)
        if a is not None and a.passes:
            return a, tuple(tried)
    if diagnosis.kind == "gradual":
        for label, patch in [("16-bit activations, whole model", {"activations": "int16"}),
                             ("16-bit activations and weights, whole model",
                              {"activations": "int16", "weights": "int16"})]:
            if q.activations != patch["activations"] or q.weights != patch.get("weights", q.weights):
                a = attempt(label, patch)
                if a is not None and a.passes:
                    return a, tuple(tried)
        return None, tuple(tried)

    knobs = _knobs(where, stats)
    chosen: list[_Knob] = []
    passing: Attempt | None = None
    for knob in knobs:
        chosen.append(knob)
        a = attempt(" + ".join(k.label for k in chosen), _patch(q, chosen))
        if a is None:
            break
        if a.passes:
            passing = a
            break
    if passing is None and len(tried) < budget:
        inputs_only = [k for k in knobs if k.node != where.compute]
        chosen = inputs_only + [_Knob(f"{n} in float", n, "exclude", 0.0)
                                for n in dict.fromkeys([where.compute, where.node])]
        a = attempt(" + ".join(k.label for k in chosen), _patch(q, chosen))
        passing = a if a is not None and a.passes else None
    if passing is None:
        return None, tuple(tried)
    for knob in list(reversed(chosen[:-1])):  # shrink: drop earlier steps the others do not need, least damaged first
        rest = [k for k in chosen if k is not knob]
        a = attempt(" + ".join(k.label for k in rest), _patch(q, rest))
        if a is None:
            break
        if a.passes:
            chosen, passing = rest, a
    return passing, tuple(tried)


def deepen(result: ModelResult, threads: int = 0, attempts: int = DEFAULT_ATTEMPTS,
           memory_budget: int | None = None) -> ModelResult:
    """Add the root-cause statistics and, for a failing model, a verified remedy to the float-vs-fixed diagnosis.

    Statistics cost one short float pass over a few tensors; remedies cost one conversion and one float-vs-fixed
    evaluation per attempt, so they run only when a layer fails (not when it is xfailed) and at most
    ``attempts`` times (0: none).
    """
    fixed = result.comparison("float", "fixed")
    if result.error is not None or result.artifacts is None or fixed is None or fixed.diagnosis is None:
        return result
    d: Diagnosis = fixed.diagnosis
    float_model = onnx.load(str(result.artifacts.float_model), load_external_data=False)
    fixed_model = onnx.load(str(result.artifacts.fixed_model), load_external_data=False)
    layers = [r.layer for r in fixed.layers]
    try:
        where = site(float_model, layers, d.layer)
        trial = _Trial(result.spec, result, d.layer, threads, memory_budget)
    except (KeyError, QuantaccInputError):
        return result
    stats = gather(float_model, fixed_model, layers, where, trial.evals, result.artifacts.float_model)
    why = list(d.why)
    if where.shared:
        why.append(f"{where.input_tensor} is quantized once for {', '.join(where.shared)} too (they share its scale "
                   f"and zero point): its precision is set on {where.producer}")
    if not _outlier_channel(stats):
        why = [w for w in why if "outlier-channel signature" not in w]  # a hypothesis the statistics rule out
    why += explain(stats)
    remedy, tried = None, ()
    if attempts > 0 and any(r.status == FAILED for r in fixed.layers):
        remedy, tried = search(trial, d, where, stats, attempts)
    todo = [_site_aware(t, where) for t in d.todo]
    # Without a passing remedy, the result of the best attempt still tells how far the usual knobs get.
    best = remedy or max(tried, key=lambda a: -2.0 if a.outputs_cos is None else a.outputs_cos, default=None)
    if remedy is not None:
        # What was measured supersedes the generic hints.
        todo = [f"verified: {remedy.label} makes every layer pass (outputs cos {remedy.outputs_cos:.4f}); "
                f"paste into the model entry:\n" + _indent(patch_yaml(remedy.patch), 6)]
        failed = [a.label for a in tried if not a.passes]
        if failed:
            todo.append(f"tried, not enough on its own: {'; '.join(failed)}")
    elif tried:
        todo.insert(0, f"none of the {len(tried)} remedies tried makes every layer pass; closest: {best.label} "
                       f"(first diverging layer {best.first_diverging_layer}, outputs cos "
                       f"{'-' if best.outputs_cos is None else f'{best.outputs_cos:.4f}'})")
    new = replace(d, why=tuple(why), todo=tuple(todo), stats=stats,
                  remedy=remedy.patch if remedy else None,
                  remedy_result=best.result_json() if best else None, attempts=tried)
    comps = tuple(replace(c, diagnosis=new) if c is fixed else c for c in result.comparisons)
    return replace(result, comparisons=comps)


def _outlier_channel(stats: tuple[TensorStats, ...]) -> bool:
    """The statistics show one input channel setting the range (or there are none to tell)."""
    inputs = [s for s in stats if s.role == "input" and s.channel_spread is not None]
    return not inputs or any(s.channel_spread >= 10 for s in inputs)


_NAIVE = "raise the precision of the input activations"


def _site_aware(todo: str, where: Site) -> str:
    """diagnose's input-precision hint names the nearest inputs; point it where their range is really set."""
    if not todo.startswith(_NAIVE) or not where.producer or not where.shared:
        return todo
    return (f"{_NAIVE} where their range is set ({', '.join(where.shared)} share it with {where.input_tensor}): "
            f"quantization.overrides: {{{where.producer}: {{activations: int16}}}}")


def _indent(text: str, n: int) -> str:
    return "\n".join(" " * n + line for line in text.splitlines())
