"""The preprocessing pipeline check: deployment input folded into the model, and the user's own preprocessing.

NPU toolchains take raw camera images: the conversion folds normalisation ((x - mean) / std), channel order
and layout into the model, so the deployed model eats uint8 NHWC pixels. In the vendor SOPs the most common
cause of a large accuracy loss is not quantization but a mismatch between this folded preprocessing and the
preprocessing the model was trained and validated with. Here:

- ``fold``: the user's model with Cast/Transpose/Gather/Sub/Div (or Mul) nodes in front of its input, built
  with onnx.helper, so the float (and quantized) models take the raw images of the spec's data;
- ``check_pipeline`` (mode ``original``): the user's original model on the user's own preprocessing (a
  Python hook) against the folded float model on the raw image. They must agree to float precision. When
  they do not, the usual mistakes are simulated one by one on the reference preprocessing and re-run through
  the original model; a mistake whose outputs reproduce the hook's outputs "fits" and is reported.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .errors import QuantaccInputError

LAYOUTS = ("NCHW", "NHWC")
COLORS = ("RGB", "BGR")
RAW_TYPES = ("uint8", "float32")
_PREFIX = "preprocess/"


@dataclass(frozen=True)
class Preprocess:
    """The deployment input and how it becomes the model input: ``(x - mean) / std`` or ``(x - mean) * scale``,
    after reordering ``layout`` -> ``model_layout`` and ``color`` -> ``model_color``. mean/std/scale are per
    channel in the model's channel order (one value: all channels)."""

    input: str = "uint8"
    layout: str = "NHWC"
    model_layout: str = "NCHW"
    color: str = "RGB"
    model_color: str = "RGB"
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] | None = None
    scale: tuple[float, ...] | None = None
    hook: Path | None = None
    function: str | None = None
    cos: float = 0.99999

    def digest(self) -> str:
        """What the folded model depends on (the conversion cache key)."""
        return repr((self.input, self.layout, self.model_layout, self.color, self.model_color, self.mean,
                     self.std, self.scale))


def parse_preprocess(node) -> Preprocess:
    keys = ("input", "layout", "model_layout", "color", "model_color", "mean", "std", "scale", "hook", "cos")
    m = node.mapping(keys)

    def numbers(key: str, positive: bool) -> tuple[float, ...] | None:
        if key not in m:
            return None
        n = m[key]
        items = n.sequence() if isinstance(n.value, list) else [n]
        if not items:
            raise n.fail("expected a number or a non-empty list of numbers")
        vals = tuple(i.number(-1e30, 1e30) for i in items)
        if positive and any(v == 0 for v in vals):
            raise n.fail("must not be zero")
        return vals

    if "std" in m and "scale" in m:
        raise m["scale"].fail("give std (x - mean) / std or scale (x - mean) * scale, not both")
    hook = function = None
    if "hook" in m:
        text = m["hook"].string()
        file, sep, function = text.rpartition(":")
        if not sep or not file.endswith(".py") or not function.isidentifier():
            raise m["hook"].fail(f"{text!r}: expected 'module.py:function' (a path relative to the spec)")
        hook = type(m["hook"])(m["hook"].spec, m["hook"].key, file).path()
    color = m["color"].choice(COLORS) if "color" in m else "RGB"
    return Preprocess(
        input=m["input"].choice(RAW_TYPES) if "input" in m else "uint8",
        layout=m["layout"].choice(LAYOUTS) if "layout" in m else "NHWC",
        model_layout=m["model_layout"].choice(LAYOUTS) if "model_layout" in m else "NCHW",
        color=color,
        model_color=m["model_color"].choice(COLORS) if "model_color" in m else color,
        mean=numbers("mean", False) or (0.0,),
        std=numbers("std", True),
        scale=numbers("scale", True),
        hook=hook,
        function=function,
        cos=m["cos"].number(-1.0, 1.0) if "cos" in m else 0.99999,
    )


# ------------------------------------------------------------------------------------------ reference math


def _perm(src: str, dst: str) -> list[int]:
    return [src.index(c) for c in dst]


