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
from dataclasses import asdict, replace
from pathlib import Path

import onnx

from .. import __version__
from ..convert.prepare import PreparedModel
from ..convert.quantize import quantize
from ..convert.workdir import data_key, digest, read_manifest, write_manifest
from ..engine.accuracy import deployed_accuracy
from ..engine.judge import apply_inheritance, finish, judge_comparison
from ..engine.metrics import Accumulator, Parts, accumulate
from ..engine.ort_backend import plan_passes, with_own_error
from ..engine.passes import default_budget
from ..engine.progress import Progress, timed
from ..engine.results import FAILED, SKIPPED, AccuracyResult, Attempt, Comparison, Diagnosis, ModelResult, TensorStats
from ..engine.runner import Runner
from ..errors import QuantaccInputError
from ..files import write_text
from ..graph.match import match_layers
from ..graph.parts import part_plans
from ..graph.structure import prune
from ..spec.model import ModelSpec
from .cost import Latency, cost_json, latency_ms, node_costs, precisions, shares_of
from .fixfile import patch_yaml
from .mixed import Mixed, MixedSearch
from .rootcause import Site, explain, gather, site
from .sensitivity import DEFAULT_SAMPLES, FLOAT, INT16
from .settings import Knob, apply_patch, spec_patch

DEFAULT_ATTEMPTS = 8


_CACHE_BYTES = 64 << 20  # float outputs kept in memory across attempts up to this size


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") or "attempt"


class _Trial:
    """Re-convert and re-evaluate one model with patched quantization settings, sharing the float run."""

    def __init__(self, mspec: ModelSpec, result: ModelResult, root: str, threads: int,
                 memory_budget: int | None = None, prepared: PreparedModel | None = None,
                 float_accuracy: float | None = None) -> None:
        art = result.artifacts
        self.float_accuracy = float_accuracy
        self.mspec, self.art, self.root, self.threads = mspec, art, root, threads
        self.float_model = onnx.load(str(art.float_model), load_external_data=False)
        self.outputs = [o.name for o in self.float_model.graph.output]
        prepared = prepared if prepared is not None else PreparedModel(mspec, art.float_model)
        self.calib, self.evals = prepared.calibration, prepared.evaluation
        fixed = result.comparison("float", "fixed")
        self.tensors = [r.layer.tensor for r in fixed.layers if r.layer.skip is None]
        # Under the memory budget the evaluation had, in as many passes over the graph (chunking.py).
        self.plan = plan_passes(self.float_model, [r.layer for r in fixed.layers if r.layer.skip is None],
                                self.evals, {"float", "fixed"}, memory_budget or default_budget(), 1)
        self.passes = self.plan.passes
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
        mspec = replace(self.mspec, quantization=apply_patch(self.mspec.quantization, patch),
                        modes=("float", "fixed"))
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
        parts: Parts = {}  # judged like the evaluation: Concat slices (and channels with the channel gate)
        plans = part_plans(self.float_model, list(by_tensor), channels=mspec.gate.granularity == "channel")
        for chunk in self.passes:
            compared = [by_tensor[t] for t in chunk if t in by_tensor]
            if not compared:
                continue
            run = Runner(prune(fixed_model, [lay.fixed_tensor for lay in compared]), [], optimize=False,
                         threads=self.threads, data_dir=art.workdir)
            for sample, f in self._pairs(list(chunk)):
                fx = run.run(sample)
                for lay in compared:
                    accumulate(accs, skips, lay.tensor, f.get(lay.tensor), fx.get(lay.fixed_tensor), parts,
                               plans.get(lay.tensor, ()))
        comp = finish(layers, accs, skips, mspec, "float", "fixed", parts, set(self.outputs))
        if mspec.gate.layers == "own":  # judged as the evaluation judges it: layers on their own error
            comp = with_own_error(comp, art, self.float_model, [lay for lay in layers if lay.tensor in by_tensor],
                                  self.evals, self.plan, self.threads, plans)
            comp = apply_inheritance(self.float_model, judge_comparison(comp, mspec, set(self.outputs)))
        found = replace(_attempt(label, patch, comp, self.root, self.outputs, time.perf_counter() - t0),
                        model=str(art.fixed_model))
        if self.mspec.accuracy is None:
            return found
        # The task decides too: a set that passes every layer but loses accuracy is no remedy.
        value = deployed_accuracy(self.mspec, art.fixed_model, self.evals, self.threads)
        drop_ok = self.float_accuracy is None or self.float_accuracy - value <= self.mspec.accuracy.max_drop
        return replace(found, accuracy=value, passes=found.passes and drop_ok,
                       seconds=time.perf_counter() - t0)


