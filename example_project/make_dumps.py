"""A stand-in for a vendor NPU simulator: quantize a model, run it, dump every quantized layer the way NPUs do.

The dumps look like a vendor tool's, not like ONNX Runtime's: one folder per sample, one ``.npy`` per tensor
named ``<index>_<tensor>`` (``003_relu2_out``), channels-last (NHWC), the channel dimension zero-padded to a
multiple of 16, integer values (uint8), and the scales and zero points in ``qparams.json`` beside them.
``quantacc_dumps.yaml`` reads the committed dumps (``dumps/fixed``, 16 samples); the test suite also runs this
script as a spec ``command`` (the command backend).

    python make_dumps.py                                    # rewrite dumps/fixed from data/eval.npz
    python make_dumps.py --model M --inputs DIR --out DIR   # what a spec command calls
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

HERE = Path(__file__).resolve().parent
ALIGN = 16


class _Reader(CalibrationDataReader):
    def __init__(self, samples: list[dict[str, np.ndarray]]) -> None:
        self._it = iter(samples)

    def get_next(self):
        return next(self._it, None)


def _samples(npz: Path, limit: int) -> list[dict[str, np.ndarray]]:
    with np.load(npz) as z:
        return [{k: z[k][i:i + 1] for k in z.files} for i in range(min(limit, len(z[z.files[0]])))]


def quantize(model: Path, calib: Path, dest: Path) -> None:
    """uint8 activations, int8 weights, 7-bit weight range: the 'vendor' settings."""
    quantize_static(str(model), str(dest), _Reader(_samples(calib, 64)), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=True)


def dumped_tensors(qdq: onnx.ModelProto) -> list[tuple[str, str, float, int]]:
    """(QuantizeLinear output, float tensor name, scale, zero point) of every quantized activation."""
    inits = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
    inputs = {i.name for i in qdq.graph.input}
    out = []
    for n in qdq.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] not in inits and n.input[0] not in inputs:
            name = n.input[0].removesuffix("_QuantizeLinear_Input")
            out.append((n.output[0], name, float(inits[n.input[1]]), int(inits[n.input[2]])))
    return out


def to_vendor_layout(q: np.ndarray) -> np.ndarray:
    """NCHW -> NHWC (rank >= 3), then the innermost (channel) dimension zero-padded to a multiple of ALIGN."""
    if q.ndim >= 3:
        q = np.moveaxis(q, 1, -1)
    pad = (-q.shape[-1]) % ALIGN
    return np.pad(q, [(0, 0)] * (q.ndim - 1) + [(0, pad)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=HERE / "models" / "digits_cnn.onnx")
    ap.add_argument("--calib", type=Path, default=HERE / "data" / "calib.npz")
    ap.add_argument("--inputs", type=Path, help="folder of one .npz per sample (default: data/eval.npz)")
    ap.add_argument("--limit", type=int, default=16, help="samples dumped from data/eval.npz")
    ap.add_argument("--out", type=Path, default=HERE / "dumps" / "fixed")
    ap.add_argument("--fail", action="store_true", help="exit with an error (to test how failures are reported)")
    args = ap.parse_args()
    if args.fail:
        raise SystemExit("simulator: license server unreachable")
    if args.inputs is not None:
        samples = [dict(np.load(f)) for f in sorted(args.inputs.glob("*.npz"))]
    else:
        samples = _samples(HERE / "data" / "eval.npz", args.limit)
    with tempfile.TemporaryDirectory() as tmp:
        qdq_path = Path(tmp) / "qdq.onnx"
        quantize(args.model, args.calib, qdq_path)
        qdq = onnx.load(str(qdq_path))
    tensors = dumped_tensors(qdq)
    del qdq.graph.output[:]
    qdq.graph.output.extend(helper.make_tensor_value_info(t, onnx.TensorProto.UINT8, None) for t, _, _, _ in tensors)
    session = ort.InferenceSession(qdq.SerializeToString(), providers=["CPUExecutionProvider"])
    args.out.mkdir(parents=True, exist_ok=True)
    for i, sample in enumerate(samples):
        folder = args.out / f"sample_{i}"
        folder.mkdir(exist_ok=True)
        for k, (value, (_, name, _, _)) in enumerate(zip(session.run(None, sample), tensors)):
            np.save(folder / f"{k:03d}_{name}.npy", to_vendor_layout(value))
    qparams = {f"{k:03d}_{name}": {"scale": s, "zero_point": z} for k, (_, name, s, z) in enumerate(tensors)}
    (args.out / "qparams.json").write_text(json.dumps(qparams, indent=1) + "\n")
    print(f"dumped {len(tensors)} tensors x {len(samples)} samples to {args.out}")


if __name__ == "__main__":
    main()
