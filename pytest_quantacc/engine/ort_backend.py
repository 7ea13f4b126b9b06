"""The ONNX Runtime backend: float, fixed and offline sessions over the evaluation samples, per pass.

Samples stream through the sessions one at a time; only per-layer accumulators are kept, so memory does
not grow with the number of evaluation samples. A failing model pays for a second pass that measures each
layer's own error (its quantized computation fed float inputs).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import numpy as np
import onnx

from ..convert.workdir import Artifacts
from ..graph.foreign import ForeignLayers
from ..graph.match import Layer, match_layers
from ..graph.parts import PartPlan, part_plans
from ..graph.structure import prune
from ..samples import Samples
from ..spec.model import ModelSpec
from .diagnose import diagnose
from .judge import apply_inheritance, finish, inherit_outputs, judge_comparison
from .metrics import Accumulator, AgreementAccumulator, Parts, accumulate, add_parts, tensor_metrics
from .passes import Plan, default_budget, plan, tensor_bytes
from .progress import Progress, timed
from .results import AgreementResult, Comparison, ModelResult
from .runner import Runner, isolate, pipelined


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


def simulate(mspec: ModelSpec, art: Artifacts, evals: Samples, threads: int,
              memory_budget: int | None = None, foreign: ForeignLayers | None = None,
              modes: set[str] | None = None, progress: Progress | None = None) -> ModelResult:
    """Run and compare the modes. ``foreign``: the layers of a user's own QDQ model (``quantized:``) instead of
    our conversion's; ``modes``: the modes to run when they differ from the spec's (a QOperator model has no
    fixed mode); ``progress``: told when the own-error pass starts and ends."""
    float_model = onnx.load(str(art.float_model), load_external_data=False)
    fixed_model = onnx.load(str(art.fixed_model), load_external_data=False)
    layers = list(foreign.layers) if foreign is not None else match_layers(float_model, fixed_model)
    outputs = [o.name for o in float_model.graph.output]
    out_ops = {t: (n.name, n.op_type) for n in float_model.graph.node for t in n.output}
    modes = set(mspec.modes) if modes is None else modes
    overlap = threads != 1
    budget = memory_budget if memory_budget is not None else default_budget()
    passes = plan_passes(float_model, layers, evals, modes, budget, 2 if overlap else 1)
    # Concat outputs per slice always, every channel-first tensor per channel when the gate asks for it.
    plans = part_plans(float_model, [lay.tensor for lay in layers if lay.skip is None] + outputs,
                       channels=mspec.gate.granularity == "channel")

    fx_acc: dict[str, Accumulator] = {}
    fx_skip: dict[str, str] = {}
    fx_parts: Parts = {}
    off_acc: dict[str, Accumulator] = {}
    off_skip: dict[str, str] = {}
    off_parts: Parts = {}
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
                    # parts are cut in the float layout: none for a tensor a foreign model holds transposed
                    accumulate(fx_acc, fx_skip, lay.tensor, oriented(f.get(lay.tensor), lay),
                               fx.get(lay.fixed_tensor), fx_parts,
                               plans.get(lay.tensor, ()) if lay.perm is None else ())
            if f and deployed:
                for name in outs:
                    accumulate(off_acc, off_skip, name, f.get(name), deployed.get(name), off_parts,
                               plans.get(name, ()))
            if fx and off:
                for lay in quantized:
                    a, b = fx.get(lay.quant_tensor), off.get(lay.quant_tensor)
                    if a is not None and b is not None and a.shape == b.shape:
                        agree[lay.quant_tensor].add(a, b)

        pipelined(evals, run, reduce, overlap=overlap)
        del runners, run  # free this pass's sessions before the next pass builds its own

    comparisons = []
    out_set = set(outputs)
    if "float" in modes and "fixed" in modes:
        main = finish(layers, fx_acc, fx_skip, mspec, "float", "fixed", fx_parts, out_set)
        if main.first_diverging is not None or mspec.gate.layers == "own":
            # Only a failing model pays for the second pass that separates own from inherited error, unless
            # the gate judges every layer on its own error.
            with timed(progress, "own-error pass"):
                main = with_own_error(main, art, float_model, layers, evals, passes, threads, plans,
                                       foreign.float_of if foreign is not None else None)
            main = apply_inheritance(float_model, judge_comparison(main, mspec, out_set))
        comparisons.append(replace(main, diagnosis=diagnose(float_model, main)))
    if "float" in modes and "offline" in modes:
        out_layers = [Layer(out_ops.get(t, (t, "Input"))[0], out_ops.get(t, (t, "Input"))[1], t, i)
                      for i, t in enumerate(outputs)]
        outs = finish(out_layers, off_acc, off_skip, mspec, "float", "offline", off_parts, out_set)
        if comparisons:
            outs = inherit_outputs(outs, comparisons[0])
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


def laid_out(value, perm: tuple[int, ...] | None):
    """A float value laid out as a foreign QDQ model holds it (transposed by ``perm``; None: as it is)."""
    return value if value is None or perm is None else np.transpose(value, perm)


def oriented(value, layer: Layer):
    """The float value of ``layer`` laid out as the fixed model holds it."""
    return laid_out(value, layer.perm)


def with_own_error(comparison: Comparison, art: Artifacts, float_model: onnx.ModelProto, layers: list[Layer],
                    evals: Samples, passes: Plan, threads: int,
                    plans: dict[str, tuple[PartPlan, ...]],
                    float_of: Mapping[str, tuple[str, tuple[int, ...] | None]] | None = None) -> Comparison:
    """Second pass: each quantized layer's own error, whole and per part, from the fixed model rewired to read
    float values.

    ``float_of`` (a foreign QDQ model) names the float tensor (and its layout) behind each QDQ-model tensor a
    QuantizeLinear reads; where one has none, the model cannot be isolated and the comparison stays without
    own error.
    """
    model, feeds, own_names = isolate(onnx.load(str(art.fixed_model), load_external_data=False))
    perms: dict[str, tuple[int, ...] | None] = {}
    if float_of is not None:
        perms = {fed: float_of[t][1] for fed, t in feeds.items() if t in float_of}
        feeds = {fed: float_of[t][0] if t in float_of else t for fed, t in feeds.items()}
    targets = {lay.tensor: lay for lay in layers if lay.skip is None and lay.quant_tensor in own_names}
    known = {t for n in float_model.graph.node for t in n.output} | {i.name for i in float_model.graph.input}
    if not targets or not set(feeds.values()) <= known:
        return comparison
    accs: dict[str, Accumulator] = {t: Accumulator() for t in targets}
    own_parts: Parts = {}
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

        def run(sample, own_run=own_run, float_run=float_run, fed=fed, perms=perms):
            f = float_run.run(sample)
            return f, own_run.run({**sample, **{name: laid_out(f[tensor], perms.get(name))
                                               for name, tensor in fed.items()}})

        def reduce(outputs, todo=todo) -> None:
            f, o = outputs
            for lay in todo:
                a, b = oriented(f[lay.tensor], lay), o[own_names[lay.quant_tensor]]
                accs[lay.tensor].add(tensor_metrics(a, b))
                if lay.tensor in plans and lay.perm is None:
                    add_parts(own_parts, lay.tensor, plans[lay.tensor], a, b)

        pipelined(evals, run, reduce, overlap=overlap)
        del own_run, float_run, run
    def parts_of(tensor: str) -> tuple:
        return tuple(a.summary() for a in own_parts.get(tensor, ()) if a is not None and a.samples)

    return comparison.with_layers(tuple(
        replace(r, own=accs[r.layer.tensor].summary(), own_parts=parts_of(r.layer.tensor))
        if r.layer.tensor in accs else r for r in comparison.layers))