def _attempt(label: str, patch: dict, comp: Comparison, root: str, outputs: list[str], seconds: float) -> Attempt:
    measured = [r for r in comp.layers if r.summary is not None and r.status != SKIPPED]
    layer = next((r for r in measured if r.layer.name == root), None)
    outs = [r for r in measured if r.layer.tensor in outputs]
    first = next((r for r in comp.layers if r.status == FAILED), None)
    # A conversion that quantizes nothing compares nothing: it is the float model, not a remedy.
    return Attempt(label, patch, first is None and bool(measured), first.layer.name if first else None,
                   layer.summary["cos"] if layer else None, layer.summary["rmse"] if layer else None,
                   min((r.summary["cos"] for r in outs), default=None),
                   max((r.summary["rmse"] for r in outs), default=None), seconds,
                   None if measured else "the conversion quantized no tensor: nothing left to compare")


def _knobs(where: Site, stats: tuple[TensorStats, ...]) -> list[Knob]:
    """Precision steps around the root-cause layer, most damaged tensor first."""
    def damage(role: str) -> float:
        s = next((x for x in stats if x.role == role), None)
        if s is None:
            return 0.0
        return max(s.error, s.channel_error_median or 0.0, s.collapsed or 0.0)

    knobs = []
    if where.producer and where.input_tensor:
        knobs.append(Knob(f"16-bit input activations ({where.input_tensor}, set on {where.producer})",
                           where.producer, "activations", damage("input")))
    if where.producer_weight:
        knobs.append(Knob(f"16-bit weights of the input producer {where.producer}", where.producer, "weights",
                           damage("input producer weights")))
    if where.weight:
        knobs.append(Knob(f"16-bit weights of {where.compute}", where.compute, "weights", damage("weights")))
    knobs.append(Knob(f"16-bit output activations of {where.node}", where.compute, "activations", damage("output")))
    return sorted(knobs, key=lambda k: -k.score)


def search(trial: _Trial, diagnosis: Diagnosis, where: Site, stats: tuple[TensorStats, ...],
           budget: int, deadline: float | None = None,
           cut: list[str] | None = None,
           progress: Progress | None = None) -> tuple[Attempt | None, tuple[Attempt, ...]]:
    """Try remedies in order until one passes (then shrink it); returns (verified remedy, every attempt).

    Past ``deadline`` (``time.monotonic()``) no further attempt starts; what was skipped goes into ``cut``.
    ``progress`` is told when each attempt starts and ends."""
    q = trial.mspec.quantization
    tried: list[Attempt] = []

    def attempt(label: str, patch: dict) -> Attempt | None:
        if len(tried) >= budget:
            return None
        if deadline is not None and time.monotonic() > deadline:
            if cut is not None:
                cut.append(f"remedy time spent: not tried: {label}")
            return None
        with timed(progress, f"remedy {len(tried) + 1}/{budget}: {label}"):
            a = trial.run(label, patch)
        tried.append(a)
        return a

    # Cheapest to compute first: an entropy calibration costs minutes on a large model (its histograms), so it
    # comes last and only while the time budget lasts.
    whole: list[tuple[str, dict]] = []
    if not q.per_channel:
        whole.append(("per-channel weights", {"per_channel": True}))
    if q.method != "percentile":
        whole.append(("percentile calibration", {"method": "percentile"}))
    if diagnosis.kind == "gradual":
        for label, patch in [("16-bit activations, whole model", {"activations": "int16"}),
                             ("16-bit activations and weights, whole model",
                              {"activations": "int16", "weights": "int16"})]:
            if q.activations != patch["activations"] or q.weights != patch.get("weights", q.weights):
                whole.append((label, patch))
        if q.method != "entropy":
            whole.append(("entropy calibration", {"method": "entropy"}))
    for label, patch in whole:
        a = attempt(label, patch)
        if a is not None and a.passes:
            return a, tuple(tried)
    if diagnosis.kind == "gradual":
        return None, tuple(tried)

    knobs = _knobs(where, stats)
    chosen: list[Knob] = []
    passing: Attempt | None = None
    for knob in knobs:
        chosen.append(knob)
        a = attempt(" + ".join(k.label for k in chosen), spec_patch(q, chosen))
        if a is None:
            break
        if a.passes:
            passing = a
            break
    if passing is None and len(tried) < budget:
        inputs_only = [k for k in knobs if k.node != where.compute]
        chosen = inputs_only + [Knob(f"{n} in float", n, "exclude", 0.0)
                                for n in dict.fromkeys([where.compute, where.node])]
        a = attempt(" + ".join(k.label for k in chosen), spec_patch(q, chosen))
        passing = a if a is not None and a.passes else None
    if passing is None:
        return None, tuple(tried)
    for knob in list(reversed(chosen[:-1])):  # shrink: drop earlier steps the others do not need, least damaged first
        rest = [k for k in chosen if k is not knob]
        a = attempt(" + ".join(k.label for k in rest), spec_patch(q, rest))
        if a is None:
            break
        if a.passes:
            chosen, passing = rest, a
    return passing, tuple(tried)


