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
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx

from .onnxgraph import expose

_PROTO_LIMIT = 1_900_000_000  # below protobuf's 2 GB message limit


class Runner:
    """One inference session over a model with extra tensors exposed; ``run`` returns them by name."""

    def __init__(self, model_path: Path, tensors: Iterable[str], optimize: bool, threads: int = 0) -> None:
        import onnxruntime as ort

        model = onnx.load(str(model_path))
        wanted = list(dict.fromkeys(tensors))
        model = expose(model, wanted)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                         else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        self.outputs = [o.name for o in model.graph.output]
        if model.ByteSize() < _PROTO_LIMIT:
            self._session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        else:
            # Too large to pass as bytes: save beside the artifacts; kept while the session may map it.
            self._tmp = tempfile.TemporaryDirectory(dir=model_path.parent, prefix=".big.")
            path = os.path.join(self._tmp.name, "model.onnx")
            onnx.save_model(model, path, save_as_external_data=True, location="model.onnx.data")
            self._session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self._session.run(self.outputs, feeds)
        return dict(zip(self.outputs, values))
