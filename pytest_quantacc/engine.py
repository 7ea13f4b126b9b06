"""The engine: spec -> conversion -> simulation -> per-layer results, without pytest.

``evaluate_model`` is what a pytest item asks for (once per model, shared by that model's items) and what a
script calls directly. Samples stream through the sessions one at a time; only per-layer accumulators are
kept, so memory does not grow with the number of evaluation samples.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx

from .convert import Artifacts, model_inputs, prepare_float, quantize
from .data import Samples, load_samples
from .diagnose import apply_inheritance, diagnose
from .errors import QuantaccInputError
from .match import Layer, match_layers
from .metrics import Accumulator, Agreement, AgreementAccumulator, Summary, tensor_metrics
from .chunking import Plan, default_budget, plan, tensor_bytes
from .onnxgraph import prune
from .simulate import Runner, isolate, pipelined
from .spec import KnownBad, ModelSpec, Spec, Thresholds

PASSED, FAILED, XFAILED, XPASSED, SKIPPED = "passed", "failed", "xfailed", "xpassed", "skipped"


@dataclass(frozen=True)
class LayerResult:
    """One compared tensor: where it is, its metrics over samples, and its outcome."""

    layer: Layer
    summary: Summary | None
    thresholds: Thresholds
    status: str
    reason: str | None = None  # why skipped, or the known_bad reason
    known_bad: KnownBad | None = None
    inherited_from: str | None = None  # set by diagnosis when the failure comes from an upstream known_bad
    own: Summary | None = None  # the layer's own error: its quantized computation fed with float inputs

    @property
    def breaks(self) -> bool:
        """The metrics break the thresholds (whether or not the layer is known bad)."""
        return self.status in (FAILED, XFAILED)


@dataclass(frozen=True)
class Comparison:
    reference: str
    target: str
    layers: tuple[LayerResult, ...]
    first_diverging: LayerResult | None = None
    diagnosis: object | None = None  # diagnose.Diagnosis, kept loose to avoid an import cycle

    def get(self, tensor: str) -> LayerResult | None:
        return next((r for r in self.layers if r.layer.tensor == tensor), None)

    def with_layers(self, layers: tuple[LayerResult, ...]) -> Comparison:
        """The same comparison over updated layer results (the first diverging layer follows them)."""
        return replace(self, layers=layers, first_diverging=next((r for r in layers if r.breaks), None))


@dataclass(frozen=True)
class AgreementResult:
    """Fixed vs offline agreement over every quantized tensor both expose."""

    tensors: tuple[Agreement, ...]
    tolerance_steps: int
    max_mismatch_rate: float

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
class ModelResult:
    spec: ModelSpec
    artifacts: Artifacts | None = None
    comparisons: tuple[Comparison, ...] = ()
    agreement: AgreementResult | None = None
    error: QuantaccInputError | None = None
    quantized_layers: int = 0
    samples: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    command: object | None = None  # external.CommandRun of a dump-writing command
    pipeline: object | None = None  # pipeline.PipelineResult of mode original
    passes: int = 1  # passes over the graph the memory budget required (chunking.py)
    memory: str | None = None  # why there was more than one pass

    def comparison(self, reference: str, target: str) -> Comparison | None:
        return next((c for c in self.comparisons if (c.reference, c.target) == (reference, target)), None)

    @property
    def status(self) -> str:
        if self.error is not None or self.quantized_layers == 0:
            return FAILED
        failed = any(r.status == FAILED or (r.status == XPASSED and r.known_bad and r.known_bad.strict)
                     for c in self.comparisons for r in c.layers)
        if self.pipeline is not None and not self.pipeline.passed:
            return FAILED
        if failed or (self.agreement is not None and not self.agreement.passed):
            return FAILED
        return PASSED


def _status(summary: Summary, thresholds: Thresholds, known_bad: KnownBad | None) -> str:
    ok = thresholds.passes(summary["cos"], summary["rmse"])
    if known_bad is not None:
        return XPASSED if ok else XFAILED
    return PASSED if ok else FAILED


def _finish(layers: list[Layer], accs: dict[str, Accumulator], skips: dict[str, str], mspec: ModelSpec,
            reference: str, target: str) -> Comparison:
    results = []
    for layer in layers:
        thresholds = mspec.thresholds_for(layer.name)
        kb = mspec.known_bad_for(layer.name)
        reason = layer.skip or skips.get(layer.tensor)
        acc = accs.get(layer.tensor)
        if reason or acc is None or acc.samples == 0:
            results.append(LayerResult(layer, acc.summary() if acc and acc.samples else None, thresholds, SKIPPED,
                                       reason or "no samples compared", kb))
            continue
        summary = acc.summary()
        results.append(LayerResult(layer, summary, thresholds, _status(summary, thresholds, kb),
                                   kb.reason if kb else None, kb))
    first = next((r for r in results if r.breaks), None)
    return Comparison(reference, target, tuple(results), first)


def _compare(acc: dict[str, Accumulator], skips: dict[str, str], tensor: str, f, q) -> None:
    if tensor in skips:
        return
    if f is None or q is None:
        skips[tensor] = "tensor not produced in one of the models"
    elif not (np.issubdtype(f.dtype, np.floating) and np.issubdtype(q.dtype, np.floating)):
        skips[tensor] = f"non-float output ({f.dtype}); not quantized"
    elif f.shape != q.shape:
        skips[tensor] = f"shapes differ: float {list(f.shape)} vs {list(q.shape)}"
    else:
        acc.setdefault(tensor, Accumulator()).add(tensor_metrics(f, q))


def evaluate_model(mspec: ModelSpec, base: Path, threads: int = 0, memory_budget: int | None = None) -> ModelResult:
    """Convert, simulate and compare one spec model. Input problems come back in ``error``, not raised.

    ``memory_budget`` (bytes) bounds the compared tensors held at once; None: a quarter of the memory available.
    """
    if mspec.dumps:
        from .external import evaluate_dumps

        return evaluate_dumps(mspec, base, threads, memory_budget)
    seconds: dict[str, float] = {}
    try:
        t0 = time.perf_counter()
        float_path = prepare_float(mspec, base)
        inputs = model_inputs(float_path)
        calib = load_samples(mspec.calibration.path, mspec.calibration.limit, inputs, mspec.spec_path,
                             f"{mspec.key}.calibration.data")
        evals = calib if mspec.evaluation == mspec.calibration else load_samples(
            mspec.evaluation.path, mspec.evaluation.limit, inputs, mspec.spec_path, f"{mspec.key}.evaluation.data")
        artifacts = quantize(mspec, float_path, calib, base)
        seconds["convert"] = time.perf_counter() - t0
    except QuantaccInputError as exc:
        return ModelResult(mspec, error=exc, seconds=seconds)
    t0 = time.perf_counter()
    result = _simulate(mspec, artifacts, evals, threads, memory_budget)
    seconds["simulate"] = time.perf_counter() - t0
    if "original" in mspec.modes:
        from .pipeline import check_pipeline

        try:
            result = replace(result, pipeline=check_pipeline(mspec, artifacts.float_model, evals, threads))
        except QuantaccInputError as exc:
            return ModelResult(mspec, artifacts, error=exc, seconds=seconds)
    return replace(result, seconds=seconds)


def plan_passes(float_model: onnx.ModelProto, layers: list[Layer], evals: Samples, modes: set[str],
                memory_budget: int | None, in_flight: int) -> Plan:
    """The passes over the graph: one unless one sample's compared tensors would not fit the budget."""
    items = [lay.tensor for lay in layers if lay.skip is None or lay.quant_tensor]
    sizes = tensor_bytes(float_model, evals.largest_shapes())
    by_tensor = {lay.tensor: lay for lay in layers}

    def cost(tensor: str) -> int | None:
        b = sizes.get(tensor)
        if b is None:
            return None
        lay = by_tensor[tensor]
        exposed = 2 * b if lay.skip is None and "fixed" in modes else 0  # float and fixed copies
        if lay.quant_tensor and {"fixed", "offline"} <= modes:  # integer copies in fixed and offline
            exposed += 2 * (b // 4) * (2 if lay.qparams and "16" in lay.qparams.dtype else 1)
        return exposed

    return plan(items, cost, memory_budget, in_flight)


def _simulate(mspec: ModelSpec, art: Artifacts, evals: Samples, threads: int,
              memory_budget: int | None = None) -> ModelResult:
    float_model = onnx.load(str(art.float_model), load_external_data=False)
    fixed_model = onnx.load(str(art.fixed_model), load_external_data=False)
    layers = match_layers(float_model, fixed_model)
    outputs = [o.name for o in float_model.graph.output]
    out_ops = {t: (n.name, n.op_type) for n in float_model.graph.node for t in n.output}
    modes = set(mspec.modes)
    overlap = threads != 1
    budget = memory_budget if memory_budget is not None else default_budget()
    passes = plan_passes(float_model, layers, evals, modes, budget, 2 if overlap else 1)

    fx_acc: dict[str, Accumulator] = {}
    fx_skip: dict[str, str] = {}
    off_acc: dict[str, Accumulator] = {}
    off_skip: dict[str, str] = {}
    agree = {lay.quant_tensor: AgreementAccumulator(lay.quant_tensor, mspec.offline.tolerance_steps)
             for lay in layers if lay.quant_tensor}
    for k, chunk in enumerate(passes.passes):
        in_pass = set(chunk)
        compared = [lay for lay in layers if lay.skip is None and lay.tensor in in_pass]
        quantized = [lay for lay in layers if lay.quant_tensor and lay.tensor in in_pass]
        outs = outputs if k == 0 else []  # model outputs are compared once, in the first pass

        runners = _pass_runners(art, float_model, fixed_model, modes, compared, quantized, outs, threads)

        def run(sample, runners=runners):
            return tuple(r.run(sample) if r else {} for r in runners)

        def reduce(results, compared=compared, quantized=quantized, outs=outs) -> None:
            f, fx, off, deployed = results
            if f and fx:
                for lay in compared:
                    _compare(fx_acc, fx_skip, lay.tensor, f.get(lay.tensor), fx.get(lay.fixed_tensor))
            if f and deployed:
                for name in outs:
                    _compare(off_acc, off_skip, name, f.get(name), deployed.get(name))
            if fx and off:
                for lay in quantized:
                    a, b = fx.get(lay.quant_tensor), off.get(lay.quant_tensor)
                    if a is not None and b is not None and a.shape == b.shape:
                        agree[lay.quant_tensor].add(a, b)

        pipelined(evals, run, reduce, overlap=overlap)
        del runners, run  # free this pass's sessions before the next pass builds its own

    comparisons = []
    if "float" in modes and "fixed" in modes:
        main = _finish(layers, fx_acc, fx_skip, mspec, "float", "fixed")
        if main.first_diverging is not None:
            # Only a failing model pays for the second pass that separates own from inherited error.
            main = _with_own_error(main, art, float_model, layers, evals, passes, threads)
            main = apply_inheritance(float_model, main)
        comparisons.append(replace(main, diagnosis=diagnose(float_model, main)))
    if "float" in modes and "offline" in modes:
        out_layers = [Layer(out_ops.get(t, (t, "Input"))[0], out_ops.get(t, (t, "Input"))[1], t, i)
                      for i, t in enumerate(outputs)]
        outs = _finish(out_layers, off_acc, off_skip, mspec, "float", "offline")
        if comparisons:
            outs = _inherit_outputs(outs, comparisons[0])
        comparisons.append(outs)
    agreement = None
    if "fixed" in modes and "offline" in modes:
        agreement = AgreementResult(tuple(a.result() for a in agree.values() if a.elements),
                                    mspec.offline.tolerance_steps, mspec.offline.max_mismatch_rate)
    return ModelResult(mspec, art, tuple(comparisons), agreement,
                       quantized_layers=sum(1 for lay in layers if lay.quant_tensor), samples=len(evals),
                       passes=passes.count, memory=passes.describe() if passes.count > 1 else None)


def _pass_runners(art: Artifacts, float_model: onnx.ModelProto, fixed_model: onnx.ModelProto, modes: set[str],
                  compared: list[Layer], quantized: list[Layer], outs: list[str],
                  threads: int) -> tuple[Runner | None, Runner | None, Runner | None, Runner | None]:
    """The float, fixed, offline and deployed sessions of one pass (None where the modes need none)."""
    def pruned(model: onnx.ModelProto, wanted: list[str]) -> Runner | None:
        # Only what the pass compares is computed. Pruning is safe with optimizations off, where every node
        # runs the same kernel on the same inputs either way.
        return Runner(prune(model, wanted), [], False, threads, data_dir=art.workdir) if wanted else None

    both = {"float", "fixed"} <= modes
    float_run = pruned(float_model, ([lay.tensor for lay in compared] if both else []) +
                       (outs if "offline" in modes else [])) if "float" in modes else None
    fixed_run = offline_run = deployed_run = None
    if "fixed" in modes:
        wanted = [lay.fixed_tensor for lay in compared] if both else []
        if "offline" in modes:
            wanted += [lay.quant_tensor for lay in quantized]
        fixed_run = pruned(fixed_model, wanted)
    if "offline" in modes and outs:
        # Model outputs come from the deployable model exactly as shipped: exposing intermediate tensors can
        # change which fusions ONNX Runtime applies, so the exposed copy is used only for fixed vs offline.
        deployed_run = Runner(fixed_model, [], optimize=True, threads=threads, data_dir=art.workdir)
    if {"fixed", "offline"} <= modes and quantized:
        # Never pruned: which nodes ONNX Runtime fuses into integer kernels depends on the whole graph (a pruned
        # copy of a model with an If fused a MatMul the deployable model does not), and this session must
        # compute what the deployable model computes. Exposing outputs does not change fusion.
        offline_run = Runner(fixed_model, [lay.quant_tensor for lay in quantized], optimize=True, threads=threads,
                             data_dir=art.workdir)
    return float_run, fixed_run, offline_run, deployed_run


def _inherit_outputs(outputs: Comparison, fixed: Comparison) -> Comparison:
    """An output that fails only because of an acknowledged known_bad layer upstream is xfailed, not red."""
    layers = []
    for r in outputs.layers:
        twin = fixed.get(r.layer.tensor)
        source = twin.inherited_from or (twin.layer.name if twin.known_bad else None) if twin else None
        if r.status == FAILED and twin is not None and twin.status == XFAILED and source:
            r = replace(r, status=XFAILED, inherited_from=source, reason=twin.reason)
        layers.append(r)
    return outputs.with_layers(tuple(layers))


def _with_own_error(comparison: Comparison, art: Artifacts, float_model: onnx.ModelProto, layers: list[Layer],
                    evals: Samples, passes: Plan, threads: int) -> Comparison:
    """Second pass: each quantized layer's own error, from the fixed model rewired to read float values."""
    model, feeds, own_names = isolate(onnx.load(str(art.fixed_model), load_external_data=False))
    targets = {lay.tensor: lay for lay in layers if lay.skip is None and lay.quant_tensor in own_names}
    known = {t for n in float_model.graph.node for t in n.output} | {i.name for i in float_model.graph.input}
    if not targets or not set(feeds.values()) <= known:
        return comparison
    accs: dict[str, Accumulator] = {t: Accumulator() for t in targets}
    overlap = threads != 1
    for chunk in passes.passes:
        todo = [targets[t] for t in chunk if t in targets]
        if not todo:
            continue
        # Pruned to the pass's layers, the rewired model reads only the float values those layers need.
        own_run = Runner(prune(model, [own_names[lay.quant_tensor] for lay in todo]), [], optimize=False,
                         threads=threads, data_dir=art.workdir)
        fed = {f: feeds[f] for f in own_run.inputs if f in feeds}
        float_run = Runner(prune(float_model, [lay.tensor for lay in todo] + list(fed.values())), [], optimize=False,
                           threads=threads, data_dir=art.workdir)

        def run(sample, own_run=own_run, float_run=float_run, fed=fed):
            f = float_run.run(sample)
            return f, own_run.run({**sample, **{name: f[tensor] for name, tensor in fed.items()}})

        def reduce(outputs, todo=todo) -> None:
            f, o = outputs
            for lay in todo:
                accs[lay.tensor].add(tensor_metrics(f[lay.tensor], o[own_names[lay.quant_tensor]]))

        pipelined(evals, run, reduce, overlap=overlap)
        del own_run, float_run, run
    return comparison.with_layers(tuple(
        replace(r, own=accs[r.layer.tensor].summary()) if r.layer.tensor in accs else r for r in comparison.layers))


def evaluate(spec: Spec, base: Path, threads: int = 0, memory_budget: int | None = None) -> list[ModelResult]:
    """Evaluate every valid model of a spec (entries that failed validation are in ``spec.broken``)."""
    return [evaluate_model(m, base, threads, memory_budget) for m in spec.models]