def _after(second: Mixed, first: Mixed) -> Mixed:
    """``second`` (a later level's search) with what the ``first`` level found kept in its account."""
    kept = {k: first.search.get(k) for k in ("level", "chosen", "evaluations", "verified", "curve", "checks")}
    return Mixed(second.sensitivity, second.patch, second.label, {**second.search, "first": kept})


def _default_outputs(fixed: Comparison, outputs: list[str]) -> tuple[float | None, float | None]:
    outs = [r for r in fixed.layers if r.summary is not None and r.layer.tensor in outputs]
    return min((r.summary["cos"] for r in outs), default=None), max((r.summary["rmse"] for r in outs), default=None)


def harmful(a: Attempt, cos: float | None, rmse: float | None, accuracy: AccuracyResult | None = None) -> bool:
    """The attempt is clearly worse than the default conversion: its outputs' 1 - cos or relative rmse grows by
    more than 5% (and 1e-4), so measurement noise of an equivalent conversion is not called harm, or (with the
    accuracy gate) its deployable accuracy is lower than the default's by more than half the allowed drop."""
    if accuracy is not None and a.accuracy is not None and a.accuracy < accuracy.offline_value - accuracy.max_drop / 2:
        return True
    if a.outputs_cos is None or a.outputs_rmse is None or cos is None or rmse is None:
        return False
    return (1.0 - a.outputs_cos) > (1.0 - cos) * 1.05 + 1e-4 or a.outputs_rmse > rmse * 1.05 + 1e-4


class _Costs:
    """MAC/parameter shares and measured latency of attempts' deployable models; the default conversion's and the
    float model's latency are measured on first use, each attempt's model once."""

    def __init__(self, trial: _Trial) -> None:
        self.trial = trial
        self.known: dict[str, dict] = {}
        self.base: tuple[dict, list, float, float] | None = None

    def of(self, model: str) -> dict:
        if model not in self.known:
            trial = self.trial
            if self.base is None:
                sample = next(iter(trial.evals))
                self.base = (sample, node_costs(trial.float_model, {k: v.shape for k, v in sample.items()}),
                             latency_ms(trial.art.fixed_model, sample, LATENCY_RUNS, trial.threads),
                             latency_ms(trial.art.float_model, sample, LATENCY_RUNS, trial.threads))
            sample, nodes, int8_ms, float_ms = self.base
            path = Path(model)
            bits = precisions(onnx.load(str(path), load_external_data=False))
            lat = Latency(latency_ms(path, sample, LATENCY_RUNS, trial.threads), int8_ms, float_ms)
            self.known[model] = cost_json(shares_of(nodes, bits), lat)
        return self.known[model]


MEANINGFUL_MS = 1.0  # below this float latency, batch-1 timings are per-run overhead: no decision is taken on them


def _slower_than_float(costs: _Costs, a: Attempt) -> bool:
    """Whether an attempt's deployable model measures slower than the float model and than the default int8
    conversion (by 10% + 0.05 ms: when int8 itself is no faster than float here, a float set would not be
    either), on a model whose float run takes at least MEANINGFUL_MS. False when unmeasurable."""
    try:
        c = costs.of(a.model) if a.model else {}
    except Exception:  # a model ORT cannot optimize still has a verdict; its latency is unknown
        return False
    return (bool(c.get("slower_than_float")) and c.get("latency_float_ms", 0.0) >= MEANINGFUL_MS
            and c["latency_ms"] > c["latency_int8_ms"] * 1.1 + 0.05)


