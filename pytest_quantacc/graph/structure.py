"""Small, pure helpers over ONNX graphs: inputs, tensor types, node naming, exposing tensors as outputs."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
from onnx import helper

from ..samples import InputInfo

FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}


def input_infos(model: onnx.ModelProto) -> tuple[InputInfo, ...]:
    """The inputs a caller must feed (graph inputs that are not initializers)."""
    inits = {i.name for i in model.graph.initializer}
    infos = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)) if tt.elem_type else np.dtype(np.float32)
        dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
        infos.append(InputInfo(vi.name, dtype, dims))
    return tuple(infos)


def elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor whose type is known (inputs, outputs, value_info, initializers)."""
    types: dict[str, int] = {}
    g = model.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    for init in g.initializer:
        types[init.name] = init.data_type
    return types


def name_nodes(model: onnx.ModelProto) -> None:
    """Give every node a unique, stable name in place.

    Node names are optional in ONNX and some exporters repeat them; people need a name to point at a layer
    and the quantizer's ``nodes_to_exclude`` needs one to act on, so unnamed nodes become ``<OpType>_<n>``.
    """
    seen: set[str] = set()
    counters: dict[str, int] = {}
    for node in model.graph.node:
        name = node.name
        if not name or name in seen:
            base = node.name or node.op_type
            while True:
                counters[base] = counters.get(base, 0) + 1
                name = f"{base}_{counters[base]}"
                if name not in seen:
                    break
            node.name = name
        seen.add(name)


def expose(model: onnx.ModelProto, tensors: Iterable[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph outputs also include ``tensors`` (existing outputs kept first)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    present = {o.name for o in out.graph.output}
    for name in tensors:
        if name not in present:
            out.graph.output.append(onnx.ValueInfoProto(name=name))
            present.add(name)
    return out


def producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {t: n for n in model.graph.node for t in n.output if t}


def consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for t in n.input:
            if t:
                out.setdefault(t, []).append(n)
    return out


def _outer_names(node: onnx.NodeProto) -> set[str]:
    """Names a node's subgraphs (If/Loop/Scan bodies) may read from the enclosing graph."""
    names: set[str] = set()
    for a in node.attribute:
        for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
            for n in g.node:
                names.update(n.input)
                names |= _outer_names(n)
            names.update(o.name for o in g.output)
    return names


def prune(model: onnx.ModelProto, outputs: Iterable[str]) -> onnx.ModelProto:
    """A copy of ``model`` that computes only ``outputs``, which become its graph outputs.

    Nodes, initializers and inputs nothing requested depends on are dropped, so a session over an early
    part of a big graph neither runs nor loads the rest. Kept nodes stay in their original order, and with
    optimizations off each runs the same kernel on the same inputs: the values are the full graph's.
    """
    wanted = list(dict.fromkeys(outputs))
    prod = producers(model)
    needed = set(wanted)
    stack = list(wanted)
    keep: set[int] = set()
    while stack:
        node = prod.get(stack.pop())
        if node is None or id(node) in keep:
            continue
        keep.add(id(node))
        for t in {*node.input, *_outer_names(node)}:
            if t and t not in needed:
                needed.add(t)
                stack.append(t)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    nodes = [n for n in model.graph.node if id(n) in keep]
    del g.node[:]
    g.node.extend(nodes)
    inits = [i for i in g.initializer if i.name in needed]
    del g.initializer[:]
    g.initializer.extend(inits)
    inputs = [i for i in g.input if i.name in needed]
    del g.input[:]
    g.input.extend(inputs)
    typed = {o.name: o for o in model.graph.output}
    del g.output[:]
    g.output.extend(typed.get(t, onnx.ValueInfoProto(name=t)) for t in wanted)
    return out


def ancestors(float_model: onnx.ModelProto, tensor: str) -> set[str]:
    """Every tensor ``tensor`` depends on (transitively), in the main graph."""
    prod = producers(float_model)
    seen: set[str] = set()
    stack = [i for i in prod[tensor].input if i] if tensor in prod else []
    while stack:
        t = stack.pop()
        if t not in seen:
            seen.add(t)
            if t in prod:
                stack.extend(i for i in prod[t].input if i)
    return seen



def descendants(float_model: onnx.ModelProto, tensors: Iterable[str]) -> set[str]:
    """``tensors`` and every tensor computed from any of them (transitively), in the main graph."""
    users = consumers(float_model)
    seen: set[str] = set()
    stack = list(tensors)
    while stack:
        t = stack.pop()
        if t not in seen:
            seen.add(t)
            stack.extend(o for n in users.get(t, []) for o in n.output if o)
    return seen