@dataclass(frozen=True)
class Mistake:
    """One usual preprocessing mistake, as a change to the reference preprocessing."""

    name: str
    swap_color: bool = False
    wrong_layout: bool = False  # the raw buffer reshaped into the model layout instead of transposed
    normalise: int = 1  # how many times (x - mean) / std is applied
    swap_mean_std: bool = False
    pixel_scale: float = 1.0


MISTAKES = (
    Mistake("normalisation applied twice", normalise=2),
    Mistake("normalisation not applied (raw pixels fed)", normalise=0),
    Mistake("RGB/BGR channel order swapped", swap_color=True),
    Mistake("NCHW/NHWC layout swapped (buffer reshaped, not transposed)", wrong_layout=True),
    Mistake("mean and std swapped", swap_mean_std=True),
    Mistake("pixels scaled to 0..1 (divided by 255) before normalisation", pixel_scale=1 / 255),
    Mistake("pixels scaled by 255 (0..1 data treated as 0..255)", pixel_scale=255.0),
)


def _channel_view(p: Preprocess, values: tuple[float, ...]) -> np.ndarray:
    shape = [1, 1, 1, 1]
    shape[p.model_layout.index("C")] = -1
    return np.asarray(values, dtype=np.float32).reshape(shape)


def reference(p: Preprocess, raw: np.ndarray, mistake: Mistake | None = None) -> np.ndarray:
    """What the folded nodes compute, in numpy; with ``mistake``, what a buggy preprocessing would compute."""
    mk = mistake or Mistake("none")
    x = raw.astype(np.float32) * np.float32(mk.pixel_scale)
    if (p.color != p.model_color) != mk.swap_color:
        x = np.flip(x, axis=p.layout.index("C"))  # in the raw layout, where hand-written code usually does it
    model_shape = tuple(np.transpose(x, _perm(p.layout, p.model_layout)).shape)
    if mk.wrong_layout:
        other = "NHWC" if p.model_layout == "NCHW" else "NCHW"
        x = x.reshape(model_shape) if p.layout != p.model_layout else \
            np.transpose(x, _perm(p.layout, other)).reshape(model_shape)
    else:
        x = np.transpose(x, _perm(p.layout, p.model_layout))
    mean, div = p.mean, p.std
    if mk.swap_mean_std and div is not None:
        mean, div = div, mean
    for _ in range(mk.normalise):
        x = x - _channel_view(p, mean)
        x = x / _channel_view(p, div) if div is not None else (x * _channel_view(p, p.scale) if p.scale else x)
    return np.ascontiguousarray(x, dtype=np.float32)


# ------------------------------------------------------------------------------------------------ folding


def fold(p: Preprocess, model: onnx.ModelProto, fail: Callable[[str], QuantaccInputError]) -> onnx.ModelProto:
    """``model`` taking the raw deployment input: preprocessing nodes inserted before its (single) input."""
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise fail(f"the pipeline check folds preprocessing into a model with one input; this one has {len(inputs)}")
    vi = inputs[0]
    tt = vi.type.tensor_type
    if tt.elem_type != TensorProto.FLOAT or len(tt.shape.dim) != 4:
        raise fail(f"input {vi.name} must be a 4-D float image tensor ({p.model_layout}) to fold preprocessing")
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]
    channels = dims[p.model_layout.index("C")]
    for key, vals in (("mean", p.mean), ("std", p.std), ("scale", p.scale)):
        if vals is not None and len(vals) != 1 and len(vals) != channels:
            raise fail(f"{key} has {len(vals)} values, but input {vi.name} has {channels} channels "
                       f"(axis {p.model_layout.index('C')} of {p.model_layout})")
    if p.color != p.model_color and channels != 3:
        raise fail(f"color {p.color} -> model_color {p.model_color} needs 3 channels; input {vi.name} has {channels}")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    inner = vi.name + "__model_input"
    for node in g.node:
        node.input[:] = [inner if t == vi.name else t for t in node.input]
    raw_dims = [dims[p.model_layout.index(c)] for c in p.layout]
    raw_type = TensorProto.UINT8 if p.input == "uint8" else TensorProto.FLOAT
    new_input = helper.make_tensor_value_info(vi.name, raw_type, raw_dims)
    nodes, x = [], vi.name

    def add(op: str, inputs: list[str], **attrs) -> None:
        nonlocal x
        y = f"{_PREFIX}{op.lower()}_out"  # each op appears once
        nodes.append(helper.make_node(op, inputs, [y], name=f"{_PREFIX}{op}", **attrs))
        x = y

    def const(name: str, values) -> str:
        g.initializer.append(numpy_helper.from_array(np.asarray(values), f"{_PREFIX}{name}"))
        return f"{_PREFIX}{name}"

    if raw_type != TensorProto.FLOAT:
        add("Cast", [x], to=TensorProto.FLOAT)
    if p.layout != p.model_layout:
        add("Transpose", [x], perm=_perm(p.layout, p.model_layout))
    if p.color != p.model_color:
        add("Gather", [x, const("color_order", np.array([2, 1, 0], dtype=np.int64))],
            axis=p.model_layout.index("C"))
    if any(v != 0 for v in p.mean):
        add("Sub", [x, const("mean", _channel_view(p, p.mean))])
    if p.std is not None:
        add("Div", [x, const("std", _channel_view(p, p.std))])
    elif p.scale is not None:
        add("Mul", [x, const("scale", _channel_view(p, p.scale))])
    if not nodes:
        add("Identity", [x])
    nodes[-1].output[0] = inner
    g.input.remove(vi)
    g.input.insert(0, new_input)
    old = list(g.node)
    del g.node[:]
    g.node.extend(nodes + old)
    return out