LATENCY_RUNS = 10  # median of this many batch-1 runs per model (after warm-up)


def by_cost(passing: list[Attempt]) -> list[Attempt]:
    """Passing attempts, cheapest deployment first: measured latency, except that latencies within timing noise
    of the fastest (10% + 0.05 ms) count as equal, and among those more MACs left at 8 bits wins (what an
    int8-only accelerator needs); unmeasured attempts last."""
    def lat(a: Attempt) -> float:
        return (a.cost or {}).get("latency_ms", float("inf"))

    def int8_share(a: Attempt) -> float:
        return (a.cost or {}).get("shares", {}).get("macs_8", 0.0)

    fastest = min((lat(a) for a in passing), default=float("inf"))
    near = [a for a in passing if lat(a) <= fastest * 1.1 + 0.05]
    rest = [a for a in passing if a not in near]
    return sorted(near, key=lambda a: (-int8_share(a), lat(a))) + sorted(rest, key=lat)


def _cost_line(c: dict) -> str:
    sh = c["shares"]
    slow = "; slower than float" if c.get("slower_than_float") else ""
    return (f"MACs {sh['macs_8']:.1%} int8 / {sh['macs_16']:.1%} int16 / {sh['macs_float']:.1%} float; "
            f"{c['latency_ms']:.3g} ms vs int8 {c['latency_int8_ms']:.3g} ms, float {c['latency_float_ms']:.3g} ms"
            f"{slow}")


def search_line(d: Diagnosis) -> str:
    """The summary's one line about the remedy search: what it found, what it cost, what was cut or harmful."""
    s = d.search or {}
    picked = list(s.get("chosen", ()))
    chosen = ", ".join(f"{x['site']} ({x['kind']})" for x in picked[:4]) + (
        f" (+{len(picked) - 4} more)" if len(picked) > 4 else "") if picked else "none"
    first = s.get("first") or {}
    before = ""
    if first:
        ceiling = next((c for c in first.get("checks") or () if c.get("failing")), None)
        before = ("int16: even every site at 16 bits fails (all samples checked); "
                  if ceiling and not first.get("chosen") else
                  "int16 set failed verification; " if first.get("chosen") else "no int16 set; ")
    parts = [f"remedy search: {s.get('ranked', 0)}/{s.get('sites', 0)} sites ranked on {s.get('samples', 0)} "
             f"samples, {s.get('evaluations', 0) + first.get('evaluations', 0)} set evaluations; {before}"
             f"{s.get('level', 'int16')} set: {chosen}" + ("" if s.get("verified", True) else " (failed verification)"),
             f"{s.get('total_seconds', 0.0):.1f} s (switchboard {s.get('switchboard_seconds', 0.0):.1f} s, "
             f"re-conversions "
             f"{s.get('attempts_seconds', 0.0):.1f} s)"]
    alt = s.get("alternative")
    if alt:
        parts.append(f"int16 set slower than float, so a float set was searched too: {len(alt.get('chosen') or ())} "
                     f"sites" + ("" if alt.get("found") else " (none found)") + (
                         "" if alt.get("verified", True) else " (failed verification)"))
    if d.cost and "latency_ms" in d.cost:
        parts.append(f"offered: {_cost_line(d.cost)}")
    harm = [a.label for a in d.attempts if a.harmful]
    if harm:
        parts.append(f"harmful: {', '.join(harm)}")
    if s.get("cut"):
        parts.append("cut: " + "; ".join(s["cut"]))
    if s.get("cache") == "reused":
        parts.append("cached (no inference)")
    return "; ".join(parts)


def search_key(result: ModelResult, attempts: int, samples: int, remedy_time: float | None,
               accuracy: AccuracyResult | None = None) -> str:
    """What deepen's output depends on: the converted models, the spec entry (data, settings, thresholds,
    known_bad), the measured comparison and accuracy (labels and metric show in it), and the search settings."""
    art = result.artifacts
    fixed = result.comparison("float", "fixed")
    measured = [(r.layer.tensor, r.status, r.summary.mean if r.summary else None) for r in fixed.layers]
    m = result.spec
    return digest(__version__, json.dumps(read_manifest(art.workdir), sort_keys=True, default=str),
                  json.dumps(asdict(m), sort_keys=True, default=str),
                  data_key(m.evaluation.path, art.workdir), data_key(m.calibration.path, art.workdir),
                  json.dumps(measured, sort_keys=True, default=str), str(attempts), str(samples), str(remedy_time),
                  "" if accuracy is None else repr((accuracy.float_value, accuracy.offline_value)))


