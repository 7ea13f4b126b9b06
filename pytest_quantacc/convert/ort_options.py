"""ONNX Runtime's ``quantize_static`` ``extra_options``, as a checked table.

``quantize_static`` accepts any dict and silently ignores a key it does not know, so ``ActivationSymetric:
true`` (one m) would quantize with the default and a CI gate would pass on a model nobody meant to ship. The
table below lists every option the docstrings of ``quantize_static`` / ``StaticQuantConfig`` document in
onnxruntime 1.32 (``onnxruntime/quantization/quantize.py``), plus the three the source reads without
documenting (``CalibPercentile``, ``BlockSize``, ``DefaultTensorType``; marked ``documented=False``), with the
type the quantizer expects. ``validate_extra_options`` checks a spec's mapping against it and converts the
YAML spellings the quantizer cannot take as they are (quantization type names, ONNX type names).

Options this table does not cover are the calibrator's own constructor arguments (``num_bins``,
``num_quantized_bins``, ``scenario``): ``quantize_static`` does not pass them through ``extra_options``.
"""
from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

BOOL, INT, FLOAT, STR_LIST, AXIS_MAP, OVERRIDES, ONNX_TYPE = (
    "bool", "int", "float", "list of op types", "mapping of op type to axis", "tensor overrides", "ONNX type")


@dataclass(frozen=True)
class OrtOption:
    """One ``extra_options`` key: expected type, allowed values/range, and what it does (one line)."""

    name: str
    type: str
    doc: str
    default: Any = None
    nullable: bool = False  # None is a valid value (means "off")
    minimum: float | None = None
    maximum: float | None = None
    documented: bool = True  # False: read by onnxruntime's source but absent from its docstrings
    needs: str = ""  # a Python package the option imports when enabled
    caveat: str = ""  # behaviour of this onnxruntime version that differs from the docstring


