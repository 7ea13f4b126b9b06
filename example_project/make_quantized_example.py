"""Writes models/digits_cnn.other_tool.qdq.onnx: the digits CNN quantized *outside* pytest-quantacc.

Stands in for a model another tool made (NNCF, Quark, a vendor toolchain): here ONNX Runtime's quantize_static,
called directly with settings the spec's own conversion does not use (per-channel weights, symmetric int8
activations). quantacc_quantized.yaml gates it with ``quantized:``.

    python example_project/make_quantized_example.py
"""

from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

HERE = Path(__file__).resolve().parent


class Reader(CalibrationDataReader):
    def __init__(self, path: Path) -> None:
        data = np.load(path)
        name = data.files[0]
        self.samples = iter({name: x[None]} for x in data[name])

    def get_next(self):
        return next(self.samples, None)


if __name__ == "__main__":
    quantize_static(str(HERE / "models" / "digits_cnn.onnx"), str(HERE / "models" / "digits_cnn.other_tool.qdq.onnx"),
                    Reader(HERE / "data" / "calib.npz"), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    extra_options={"ActivationSymmetric": True})
