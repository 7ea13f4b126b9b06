"""Which parts of a tensor are judged on their own: the slices of a Concat's output, the channels of a
channel-first tensor. Read from the graph (declared and inferred shapes, producers), never guessed from
values, so the same tensor is split the same way in every run.

Whole-tensor metrics are dominated by the parts with the largest values (contract: "Masking-proof metrics");
``engine.slices`` measures the parts this module names.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx
from onnx import shape_inference

PartKind = Literal["slice", "channel"]
QRANGE = {"uint8": (0, 255), "int8": (-128, 127), "uint16": (0, 65535), "int16": (-32768, 32767)}  # integer codes
Shapes = dict[str, list[int | str | None]]

# Ops that pass values through unchanged (only the layout moves): a Concat input read through them has the
# values (and the quantization range) of the tensor before them.
VALUE_KEEPING = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity"})


@dataclass(frozen=True)
class ConcatSlices:
    """The parts of a Concat's output: each input's slice along the concat axis.

    ``bounds`` is None when an input's size along the axis is not known statically (``unknown`` says which).
    """

    node: str
    tensor: str
    axis: int
    inputs: tuple[str, ...]
    sizes: tuple[int | None, ...]
    bounds: tuple[int, ...] | None
    unknown: str | None = None


def tensor_shapes(model: onnx.ModelProto) -> Shapes:
    """Every tensor's shape from the graph's declarations and ONNX shape inference (dims: int, symbol or None).

    Computed once per model and passed to :func:`concat_slices` / :func:`channel_axis`: shape inference of a
    large graph costs far more than the lookups.
    """
    try:
        inferred = shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # inference failing on an exotic graph leaves the declared shapes
        inferred = model
    g = inferred.graph
    out: Shapes = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            out[vi.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
    for init in g.initializer:
        out[init.name] = list(init.dims)
    return out


def concat_slices(model: onnx.ModelProto, tensor: str, shapes: Shapes | None = None) -> ConcatSlices | None:
    """The slice boundaries of ``tensor`` along its Concat's axis; None when no Concat produces ``tensor``."""
    node = next((n for n in model.graph.node if n.op_type == "Concat" and tensor in n.output), None)
    if node is None:
        return None
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
    shapes = tensor_shapes(model) if shapes is None else shapes
    inputs = tuple(i for i in node.input if i)
    rank = next((len(shapes[i]) for i in inputs if i in shapes), None)
    if axis < 0:
        if rank is None:
            return ConcatSlices(node.name, tensor, axis, inputs, (None,) * len(inputs), None,
                                f"negative axis {axis} and no input rank known")
        axis += rank
    sizes = tuple(shapes[i][axis] if i in shapes and len(shapes[i]) > axis and
                  isinstance(shapes[i][axis], int) and shapes[i][axis] > 0 else None for i in inputs)
    missing = [i for i, s in zip(inputs, sizes) if s is None]
    if missing:
        return ConcatSlices(node.name, tensor, axis, inputs, sizes, None,
                            f"size along axis {axis} unknown for {', '.join(missing)}")
    return ConcatSlices(node.name, tensor, axis, inputs, sizes, tuple(int(b) for b in np.cumsum((0,) + sizes)))


# Ops that keep a channel-first layout from their first input (elementwise, activations, pooling, resizing).
_LAYOUT_KEEPING = frozenset({
    "Relu", "LeakyRelu", "PRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Clip", "Elu", "Selu", "Gelu",
    "Mish", "Softplus", "Add", "Sub", "Mul", "Div", "Identity", "Dropout", "MaxPool", "AveragePool", "LpPool",
    "Resize", "Upsample", "Pad", "Cast", "QuantizeLinear", "DequantizeLinear"})
_CHANNEL_FIRST = frozenset({"Conv", "ConvTranspose", "BatchNormalization", "InstanceNormalization",
                            "GlobalAveragePool", "GlobalMaxPool", "ConvInteger", "QLinearConv"})


@dataclass(frozen=True)
class ChannelAxis:
    """Which axis of a tensor holds its channels, or None, and why (shown when per-channel is not judged)."""

    tensor: str
    axis: int | None
    reason: str


