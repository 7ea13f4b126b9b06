"""Deployment preprocessing folded into the model, and the reference preprocessing with usual mistakes.

NPU toolchains take raw camera images: the conversion folds normalisation ((x - mean) / std), channel order
and layout into the model, so the deployed model eats uint8 NHWC pixels. ``fold`` puts Cast/Transpose/
Gather/Sub/Div (or Mul) nodes in front of the model's input; ``reference`` is the same arithmetic in numpy,
with a :class:`Mistake` applied when asked (the pipeline check tries each one).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import QuantaccInputError
from ..spec.preprocess import Preprocess

_PREFIX = "preprocess/"


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