OPTIONS: tuple[OrtOption, ...] = (
    OrtOption("extra.Sigmoid.nnapi", BOOL, "quantize Sigmoid the way NNAPI requires (fixed output scale)", False),
    OrtOption("ActivationSymmetric", BOOL, "symmetric activation ranges (zero point at the middle)", False),
    OrtOption("ActivationRestrictedAsymmetric", BOOL,
              "uint8 activations only: zero point snapped to qmin (rmin >= 0) or the range midpoint", False),
    OrtOption("WeightSymmetric", BOOL, "symmetric weight ranges (default: True for signed weight types)", True),
    OrtOption("EnableSubgraph", BOOL, "also quantize If/Loop/Scan subgraphs (dynamic mode only, per ORT)", False),
    OrtOption("ForceQuantizeNoInputCheck", BOOL,
              "quantize latent ops (MaxPool, Transpose, ...) even when their input is not quantized", False),
    OrtOption("MatMulConstBOnly", BOOL, "quantize only MatMul nodes whose B input is a constant", False),
    OrtOption("AddQDQPairToWeight", BOOL,
              "keep weights float with a QuantizeLinear/DequantizeLinear pair instead of int8 + DQ", False),
    OrtOption("OpTypesToExcludeOutputQuantization", STR_LIST, "op types whose outputs are not quantized", ()),
    OrtOption("DedicatedQDQPair", BOOL, "one Q/DQ pair per consumer instead of one shared pair", False),
    OrtOption("QDQOpTypePerChannelSupportToAxis", AXIS_MAP,
              "per-channel axis by op type, e.g. {MatMul: 1} (with per_channel)", {}),
    OrtOption("CalibTensorRangeSymmetric", BOOL, "make every calibrated range symmetric around 0", False),
    OrtOption("CalibStridedMinMax", INT, "MinMax over chunks of this many samples, merged (saves memory)",
              None, nullable=True, minimum=1),
    OrtOption("CalibMovingAverage", BOOL, "MinMax: moving average of per-batch min/max instead of extremes", False),
    OrtOption("CalibMovingAverageConstant", FLOAT, "smoothing constant of CalibMovingAverage", 0.01,
              minimum=0.0, maximum=1.0),
    OrtOption("CalibMaxIntermediateOutputs", INT,
              "merge ranges every this many collected outputs (same result, less memory)", None,
              nullable=True, minimum=1,
              caveat="onnxruntime 1.32 discards each full chunk instead of merging it: the ranges come from "
                     "the last N % value samples only, and N % value == 0 fails with 'No data is collected'"),
    OrtOption("SmoothQuant", BOOL, "apply SmoothQuant before quantizing (needs neural-compressor)", False,
              needs="neural_compressor"),
    OrtOption("SmoothQuantAlpha", FLOAT, "SmoothQuant migration strength alpha", 0.5, minimum=0.0, maximum=1.0),
    OrtOption("SmoothQuantFolding", BOOL, "fold SmoothQuant's Mul into the previous op where possible", True),
    OrtOption("UseQDQContribOps", BOOL, "emit com.microsoft QuantizeLinear/DequantizeLinear (16/4-bit < opset 21)",
              False),
    OrtOption("MinimumRealRange", FLOAT, "enforce rmax - rmin >= this when computing scales", None,
              nullable=True, minimum=0.0),
    OrtOption("TensorQuantOverrides", OVERRIDES,
              "per-tensor overrides: {tensor: [{quant_type, scale, zero_point, symmetric, reduce_range, ...}]}",
              {}),
    OrtOption("QDQKeepRemovableActivations", BOOL, "keep Relu/Clip that the Q after them would make redundant",
              False),
    OrtOption("QDQDisableWeightAdjustForInt32Bias", BOOL,
              "do not enlarge a weight scale when the int32 bias scale would be too small", False),
    OrtOption("QuantizeBias", BOOL, "QDQ only: quantize biases to int32 (False: keep them float)", True),
    OrtOption("CalibPercentile", FLOAT, "percentile of the Percentile calibration method", 99.999,
              minimum=0.0, maximum=100.0, documented=False),
    OrtOption("BlockSize", INT, "blocked weight quantization block size (opset 21; 0: off)", 0, minimum=0,
              documented=False),
    OrtOption("DefaultTensorType", ONNX_TYPE, "element type assumed where shape inference gives none", None,
              documented=False),
)
BY_NAME: dict[str, OrtOption] = {o.name: o for o in OPTIONS}
OVERRIDE_KEYS = {"quant_type": "quant type", "scale": "float", "zero_point": "int", "symmetric": "bool",
                 "reduce_range": "bool", "rmax": "float", "rmin": "float", "axis": "int", "convert": "mapping"}
QUANT_TYPES = {"int8": "QInt8", "uint8": "QUInt8", "int16": "QInt16", "uint16": "QUInt16", "int4": "QInt4",
               "uint4": "QUInt4", "float8e4m3fn": "QFLOAT8E4M3FN"}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and v == v


def _quant_type(value: Any, where: str, fail: Callable[[str], Exception]):
    """``QInt8`` / ``int8`` / a QuantType -> onnxruntime's QuantType (what the quantizer compares against)."""
    from onnxruntime.quantization import QuantType

    if isinstance(value, QuantType):
        return value
    name = QUANT_TYPES.get(str(value).lower(), str(value))
    if name not in QuantType.__members__:
        choices = sorted(set(QUANT_TYPES) | set(QuantType.__members__))
        hint = difflib.get_close_matches(str(value), choices, n=1)
        raise fail(f"{where}: {value!r} is not a quantization type ({', '.join(choices)})"
                   + (f"; did you mean {hint[0]!r}?" if hint else ""))
    return QuantType[name]


def _onnx_type(value: Any, where: str, fail: Callable[[str], Exception]) -> int:
    from onnx import TensorProto

    if _is_int(value) and value in TensorProto.DataType.values():
        return value
    if isinstance(value, str) and value.upper() in TensorProto.DataType.keys():
        return TensorProto.DataType.Value(value.upper())
    raise fail(f"{where}: {value!r} is not an ONNX element type (e.g. FLOAT or 1)")