# ------------------------------------------------------------------------------------------- the check


@dataclass(frozen=True)
class Suspect:
    mistake: str
    cos: float  # original model on the simulated mistake vs original model on the hook's input (worst output)
    fits: bool


@dataclass(frozen=True)
class PipelineResult:
    """original (user's model, user's preprocessing) vs float (folded model, raw input), per model output."""

    outputs: tuple[tuple[str, object], ...]  # (output name, metrics.Summary)
    cos: float
    suspects: tuple[Suspect, ...] = ()

    @property
    def passed(self) -> bool:
        return all(s["cos"] >= self.cos for _, s in self.outputs)


def _load_hook(mspec) -> Callable[[np.ndarray], np.ndarray]:
    p = mspec.preprocess
    key = "preprocess.hook"
    name = f"quantacc_hook_{abs(hash(str(p.hook)))}"
    try:
        spec = importlib.util.spec_from_file_location(name, p.hook)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's module: any error in it is theirs to see
        raise mspec.error(key, f"cannot import {p.hook.name}: {type(exc).__name__}: {exc}") from None
    fn = getattr(module, p.function, None)
    if not callable(fn):
        raise mspec.error(key, f"{p.hook.name} has no function {p.function!r}")
    return fn


def check_pipeline(mspec, float_model: Path, evals, threads: int = 0) -> PipelineResult:
    """Mode ``original``: the user's model on ``hook(raw)`` vs the folded float model on ``raw``."""
    from .metrics import Accumulator, tensor_metrics
    from .simulate import Runner

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
        except Exception as exc:  # the user's code
            raise mspec.error("preprocess.hook", f"{p.function} raised on sample {i}: "
                              f"{type(exc).__name__}: {exc}") from None
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


def pipeline_text(name: str, r: PipelineResult) -> str:
    """The failure message of the original-vs-float item."""
    lines = [f"{name}: original vs float: the original model on your preprocessing (preprocess.hook) does not "
             f"match the model with the deployment preprocessing folded in (cos >= {r.cos})"]
    for out, s in r.outputs:
        lines.append(f"  output {out}: cos {s['cos']:.6f} (worst sample {s.worst['cos']:.6f}), rmse {s['rmse']:.4f}")
    fits = [s for s in r.suspects if s.fits]
    lines.append("")
    if fits:
        lines.append("what fits: your preprocessing behaves like the spec's preprocessing with this mistake:")
        lines += [f"  - {s.mistake} (cos {s.cos:.6f})" for s in fits]
    else:
        lines.append("no usual mistake explains the difference alone; check the spec's mean/std/scale, color and "
                     "layout against the hook")
    lines.append("suspects tested (original model on the simulated mistake vs on your preprocessing):")
    lines += [f"  {'*' if s.fits else ' '} {s.mistake}: cos {s.cos:.6f}" for s in r.suspects]
    return "\n".join(lines)
