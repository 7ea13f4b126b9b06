"""ONNX Runtime sessions for the three modes, with the tensors we compare exposed as outputs.

- float: ``float.onnx`` with optimizations off, so every node output exists as in the graph we show.
- fixed: ``fixed.onnx`` with optimizations off: QuantizeLinear/DequantizeLinear run as written, which is
  fake-quant with every quantized tensor visible.
- offline: ``fixed.onnx`` with all optimizations on: ONNX Runtime fuses DQ -> op -> Q into integer kernels.
  Only QuantizeLinear outputs are exposed there; they are the tensors the fused kernels write, and exposing
  them does not stop fusion (a test checks the model outputs are bit-identical with and without).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import onnx

from ..graph.extdata import inline_small
from ..graph.structure import elem_types, expose


class Runner:
    """One inference session over a model with extra tensors exposed; ``run`` returns them by name.

    Weights stored as external data are never loaded into Python: the graph is read without them, the
    exposed copy is handed to ONNX Runtime as bytes and ORT reads the weights from ``data_dir`` itself. So a
    model beyond protobuf's 2 GB limit costs no copy on disk and no second copy in memory.
    """

    def __init__(self, model: onnx.ModelProto | Path, tensors: Iterable[str], optimize: bool, threads: int = 0,
                 data_dir: Path | None = None) -> None:
        import onnxruntime as ort

        if isinstance(model, Path):
            data_dir = data_dir or model.parent
            model = onnx.load(str(model), load_external_data=False)
        model = expose(model, list(dict.fromkeys(tensors)))
        if data_dir is not None:  # ORT's load-time shape inference cannot read shape tensors from side files
            inline_small(model, data_dir)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                         else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
        opts.intra_op_num_threads = threads
        # Spinning worker threads keep cores busy between runs, starving the metric code that runs there.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if data_dir is not None:
            opts.add_session_config_entry("session.model_external_initializers_file_folder_path", str(data_dir))
        opts.log_severity_level = 3
        self.outputs = [o.name for o in model.graph.output]
        self.inputs = [i.name for i in model.graph.input]
        self._fed = set(self.inputs)
        self._session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # A graph pruned to part of the model may not read every input the caller has.
        values = self._session.run(self.outputs, {k: v for k, v in feeds.items() if k in self._fed})
        return dict(zip(self.outputs, values))


_FLOAT_IN = "__quantacc_float"
_OWN_OUT = "__quantacc_own"


def isolate(fixed: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, str], dict[str, str]]:
    """The fixed model rewired so that each quantized layer computes from the float model's values.

    In a QDQ graph one QuantizeLinear serves two roles: it quantizes a layer's output and the next layer's
    input. To measure a layer's *own* error (its quantized computation fed with float inputs), every
    activation QuantizeLinear is made to read a new graph input carrying the float tensor, and a copy of the
    Q/DQ pair is hung on the original tensor, so the copy's output is "this layer, quantized inputs from
    float values, quantized output".

    Returns the model, ``{new graph input: float tensor name}`` and ``{QuantizeLinear output: own tensor}``.
    """
    model = onnx.ModelProto()
    model.CopyFrom(fixed)
    g = model.graph
    inits = {i.name for i in g.initializer}
    graph_inputs = {i.name for i in g.input}
    users: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for t in n.input:
            users.setdefault(t, []).append(n)
    types = elem_types(model)
    feeds: dict[str, str] = {}
    own: dict[str, str] = {}
    nodes: list[onnx.NodeProto] = []
    for q in list(g.node):
        nodes.append(q)
        x = q.input[0] if q.op_type == "QuantizeLinear" else ""
        if not x or x in inits or x in graph_inputs:
            continue
        dqs = [d for d in users.get(q.output[0], []) if d.op_type == "DequantizeLinear"]
        if not dqs:
            continue
        q_copy, dq_copy = onnx.NodeProto(), onnx.NodeProto()
        q_copy.CopyFrom(q)
        dq_copy.CopyFrom(dqs[0])
        q_copy.name, dq_copy.name = q.name + _OWN_OUT, dqs[0].name + _OWN_OUT
        q_copy.output[0] = q.output[0] + _OWN_OUT
        dq_copy.input[0] = q_copy.output[0]
        dq_copy.output[0] = x + _OWN_OUT
        nodes += [q_copy, dq_copy]  # right after the original Q, which already follows x's producer
        own[q.output[0]] = dq_copy.output[0]
        fed = x + _FLOAT_IN
        q.input[0] = fed
        if fed not in feeds:
            feeds[fed] = x.removesuffix("_QuantizeLinear_Input")
            g.input.append(onnx.helper.make_tensor_value_info(fed, types.get(x, onnx.TensorProto.FLOAT), None))
    del g.node[:]
    g.node.extend(nodes)
    return model, feeds, own


def pipelined(samples: Iterable, run: Callable, reduce: Callable, overlap: bool = True) -> None:
    """``reduce(run(sample))`` for every sample, the reduction of one sample overlapping the next one's runs.

    ONNX Runtime leaves part of the cores idle between and within runs, and numpy releases the GIL, so the
    metric code of sample i runs beside the model runs of sample i+1 (measured: -30% wall time on a 65-layer
    CNN at 2 cores). Reductions still run one at a time and in sample order, so accumulated results are
    bit-identical to a serial loop; at most two samples' tensors are alive at once.
    """
    if not overlap or (os.cpu_count() or 1) < 2:
        for sample in samples:
            reduce(run(sample))
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="quantacc-metrics") as pool:
        pending = None
        for sample in samples:
            outputs = run(sample)
            if pending is not None:
                pending.result()  # re-raises a failure of the previous reduction
            pending = pool.submit(reduce, outputs)
        if pending is not None:
            pending.result()