def _overrides(value: Any, where: str, fail: Callable[[str], Exception]) -> dict:
    if not isinstance(value, Mapping):
        raise fail(f"{where}: expected a mapping of tensor name to a list of override mappings")
    out = {}
    for tensor, entries in value.items():
        here = f"{where}.{tensor}"
        entries = [entries] if isinstance(entries, Mapping) else entries
        if not isinstance(entries, list) or not all(isinstance(e, Mapping) for e in entries):
            raise fail(f"{here}: expected a list of mappings (one per tensor, or one per channel)")
        fixed = []
        for i, e in enumerate(entries):
            item = {}
            for k, v in e.items():
                if k not in OVERRIDE_KEYS:
                    hint = difflib.get_close_matches(str(k), list(OVERRIDE_KEYS), n=1)
                    raise fail(f"{here}[{i}].{k}: unknown override key"
                               + (f" (did you mean {hint[0]!r}?)" if hint else "")
                               + f"; allowed: {', '.join(OVERRIDE_KEYS)}")
                kind = OVERRIDE_KEYS[k]
                ok = {"quant type": True, "float": _is_number(v), "int": _is_int(v), "bool": isinstance(v, bool),
                      "mapping": isinstance(v, Mapping)}[kind]
                if not ok:
                    raise fail(f"{here}[{i}].{k}: expected {kind}, got {type(v).__name__} {v!r}")
                if kind == "quant type":
                    v = _quant_type(v, f"{here}[{i}].{k}", fail)
                elif k in ("scale", "rmin", "rmax"):  # the quantizer calls numpy methods on these
                    v = np.asarray(v, np.float32)
                elif k == "zero_point":
                    v = np.asarray(v, np.int32)  # cast to the tensor's quantization type by the quantizer
                item[k] = v
            if ("scale" in item) != ("zero_point" in item):
                raise fail(f"{here}[{i}]: 'scale' and 'zero_point' go together")
            fixed.append(item)
        out[str(tensor)] = fixed
    return out


def validate_extra_options(options: Mapping[str, Any] | None, fail: Callable[[str], Exception]) -> dict:
    """Check ``quantization.extra_options`` and return it as ``quantize_static`` takes it.

    ``fail(message)`` builds the exception to raise (the spec parser passes one that names the key path);
    every message starts with the option name. Unknown names get a "did you mean" from the table.
    """
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise fail(f"expected a mapping of ONNX Runtime extra_options, got {type(options).__name__}")
    out: dict[str, Any] = {}
    for name, value in options.items():
        opt = BY_NAME.get(name) if isinstance(name, str) else None
        if opt is None:
            hint = difflib.get_close_matches(str(name), list(BY_NAME), n=1, cutoff=0.6)
            raise fail(f"{name}: not an ONNX Runtime quantize_static extra_option"
                       + (f" (did you mean {hint[0]!r}?)" if hint else "")
                       + "; see docs/CONTRACT.md for the list")
        out[name] = _check(opt, value, fail)
    return out


def _check(opt: OrtOption, value: Any, fail: Callable[[str], Exception]) -> Any:
    if value is None:
        if opt.nullable:
            return None
        raise fail(f"{opt.name}: expected {opt.type}, got nothing (null)")
    got = f"got {type(value).__name__} {value!r}"
    if opt.type == BOOL:
        if not isinstance(value, bool):
            raise fail(f"{opt.name}: expected true or false, {got}")
        return value
    if opt.type in (INT, FLOAT):
        ok = _is_int(value) if opt.type == INT else _is_number(value)
        if not ok:
            raise fail(f"{opt.name}: expected {'a whole number' if opt.type == INT else 'a number'}, {got}")
        if (opt.minimum is not None and value < opt.minimum) or (opt.maximum is not None and value > opt.maximum):
            raise fail(f"{opt.name}: {value} is out of range [{opt.minimum}, {opt.maximum}]")
        return float(value) if opt.type == FLOAT else value
    if opt.type == STR_LIST:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
            raise fail(f"{opt.name}: expected a list of op type names, {got}")
        return list(value)
    if opt.type == AXIS_MAP:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) and _is_int(v) for k, v in value.items()):
            raise fail(f"{opt.name}: expected a mapping of op type to axis (whole number), {got}")
        return dict(value)
    if opt.type == OVERRIDES:
        return _overrides(value, opt.name, fail)
    return _onnx_type(value, opt.name, fail)