_STORED = "remedies.json"  # beside results.json in the model's work folder


_ADDED = ("why", "todo", "stats", "remedy", "remedy_result", "attempts", "sensitivity", "search", "cost")


def _stored(result: ModelResult, key: str, base: Diagnosis) -> Diagnosis | None:
    """``base`` (this run's diagnosis) with what deepen added in a previous run with the same key (None: none,
    another key, unreadable)."""
    try:
        stored = json.loads((result.artifacts.workdir / _STORED).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(stored, dict) or stored.get("key") != key:
        return None
    try:
        d = stored["added"]
        return replace(base, why=tuple(d["why"]), todo=tuple(d["todo"]),
                       stats=tuple(TensorStats(**{k: tuple(v) if isinstance(v, list) else v for k, v in x.items()})
                                   for x in d["stats"]),
                       remedy=d["remedy"], remedy_result=d["remedy_result"],
                       attempts=tuple(Attempt(**a) for a in d["attempts"]), sensitivity=tuple(d["sensitivity"]),
                       search=None if d["search"] is None else {**d["search"], "cache": "reused"}, cost=d["cost"])
    except (KeyError, TypeError):
        return None


def deepen(result: ModelResult, threads: int = 0, attempts: int = DEFAULT_ATTEMPTS,
           memory_budget: int | None = None, prepared: PreparedModel | None = None,
           progress: Progress | None = None, samples: int = DEFAULT_SAMPLES, remedy_time: float | None = None,
           use_cache: bool = True, accuracy: AccuracyResult | None = None) -> ModelResult:
    """Add the root-cause statistics and, for a failing model, a verified remedy to the float-vs-fixed diagnosis.

    Statistics cost one short float pass over a few tensors. For a failing model (a layer fails, not xfails)
    the mixed-precision search ranks every site and finds a small set on the first ``samples`` evaluation
    samples, then verifies its spec patch with one real re-conversion on all of them; whole-model settings
    are tried when that does not pass (at most ``attempts`` re-conversions in all; 0: no remedies). Passing
    remedies are ranked by measured deployment cost. ``remedy_time`` (seconds) bounds the search. With
    ``use_cache`` the output is stored in the model's work folder and reused while nothing it depends on
    changed, so a warm re-run runs no inference. ``progress`` is told when each phase starts and ends.
    ``accuracy`` (the default conversion's, when the spec has an accuracy gate): every verified attempt is
    scored on the task too, passes only within the gate's drop, and is harmful when it loses accuracy.
    """
    fixed = result.comparison("float", "fixed")
    if result.error is not None or result.artifacts is None or fixed is None or fixed.diagnosis is None:
        return result
    attempts = attempts if any(r.status == FAILED for r in fixed.layers) else 0  # xfailed only: statistics
    key = search_key(result, attempts, samples, remedy_time, accuracy) if use_cache else None
    new = _stored(result, key, fixed.diagnosis) if key else None
    if new is None:
        new = _deepen(result, fixed, threads, attempts, memory_budget, prepared, samples, remedy_time, progress,
                      accuracy)
        if new is not None and key:
            write_text(result.artifacts.workdir / _STORED,
                       json.dumps({"key": key, "added": {k: v for k, v in asdict(new).items() if k in _ADDED}},
                                  default=str))  # the patch's key order kept
    if new is None:
        return result
    comps = tuple(replace(c, diagnosis=new) if c is fixed else c for c in result.comparisons)
    return replace(result, comparisons=comps)


def _deepen(result: ModelResult, fixed: Comparison, threads: int, attempts: int, memory_budget: int | None,
            prepared: PreparedModel | None, samples: int, remedy_time: float | None,
            progress: Progress | None, accuracy: AccuracyResult | None) -> Diagnosis | None:
    t_start = time.monotonic()
    deadline = None if remedy_time is None else t_start + remedy_time
    d: Diagnosis = fixed.diagnosis
    float_model = onnx.load(str(result.artifacts.float_model), load_external_data=False)
    fixed_model = onnx.load(str(result.artifacts.fixed_model), load_external_data=False)
    layers = [r.layer for r in fixed.layers]
    try:
        where = site(float_model, layers, d.layer)
        trial = _Trial(result.spec, result, d.layer, threads, memory_budget, prepared,
                       accuracy.float_value if accuracy is not None else None)
    except (KeyError, QuantaccInputError):
        return None
    stats = gather(float_model, fixed_model, layers, where, trial.evals, result.artifacts.float_model, trial.calib)
    why = list(d.why)
    if where.shared:
        why.append(f"{where.input_tensor} is quantized once for {', '.join(where.shared)} too (they share its scale "
                   f"and zero point): its precision is set on {where.producer}")
    why += explain(stats)
    remedy, tried, mixed, cut, board_seconds = None, [], None, [], 0.0
    costs = _Costs(trial)  # int8 and float latency measured on first use, each model's once
    foreign = result.spec.quantized  # another tool's quantized model: nothing here can re-quantize it
    if attempts > 0 and foreign is None:
        roots = tuple(r.layer for r in d.roots)
        t_board = time.perf_counter()
        with timed(progress, "remedy search: sensitivity of every site"):
            board = MixedSearch(str(trial.art.float_model), str(trial.art.fixed_model), trial.art.workdir,
                                trial.mspec, fixed.layers, trial.evals, samples, trial.threads, deadline, roots)
        with timed(progress, "remedy search: a set at 16 bits"):
            mixed = board.find(INT16)
        if mixed.patch is None and not mixed.search["cut"]:  # not even every site at 16 bits passes
            with timed(progress, "remedy search: a set left in float"):
                mixed = _after(board.find(FLOAT), mixed)
        cut += mixed.search["cut"]
        board_seconds = time.perf_counter() - t_board
        if mixed.patch is not None:
            board.release()
            with timed(progress, f"remedy: verifying {mixed.label}"):
                a = trial.run(mixed.label, mixed.patch)
            tried.append(a)
            mixed.search["verified"] = a.passes
            if not a.passes and mixed.search["level"] == "int16" and len(tried) < attempts and (
                    deadline is None or time.monotonic() < deadline):
                # The int16 set failed the real conversion: a set left in float is the next candidate.
                t_float = time.perf_counter()
                with timed(progress, "remedy search: a set left in float"):
                    in_float = _after(board.find(FLOAT), mixed)
                board_seconds += time.perf_counter() - t_float
                cut += [c for c in in_float.search["cut"] if c not in cut]
                if in_float.patch is not None:
                    board.release()
                    with timed(progress, f"remedy: verifying {in_float.label}"):
                        b = trial.run(in_float.label, in_float.patch)
                    tried.append(b)
                    in_float.search["verified"] = b.passes
                    mixed, a = in_float, b
            elif a.passes and mixed.search["level"] == "int16" and len(tried) < attempts and (
                    deadline is None or time.monotonic() < deadline) and _slower_than_float(costs, a):
                # 16-bit kernels are no integer kernels on this CPU: the verified int16 set runs slower than the
                # float model, so a set left in float may deploy cheaper. Both are measured and ranked by cost.
                t_float = time.perf_counter()
                with timed(progress, "remedy search: a set left in float (the int16 set is slower than float)"):
                    other = board.find(FLOAT)
                board_seconds += time.perf_counter() - t_float
                cut += [c for c in other.search["cut"] if c not in cut]
                alternative = {k: other.search.get(k) for k in ("level", "chosen", "evaluations", "checks", "found")}
                if other.patch is not None:
                    board.release()
                    with timed(progress, f"remedy: verifying {other.label}"):
                        b = trial.run(other.label, other.patch)
                    tried.append(b)
                    alternative["verified"] = b.passes
                mixed.search["alternative"] = alternative
            q = trial.mspec.quantization
            # A whole-model int8 setting is cheaper than any 16-bit set when it passes: worth one conversion
            # when the set raises weights (what per-channel scales address).
            if a.passes and not q.per_channel and len(tried) < attempts and any(
                    x["kind"] == "weight" for x in mixed.search["chosen"]) and (
                    deadline is None or time.monotonic() < deadline):
                with timed(progress, "remedy: verifying per-channel weights"):
                    tried.append(trial.run("per-channel weights", {"per_channel": True}))
        board.release()  # the whole-model attempts and the latency runs do not need it
        passing = [a for a in tried if a.passes]
        if not passing and len(tried) < attempts:
            _, more = search(trial, d, where, stats, attempts - len(tried), deadline, cut, progress)
            tried += more
    t_cost = time.perf_counter()
    if tried:
        try:
            tried = [replace(a, cost=costs.of(a.model)) if a.model else a for a in tried]
        except Exception as exc:  # a model ORT cannot optimize still has a verdict; its latency is unknown
            cut.append(f"latency not measured: {type(exc).__name__}: {str(exc).strip()[:200]}")
    cost_seconds = time.perf_counter() - t_cost
    base_cos, base_rmse = _default_outputs(fixed, trial.outputs)
    tried = [replace(a, harmful=harmful(a, base_cos, base_rmse, accuracy)) for a in tried]
    passing = by_cost([a for a in tried if a.passes])
    remedy = passing[0] if passing else None
    todo = [_site_aware(t, where) for t in d.todo]
    if foreign is not None:
        # Remedies are verified by re-quantizing with patched settings; the settings here are another tool's.
        todo = [f"remedy search: pytest-quantacc cannot re-quantize a model another tool quantized ({foreign.name}); "
                "no remedy was tried. The hints below name our quantizer's settings: apply their counterpart in "
                "your tool, or gate the float model with our conversion to have remedies verified",
                *todo]
    # Without a passing remedy, the result of the best attempt still tells how far the usual knobs get.
    best = remedy or max(tried, key=lambda a: -2.0 if a.outputs_cos is None else a.outputs_cos, default=None)
    if remedy is not None:
        # What was measured supersedes the generic hints.
        cos = "-" if remedy.outputs_cos is None else f"{remedy.outputs_cos:.4f}"
        task = "" if remedy.accuracy is None or accuracy is None else (
            f"; task accuracy {remedy.accuracy:.4g} (float {accuracy.float_value:.4g}, default conversion "
            f"{accuracy.offline_value:.4g})")
        todo = [f"verified: {remedy.label} makes every layer pass (outputs cos {cos}{task}); "
                f"paste into the model entry:\n" + _indent(patch_yaml(remedy.patch), 6)]
        if remedy.cost and "latency_ms" in remedy.cost:
            todo.append(f"cost: {_cost_line(remedy.cost)}")
        failed = [a.label for a in tried if not a.passes]
        if failed:
            todo.append(f"tried, not enough on its own: {'; '.join(failed)}")
    elif tried:
        todo.insert(0, f"none of the {len(tried)} remedies tried makes every layer pass; closest: {best.label} "
                       f"(first diverging layer {best.first_diverging_layer}, outputs cos "
                       f"{'-' if best.outputs_cos is None else f'{best.outputs_cos:.4f}'})")
    harm = [a.label for a in tried if a.harmful]
    if mixed is None:  # otherwise the summary's search line says both, once
        if harm:
            todo.append(f"harmful (outputs worse than the default conversion): {'; '.join(harm)}")
        if cut:
            todo.append("cut: " + "; ".join(cut))
    account = None
    if mixed is not None:
        account = {**mixed.search, "cut": cut, "cache": "computed", "time_budget": remedy_time,
                   "switchboard_seconds": round(board_seconds, 3),
                   "attempts_seconds": round(sum(a.seconds for a in tried), 3), "cost_seconds": round(cost_seconds, 3),
                   "total_seconds": round(time.monotonic() - t_start, 3),
                   "ranking": [a.label for a in passing]}
    return replace(d, why=tuple(why), todo=tuple(todo), stats=stats,
                   remedy=remedy.patch if remedy else None,
                   remedy_result=best.result_json() if best else None, attempts=tuple(tried),
                   sensitivity=mixed.sensitivity if mixed else (), search=account,
                   cost={"label": remedy.label, **remedy.cost} if remedy and remedy.cost else None)


_NAIVE = "raise the precision of the input activations"


def _site_aware(todo: str, where: Site) -> str:
    """diagnose's input-precision hint names the nearest inputs; point it where their range is really set."""
    if not todo.startswith(_NAIVE) or not where.producer or not where.shared:
        return todo
    return (f"{_NAIVE} where their range is set ({', '.join(where.shared)} share it with {where.input_tensor}): "
            f"quantization.overrides: {{{where.producer}: {{activations: int16}}}}")


def _indent(text: str, n: int) -> str:
    return "\n".join(" " * n + line for line in text.splitlines())
