"""Mode ``original``: the user's own model on the user's own preprocessing vs the folded float model.

In the vendor SOPs the most common cause of a large accuracy loss is not quantization but a mismatch
between the preprocessing folded into the deployed model and the preprocessing the model was trained with.
When the two disagree, each usual mistake (:data:`pytest_quantacc.convert.fold.MISTAKES`) is simulated
and the ones that explain the difference are named.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from ..convert.fold import MISTAKES, reference
from ..spec.node import shown
from .results import PipelineResult, Suspect
from .usercode import import_user_module


def _load_hook(mspec) -> Callable[[np.ndarray], np.ndarray]:
    p = mspec.preprocess
    key = "preprocess.hook"
    name = f"quantacc_hook_{abs(hash(str(p.hook)))}"
    try:
        module = import_user_module(name, p.hook, register=True)
    except (Exception, SystemExit) as exc:  # the user's module: any error in it is theirs to see
        raise mspec.error(key, f"cannot import {p.hook.name}: {type(exc).__name__}: {exc}") from None
    fn = getattr(module, p.function, None)
    if not callable(fn):
        raise mspec.error(key, f"{p.hook.name} has no function {shown(p.function)}")
    return fn


def check_pipeline(mspec, float_model: Path, evals, threads: int = 0) -> PipelineResult:
    """Mode ``original``: the user's model on ``hook(raw)`` vs the folded float model on ``raw``."""
    from .metrics import Accumulator, tensor_metrics
    from .runner import Runner

    p = mspec.preprocess
    hook = _load_hook(mspec)
    original = onnx.load(str(mspec.model), load_external_data=False)
    outputs = [o.name for o in original.graph.output]
    inits = {i.name for i in original.graph.initializer}
    in_name = next(i.name for i in original.graph.input if i.name not in inits)
    orig_run = Runner(original, outputs, optimize=False, threads=threads, data_dir=mspec.model.parent)
    float_run = Runner(float_model, outputs, optimize=False, threads=threads)
    accs = {o: Accumulator() for o in outputs}
    samples = []
    for i, sample in enumerate(evals):
        raw = sample[in_name]
        try:
            fed = np.asarray(hook(raw.copy()), dtype=np.float32)
        except (Exception, SystemExit) as exc:  # the user's code
            raise mspec.error("preprocess.hook", f"{p.function} raised on sample {i}: "
                              f"{type(exc).__name__}: {str(exc)[:500]}") from None
        try:
            o = orig_run.run({in_name: fed})
        except Exception as exc:  # ONNX Runtime rejects the shape or type the hook returned
            raise mspec.error("preprocess.hook", f"the original model rejects what {p.function} returned "
                              f"(shape {list(fed.shape)}): {str(exc).strip().splitlines()[0]}") from None
        f = float_run.run(sample)
        for name in outputs:
            accs[name].add(tensor_metrics(f[name], o[name]))
        samples.append((raw, o))
    result = PipelineResult(tuple((n, a.summary()) for n, a in accs.items()), p.cos)
    if result.passed:
        return result
    suspects = []
    for mk in MISTAKES:
        if (mk.swap_mean_std and p.std is None) or (mk.swap_color and samples[0][0].shape[p.layout.index('C')] != 3):
            continue
        worst = []
        for raw, o in samples:
            try:
                c = orig_run.run({in_name: reference(p, raw, mk)})
            except Exception:  # the mistake gives a shape the model cannot take: it cannot be the explanation
                worst = []
                break
            worst.append(min(tensor_metrics(o[n], c[n])["cos"] for n in outputs))
        if worst:
            cos = float(np.mean(worst))
            suspects.append(Suspect(mk.name, cos, cos >= p.cos))
    suspects.sort(key=lambda s: -s.cos)
    return PipelineResult(result.outputs, p.cos, tuple(suspects))
