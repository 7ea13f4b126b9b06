"""Which tensor of the quantized (QDQ) graph holds the fake-quant value of each float-graph layer output.

The quantizer keeps node names but rewires tensors: it inserts QuantizeLinear -> DequantizeLinear after a
quantized tensor and points consumers at the DequantizeLinear output, renames a graph output's producer
(``T`` becomes ``T_QuantizeLinear_Input``, the DequantizeLinear takes the name ``T``), and removes a Relu or
Clip that follows a quantized node, letting that node write the activation's tensor directly. Matching
therefore follows structure (same node name, same output position, then the Q/DQ chain), not name
conventions, and says why a layer has nothing to compare rather than dropping it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import onnx
from onnx import numpy_helper

from .structure import FLOAT_TYPES, consumers, elem_types, producers

_RENAMED_OUTPUT = "_QuantizeLinear_Input"  # suffix the quantizer gives a graph output's producer


@dataclass(frozen=True)
class QParams:
    """Quantization parameters of one tensor (per-tensor or per-channel along ``axis``)."""

    dtype: str
    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    axis: int | None = None


@dataclass(frozen=True)
class Layer:
    """One float-graph node output, in topological order, with where to find it in the fixed model."""

    name: str  # node name (what people see)
    op_type: str
    tensor: str  # float-graph tensor name (the internal key)
    position: int  # index in topological order of the float graph
    fixed_tensor: str | None = None  # dequantized value in the QDQ model
    quant_tensor: str | None = None  # integer QuantizeLinear output in the QDQ model
    qparams: QParams | None = None
    skip: str | None = None  # why this layer is not compared
    fused_into: str | None = None  # the activation node whose output this node writes in the fixed model
    perm: tuple[int, ...] | None = None  # a foreign QDQ model holds the float tensor transposed by this

    @property
    def label(self) -> str:
        """``node/OpType`` unless the node name already ends with the op type (as exporters often name them)."""
        return self.name if self.name.endswith(f"/{self.op_type}") or self.name == self.op_type else (
            f"{self.name}/{self.op_type}")


def float_layers(model: onnx.ModelProto) -> list[tuple[str, str, str]]:
    """(node name, op type, output tensor) for every node output that may be a float tensor, in graph order.

    Outputs known to be non-float (shape arithmetic, indices) are left out: they are not quantized and
    there is nothing to compare. Outputs of unknown type are kept; evaluation decides.
    """
    types = elem_types(model)
    out = []
    for node in model.graph.node:
        for t in node.output:
            if t and (t not in types or types[t] in FLOAT_TYPES):
                out.append((node.name, node.op_type, t))
    return out


def _initializer(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in model.graph.node:  # some exporters keep constants in Constant nodes
        if node.op_type == "Constant" and node.output[0] == name:
            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
    return None


def _qparams(model: onnx.ModelProto, q: onnx.NodeProto) -> QParams | None:
    scale = _initializer(model, q.input[1])
    zp = _initializer(model, q.input[2]) if len(q.input) > 2 and q.input[2] else None
    if scale is None:
        return None
    axis = next((a.i for a in q.attribute if a.name == "axis"), None) if scale.size > 1 else None
    dtype = str(zp.dtype) if zp is not None else "uint8"
    zps = tuple(int(v) for v in np.ravel(zp)) if zp is not None else (0,) * scale.size
    return QParams(dtype, tuple(float(v) for v in np.ravel(scale)), zps, axis)


def match_layers(float_model: onnx.ModelProto, fixed_model: onnx.ModelProto) -> list[Layer]:
    """Map every float layer output to its fixed-model counterpart, or to the reason there is none."""
    fixed_nodes = {n.name: n for n in fixed_model.graph.node}
    f_prod = producers(float_model)
    q_cons = consumers(fixed_model)
    excluded_reason = "not quantized: the quantizer left this node's output in float"
    # A model output the quantizer left in float still carries the error of every quantized layer before it:
    # it is what the deployed model returns, so it is compared (unless nothing at all is quantized).
    graph_outputs = {o.name for o in float_model.graph.output}
    quantizes = any(n.op_type == "QuantizeLinear" for n in fixed_model.graph.node)

    def dequantized(tensor: str) -> tuple[str, str, QParams | None] | None:
        for q in q_cons.get(tensor, []):
            if q.op_type != "QuantizeLinear":
                continue
            for dq in q_cons.get(q.output[0], []):
                if dq.op_type == "DequantizeLinear":
                    return dq.output[0], q.output[0], _qparams(fixed_model, q)
        return None

    # Float tensor -> (fixed-model tensor written in its place, node that writes it).
    found: dict[str, tuple[str, str]] = {}
    fused_into: dict[str, str] = {}
    for fnode in float_model.graph.node:
        qnode = fixed_nodes.get(fnode.name)
        if qnode is None or qnode.op_type != fnode.op_type:
            continue
        for t_f, t_q in zip(fnode.output, qnode.output):
            if not t_f:
                continue
            owner = f_prod.get(t_q) or f_prod.get(t_q.removesuffix(_RENAMED_OUTPUT))
            if t_q != t_f and owner is not None and owner.name != fnode.name:
                # The quantizer removed the activation ``owner`` and this node now writes its output.
                found[owner.output[0]] = (t_q, owner.name)
                fused_into[t_f] = owner.name
            else:
                found[t_f] = (t_q, fnode.name)

    layers = []
    for position, (name, op_type, tensor) in enumerate(float_layers(float_model)):
        base = Layer(name, op_type, tensor, position)
        if tensor in fused_into:
            layers.append(_with(base, fused_into=fused_into[tensor],
                                skip=f"fused by the quantizer into the following {fused_into[tensor]}; compared there"))
            continue
        if tensor not in found:
            layers.append(_with(base, skip="removed by the quantizer; no counterpart in the fixed model"))
            continue
        t_q, _ = found[tensor]
        dq = dequantized(t_q)
        if dq is None:
            compared = tensor in graph_outputs and quantizes
            layers.append(_with(base, fixed_tensor=t_q, skip=None if compared else excluded_reason))
            continue
        fixed_tensor, quant_tensor, qp = dq
        layers.append(_with(base, fixed_tensor=fixed_tensor, quant_tensor=quant_tensor, qparams=qp))
    return layers


def _with(layer: Layer, **changes) -> Layer:
    return replace(layer, **changes)