def channel_axis(model: onnx.ModelProto, tensor: str, shapes: Shapes | None = None,
                 producers: dict[str, onnx.NodeProto] | None = None) -> ChannelAxis:
    """The channel axis of ``tensor``: axis 1 for NCHW conv-like rank-4 and [N, C, L] rank-3 tensors.

    The layout is taken from the graph, not guessed from the shape alone: a rank-3 [batch, tokens, hidden]
    transformer activation has the same rank as a Conv1d output, and an NHWC tensor the same rank as NCHW.
    Walking back through layout-keeping ops (activations, elementwise, pooling), the tensor must come from a
    channel-first op (Conv, BatchNormalization, ...) or a channel-axis-1 Concat of such tensors.
    """
    shapes = tensor_shapes(model) if shapes is None else shapes
    rank = len(shapes[tensor]) if tensor in shapes else None
    if rank is None:
        return ChannelAxis(tensor, None, "rank unknown (no declared or inferred shape)")
    if rank not in (3, 4):
        return ChannelAxis(tensor, None, f"rank {rank}: only rank-3 [N, C, L] and rank-4 [N, C, H, W] have a "
                                         f"channel axis here")
    prod = producers if producers is not None else {o: n for n in model.graph.node for o in n.output}
    seen: set[str] = set()
    t = tensor
    while t in prod and t not in seen:
        seen.add(t)
        n = prod[t]
        if n.op_type in _CHANNEL_FIRST:
            return ChannelAxis(tensor, 1, f"channel-first from {n.op_type} {n.name}")
        if n.op_type == "Concat":
            axis = next((a.i for a in n.attribute if a.name == "axis"), 0)
            if axis % rank != 1:
                return ChannelAxis(tensor, None, f"Concat {n.name} joins along axis {axis}, not channels")
        elif n.op_type not in _LAYOUT_KEEPING:
            return ChannelAxis(tensor, None, f"layout not known after {n.op_type} {n.name}")
        t = next((i for i in n.input if i), "")
    return ChannelAxis(tensor, None, "no channel-first producer upstream (a graph input or an unknown op)")


@dataclass(frozen=True)
class PartPlan:
    """How one tensor is split: ``kind`` along ``axis``; ``bounds`` fixed for slices, None for channels (their
    count is the tensor's size along the axis, read from the first sample). ``names``: each slice's Concat input,
    ``node``: the Concat."""

    kind: PartKind
    axis: int
    bounds: tuple[int, ...] | None = None
    names: tuple[str, ...] = ()
    node: str | None = None


def part_plans(model: onnx.ModelProto, tensors: Iterable[str], channels: bool) -> dict[str, tuple[PartPlan, ...]]:
    """The parts each of ``tensors`` is judged by: a Concat output's slices always (when the slice sizes are
    known), its channels too when ``channels`` (``gate: {granularity: channel}``) and it has a channel axis."""
    wanted = list(tensors)
    concats = {o for n in model.graph.node if n.op_type == "Concat" for o in n.output}
    if not channels and not concats.intersection(wanted):
        return {}
    shapes = tensor_shapes(model)
    prod = {o: n for n in model.graph.node for o in n.output}
    plans: dict[str, tuple[PartPlan, ...]] = {}
    for t in wanted:
        found: list[PartPlan] = []
        s = concat_slices(model, t, shapes) if t in concats else None
        if s is not None and s.bounds is not None and len(s.inputs) > 1:
            found.append(PartPlan("slice", s.axis, s.bounds, s.inputs, s.node))
        if channels:
            ch = channel_axis(model, t, shapes, prod)
            if ch.axis is not None:
                found.append(PartPlan("channel", ch.axis))
        if found:
            plans[t] = tuple(found)
    return plans


def value_source(model: onnx.ModelProto, tensor: str, known: set[str]) -> str | None:
    """The tensor in ``known`` furthest back whose values ``tensor`` carries unchanged (walking back through
    reshapes), or None: a Concat input ``scores_flat`` is the Sigmoid's ``scores`` reshaped, and the Sigmoid is
    what a person knows the values by."""
    prod = {o: n for n in model.graph.node for o in n.output}
    t: str | None = tensor
    found = None
    seen: set[str] = set()
    while t is not None and t not in seen:
        if t in known:
            found = t
        seen.add(t)
        n = prod.get(t)
        t = n.input[0] if n is not None and n.op_type in VALUE_KEEPING and n.input else None
    return found
