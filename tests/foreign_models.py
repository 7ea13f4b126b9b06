"""QDQ models laid out the way other quantization tools lay them out, built with onnx.helper + numpy.

None of these tools is installed (NNCF, AMD Quark, NVIDIA ModelOpt / pytorch-quantization, AIMET pull in torch
or CUDA stacks far too heavy for a test extra), so each builder reproduces the *layout* of the tool's QDQ ONNX
export from the same small float network: node and tensor naming, where Q/DQ pairs sit, which weights stay
float behind a Q/DQ pair and which are stored as integers behind a lone DequantizeLinear, symmetric or
asymmetric parameters, per-channel axes, folded BatchNormalization, removed Relu. Scales come from our own
min/max calibration of the float model on calibration data; the numbers differ from each tool's own
calibration, the layout is what the matcher has to survive. What each builder emulates is in its docstring.

The float network (``float_model``)::

    x[1,3,8,8] -conv1-> c1 -bn1-> n1 -relu1-> r1 -conv2-> c2 -relu2-> r2 -add(r2, r1)-> a
      -pool(GlobalAveragePool)-> p -flatten-> f -fc(Gemm, transB)-> logits -softmax-> prob
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

DTYPES = {"int8": TensorProto.INT8, "uint8": TensorProto.UINT8, "int16": TensorProto.INT16,
          "uint16": TensorProto.UINT16, "int4": TensorProto.INT4, "uint4": TensorProto.UINT4,
          "int32": TensorProto.INT32}
QRANGE = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767), "uint16": (0, 65535),
          "int4": (-8, 7), "uint4": (0, 15), "int32": (-2**31, 2**31 - 1)}
FLOAT_ACTIVATIONS = ("x", "c1", "n1", "r1", "c2", "r2", "a", "p", "f", "logits", "prob")
BN_EPS = 1e-5


@dataclass(frozen=True)
class FloatNet:
    """The float model, its weights (by float name), calibration/evaluation samples and tensor ranges."""

    model: onnx.ModelProto
    weights: dict[str, np.ndarray]
    calib: list[dict[str, np.ndarray]]
    eval: list[dict[str, np.ndarray]]
    ranges: dict[str, tuple[float, float]]  # float tensor -> (min, max) over the calibration samples


def run_tensors(model: onnx.ModelProto, names: list[str], feeds: list[dict]) -> list[dict[str, np.ndarray]]:
    """Run ``model`` in ONNX Runtime, optimizations off, returning the named tensors for each feed."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for n in names:
        if n not in have:
            m.graph.output.append(helper.make_tensor_value_info(n, TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return [dict(zip(names, sess.run(names, feed))) for feed in feeds]


def float_net(seed: int = 0, n_calib: int = 16, n_eval: int = 4) -> FloatNet:
    rng = np.random.default_rng(seed)
    w = {
        "w1": rng.normal(0, 0.4, (4, 3, 3, 3)), "b1": rng.normal(0, 0.1, 4),
        "bn_g": rng.uniform(0.5, 1.5, 4), "bn_b": rng.normal(0, 0.2, 4),
        "bn_m": rng.normal(0, 0.3, 4), "bn_v": rng.uniform(0.5, 2.0, 4),
        "w2": rng.normal(0, 0.3, (4, 4, 3, 3)), "b2": rng.normal(0, 0.1, 4),
        "wfc": rng.normal(0, 0.5, (6, 4)), "bfc": rng.normal(0, 0.1, 6),
    }
    w = {k: v.astype(np.float32) for k, v in w.items()}
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], "conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "bn_g", "bn_b", "bn_m", "bn_v"], ["n1"], "bn1",
                         epsilon=BN_EPS),
        helper.make_node("Relu", ["n1"], ["r1"], "relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], "conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], "relu2"),
        helper.make_node("Add", ["r2", "r1"], ["a"], "add"),
        helper.make_node("GlobalAveragePool", ["a"], ["p"], "pool"),
        helper.make_node("Flatten", ["p"], ["f"], "flatten"),
        helper.make_node("Gemm", ["f", "wfc", "bfc"], ["logits"], "fc", transB=1),
        helper.make_node("Softmax", ["logits"], ["prob"], "softmax", axis=1),
    ]
    graph = helper.make_graph(
        nodes, "float_net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, 6])],
        [numpy_helper.from_array(v, k) for k, v in w.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    xs = [{"x": rng.normal(0, 1, (1, 3, 8, 8)).astype(np.float32)} for _ in range(n_calib + n_eval)]
    outs = run_tensors(model, list(FLOAT_ACTIVATIONS), xs[:n_calib])
    ranges = {t: (float(min(o[t].min() for o in outs)), float(max(o[t].max() for o in outs)))
              for t in FLOAT_ACTIVATIONS}
    return FloatNet(model, w, xs[:n_calib], xs[n_calib:], ranges)


def folded_conv1(net: FloatNet) -> tuple[np.ndarray, np.ndarray]:
    """conv1 with bn1 folded in, as torch.onnx.export (eval mode) and Quark's optimizer do."""
    w = net.weights
    k = w["bn_g"] / np.sqrt(w["bn_v"] + BN_EPS)
    return ((w["w1"] * k[:, None, None, None]).astype(np.float32),
            ((w["b1"] - w["bn_m"]) * k + w["bn_b"]).astype(np.float32))


# ---------------------------------------------------------------------------------------- parameters


def asymmetric(lo: float, hi: float, dtype: str) -> tuple[float, int]:
    """ONNX Runtime / Quark style: the range widened to include 0, zero point rounded into the type."""
    qmin, qmax = QRANGE[dtype]
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / (qmax - qmin) or 1.0
    return scale, int(np.clip(round(qmin - lo / scale), qmin, qmax))


def symmetric(amax: np.ndarray | float, dtype: str, narrow: bool = False) -> np.ndarray:
    """Zero point 0, scale = amax / qmax (qmax 127 for int8; ``narrow`` also gives int4 7, int16 32767)."""
    qmax = QRANGE[dtype][1]
    a = np.asarray(amax, np.float64)
    return np.where(a > 0, a / qmax, 1.0)


def quantize(x: np.ndarray, scale, zp, dtype: str, axis: int | None = None) -> np.ndarray:
    s, z = np.asarray(scale, np.float64), np.asarray(zp, np.float64)
    if axis is not None:
        shape = [1] * x.ndim
        shape[axis] = -1
        s, z = s.reshape(shape), z.reshape(shape)
    qmin, qmax = QRANGE[dtype]
    return np.clip(np.rint(x / s) + z, qmin, qmax).astype(np.int64)


class Emitter:
    """Collects nodes and initializers of a QDQ graph in topological order."""

    def __init__(self, domain: str = "") -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.domain = domain

    def init(self, name: str, arr: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def ints(self, name: str, values: np.ndarray, dtype: str, dims: list[int]) -> str:
        self.inits.append(helper.make_tensor(name, DTYPES[dtype], dims, [int(v) for v in np.ravel(values)]))
        return name

    def const_node(self, name: str, tensor: onnx.TensorProto) -> str:
        """A Constant node, the way torch.onnx.export writes scales and zero points."""
        self.nodes.append(helper.make_node("Constant", [], [name], name.replace("_output_0", ""), value=tensor))
        return name

    def node(self, op: str, ins: list[str], outs: list[str], name: str, domain: str = "", **attrs) -> str:
        self.nodes.append(helper.make_node(op, ins, outs, name, domain=domain or None, **attrs))
        return outs[0]

    def q(self, src: str, scale: str, zp: str, out: str, name: str, axis: int | None = None) -> str:
        kw = {"axis": axis} if axis is not None else {}
        return self.node("QuantizeLinear", [src, scale, zp], [out], name, domain=self.domain, **kw)

    def dq(self, src: str, scale: str, zp: str, out: str, name: str, axis: int | None = None) -> str:
        kw = {"axis": axis} if axis is not None else {}
        return self.node("DequantizeLinear", [src, scale, zp], [out], name, domain=self.domain, **kw)

    def model(self, name: str, inputs, outputs, opset: int, extra_domains: tuple[str, ...] = ()) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.inits)
        ops = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in extra_domains]
        if self.domain and self.domain not in extra_domains:
            ops.append(helper.make_opsetid(self.domain, 1))
        m = helper.make_model(graph, opset_imports=ops)
        m.ir_version = 10 if opset >= 21 else 8
        return m


def _io(name: str, shape: list[int]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _amax_channels(w: np.ndarray, axis: int) -> np.ndarray:
    return np.abs(np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)).max(axis=1)


# ---------------------------------------------------------------------------------------- NNCF


def nncf_style(net: FloatNet) -> onnx.ModelProto:
    """NNCF post-training quantization of an ONNX model re-exported from torch (``nncf.quantize`` ONNX backend).

    Emulated from NNCF's ``ONNXModelTransformer``: a pair per quantized edge named ``QuantizeLinear_<edge>_1`` /
    ``DequantizeLinear_<edge>_1``, outputs ``q_output_<edge>_1`` / ``dq_output_<edge>_1``, initializers
    ``scale_<edge>_1`` / ``zero_point_<edge>_1``; weights stay float with a Q/DQ pair on them (per-channel, axis
    0, symmetric int8); activations quantized at the inputs of Conv / Add / Gemm, symmetric, unsigned (uint8,
    zero point 0) after Relu. The model itself carries torch.onnx.export names (``/conv1/Conv``,
    ``/conv1/Conv_output_0``, ``conv1.weight``) and BatchNormalization folded into conv1 (eval-mode export).
    """
    e = Emitter()
    w1, b1 = folded_conv1(net)
    wt = net.weights
    e.init("conv1.weight", w1), e.init("conv1.bias", b1)
    e.init("conv2.weight", wt["w2"]), e.init("conv2.bias", wt["b2"])
    e.init("fc.weight", wt["wfc"]), e.init("fc.bias", wt["bfc"])

    def pair(edge: str, scale, zp, dtype: str, axis: int | None = None) -> str:
        tag = f"{edge}_1"
        scale = np.asarray(scale, np.float32)
        e.init(f"scale_{tag}", scale)
        e.ints(f"zero_point_{tag}", np.broadcast_to(zp, scale.shape), dtype, list(scale.shape))
        q = e.q(edge, f"scale_{tag}", f"zero_point_{tag}", f"q_output_{tag}", f"QuantizeLinear_{tag}", axis)
        return e.dq(q, f"scale_{tag}", f"zero_point_{tag}", f"dq_output_{tag}", f"DequantizeLinear_{tag}", axis)

    r = net.ranges
    xq = pair("x", symmetric(max(abs(r["x"][0]), r["x"][1]), "int8"), 0, "int8")
    w1q = pair("conv1.weight", symmetric(_amax_channels(w1, 0), "int8"), 0, "int8", 0)
    c1 = e.node("Conv", [xq, w1q, "conv1.bias"], ["/conv1/Conv_output_0"], "/conv1/Conv", pads=[1, 1, 1, 1])
    r1 = e.node("Relu", [c1], ["/relu1/Relu_output_0"], "/relu1/Relu")
    r1q = pair(r1, r["r1"][1] / 255, 0, "uint8")
    w2q = pair("conv2.weight", symmetric(_amax_channels(wt["w2"], 0), "int8"), 0, "int8", 0)
    c2 = e.node("Conv", [r1q, w2q, "conv2.bias"], ["/conv2/Conv_output_0"], "/conv2/Conv", pads=[1, 1, 1, 1])
    r2 = e.node("Relu", [c2], ["/relu2/Relu_output_0"], "/relu2/Relu")
    r2q = pair(r2, r["r2"][1] / 255, 0, "uint8")
    a = e.node("Add", [r2q, r1q], ["/Add_output_0"], "/Add")
    p = e.node("GlobalAveragePool", [a], ["/pool/GlobalAveragePool_output_0"], "/pool/GlobalAveragePool")
    f = e.node("Flatten", [p], ["/Flatten_output_0"], "/Flatten")
    fq = pair(f, r["f"][1] / 255, 0, "uint8")
    wfq = pair("fc.weight", symmetric(_amax_channels(wt["wfc"], 0), "int8"), 0, "int8", 0)
    lg = e.node("Gemm", [fq, wfq, "fc.bias"], ["/fc/Gemm_output_0"], "/fc/Gemm", transB=1)
    e.node("Softmax", [lg], ["prob"], "/Softmax", axis=1)
    return e.model("nncf", [_io("x", [1, 3, 8, 8])], [_io("prob", [1, 6])], 17)


# ---------------------------------------------------------------------------------------- TensorRT


def tensorrt_style(net: FloatNet) -> onnx.ModelProto:
    """NVIDIA pytorch-quantization / ModelOpt (torch) QDQ export for TensorRT explicit quantization.

    Emulated layout: Q/DQ only on the inputs of Conv and Gemm (activation ``input_quantizer`` and
    ``weight_quantizer`` of each layer, nothing on outputs), symmetric int8 with zero point 0 everywhere
    (TensorRT requires it), activation scale amax/127, weights per-channel along axis 0 kept float behind a
    Q/DQ pair, scales and zero points as ``Constant`` nodes (``/conv1/input_quantizer/Constant_output_0``), node
    names ``/conv1/input_quantizer/QuantizeLinear``. Exported without constant folding, so BatchNormalization
    and Relu stay separate nodes; the input is renamed ``input`` and the output ``output`` (position, not name,
    pairs them).
    """
    e = Emitter()
    wt = net.weights
    for k, v in (("conv1.weight", "w1"), ("conv1.bias", "b1"), ("bn1.weight", "bn_g"), ("bn1.bias", "bn_b"),
                 ("bn1.running_mean", "bn_m"), ("bn1.running_var", "bn_v"), ("conv2.weight", "w2"),
                 ("conv2.bias", "b2"), ("fc.weight", "wfc"), ("fc.bias", "bfc")):
        e.init(k, wt[v])

    def quantizer(layer: str, role: str, src: str, scale, axis: int | None = None) -> str:
        base = f"/{layer}/{role}_quantizer"
        scale = np.asarray(scale, np.float32)
        s = e.const_node(f"{base}/Constant_output_0", numpy_helper.from_array(scale, "s"))
        z = e.const_node(f"{base}/Constant_1_output_0",
                         helper.make_tensor("z", TensorProto.INT8, list(scale.shape), [0] * scale.size))
        q = e.q(src, s, z, f"{base}/QuantizeLinear_output_0", f"{base}/QuantizeLinear", axis)
        return e.dq(q, s, z, f"{base}/DequantizeLinear_output_0", f"{base}/DequantizeLinear", axis)

    r = net.ranges
    amax = {t: max(abs(r[t][0]), abs(r[t][1])) for t in r}
    xq = quantizer("conv1", "input", "input", symmetric(amax["x"], "int8"))
    w1q = quantizer("conv1", "weight", "conv1.weight", symmetric(_amax_channels(wt["w1"], 0), "int8"), 0)
    c1 = e.node("Conv", [xq, w1q, "conv1.bias"], ["/conv1/Conv_output_0"], "/conv1/Conv", pads=[1, 1, 1, 1])
    n1 = e.node("BatchNormalization", [c1, "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var"],
                ["/bn1/BatchNormalization_output_0"], "/bn1/BatchNormalization", epsilon=BN_EPS)
    r1 = e.node("Relu", [n1], ["/relu1/Relu_output_0"], "/relu1/Relu")
    r1q = quantizer("conv2", "input", r1, symmetric(amax["r1"], "int8"))
    w2q = quantizer("conv2", "weight", "conv2.weight", symmetric(_amax_channels(wt["w2"], 0), "int8"), 0)
    c2 = e.node("Conv", [r1q, w2q, "conv2.bias"], ["/conv2/Conv_output_0"], "/conv2/Conv", pads=[1, 1, 1, 1])
    r2 = e.node("Relu", [c2], ["/relu2/Relu_output_0"], "/relu2/Relu")
    a = e.node("Add", [r2, r1], ["/Add_output_0"], "/Add")
    p = e.node("GlobalAveragePool", [a], ["/pool/GlobalAveragePool_output_0"], "/pool/GlobalAveragePool")
    f = e.node("Flatten", [p], ["/Flatten_output_0"], "/Flatten")
    fq = quantizer("fc", "input", f, symmetric(amax["f"], "int8"))
    wfq = quantizer("fc", "weight", "fc.weight", symmetric(_amax_channels(wt["wfc"], 0), "int8"), 0)
    lg = e.node("Gemm", [fq, wfq, "fc.bias"], ["/fc/Gemm_output_0"], "/fc/Gemm", transB=1)
    e.node("Softmax", [lg], ["output"], "/Softmax", axis=1)
    return e.model("trt", [_io("input", [1, 3, 8, 8])], [_io("output", [1, 6])], 17)


# ---------------------------------------------------------------------------------------- Quark / ORT


def quark_style(net: FloatNet, activations: str = "uint8", weights: str = "int8", domain: str = "",
                opset: int = 17) -> onnx.ModelProto:
    """AMD Quark for ONNX (``quark.onnx.ModelQuantizer``, QDQ format), whose layout is ONNX Runtime's quantizer's.

    Emulated: BatchNormalization folded into conv1 and the Relus removed (Quark's graph optimization before
    quantization, and ORT's QDQ quantizer removing "removable" activations when the Q after them already
    clips: asymmetric activations, zero point at qmin); tensors ``<t>_QuantizeLinear_Output`` /
    ``<t>_DequantizeLinear_Output``; weights stored quantized (``<w>_quantized`` + a lone DequantizeLinear,
    per-channel axis 0), biases int32 with scale = input scale * weight scale; Q/DQ on the graph input and on
    the output, whose DequantizeLinear writes the model's output name ``prob``. Node names are the float
    model's (Quark keeps them), and the folded conv writes ``n1``, the float BatchNormalization's output name,
    which a name-based matcher would wrongly pair with ``n1`` (the value here is clipped by the removed Relu).
    Variants: ``activations`` uint8 / uint16 / int8, ``weights`` int8 / int16 / int4 (opset 21, ``int4``
    initializers), ``domain="com.microsoft"`` (Quark's and ORT's ``UseQDQContribOps`` 16-bit path before
    opset 21).
    """
    e = Emitter(domain)
    wt = net.weights
    r = net.ranges
    act_params: dict[str, tuple[float, int]] = {}

    def act(src: str, float_name: str, dst: str | None = None) -> str:
        scale, zp = asymmetric(*r[float_name], activations)
        act_params[src] = (scale, zp)
        e.init(f"{src}_scale", np.float32(scale))
        e.ints(f"{src}_zero_point", [zp], activations, [])
        q = e.q(src, f"{src}_scale", f"{src}_zero_point", f"{src}_QuantizeLinear_Output", f"{src}_QuantizeLinear")
        return e.dq(q, f"{src}_scale", f"{src}_zero_point", dst or f"{src}_DequantizeLinear_Output",
                    f"{src}_DequantizeLinear")

    def weight(name: str, w: np.ndarray) -> tuple[str, np.ndarray]:
        scale = symmetric(_amax_channels(w, 0), weights).astype(np.float32)
        q = quantize(w, scale, 0, weights, 0)
        e.ints(f"{name}_quantized", q, weights, list(w.shape))
        e.init(f"{name}_scale", scale)
        e.ints(f"{name}_zero_point", np.zeros(len(scale)), weights, [len(scale)])
        out = e.dq(f"{name}_quantized", f"{name}_scale", f"{name}_zero_point", f"{name}_DequantizeLinear_Output",
                   f"{name}_DequantizeLinear", 0)
        return out, scale

    def bias(name: str, b: np.ndarray, in_scale: float, w_scale: np.ndarray) -> str:
        scale = (in_scale * w_scale.astype(np.float64)).astype(np.float32)
        e.ints(f"{name}_quantized", quantize(b, scale, 0, "int32", 0), "int32", [len(b)])
        e.init(f"{name}_scale", scale)
        e.ints(f"{name}_zero_point", np.zeros(len(b)), "int32", [len(b)])
        return e.dq(f"{name}_quantized", f"{name}_scale", f"{name}_zero_point", f"{name}_DequantizeLinear_Output",
                    f"{name}_DequantizeLinear", 0)

    w1, b1 = folded_conv1(net)
    xq = act("x", "x")
    w1q, s1 = weight("w1", w1)
    b1q = bias("b1", b1, act_params["x"][0], s1)
    c1 = e.node("Conv", [xq, w1q, b1q], ["n1"], "conv1", pads=[1, 1, 1, 1])
    r1q = act(c1, "r1")
    w2q, s2 = weight("w2", wt["w2"])
    b2q = bias("b2", wt["b2"], act_params[c1][0], s2)
    c2 = e.node("Conv", [r1q, w2q, b2q], ["c2"], "conv2", pads=[1, 1, 1, 1])
    r2q = act(c2, "r2")
    a = act(e.node("Add", [r2q, r1q], ["a"], "add"), "a")
    p = act(e.node("GlobalAveragePool", [a], ["p"], "pool"), "p")
    f = act(e.node("Flatten", [p], ["f"], "flatten"), "f")
    wfq, sf = weight("wfc", wt["wfc"])
    bfq = bias("bfc", wt["bfc"], act_params["f"][0], sf)
    lg = act(e.node("Gemm", [f, wfq, bfq], ["logits"], "fc", transB=1), "logits")
    sm = e.node("Softmax", [lg], ["prob_QuantizeLinear_Input"], "softmax", axis=1)
    act(sm, "prob", dst="prob")
    return e.model("quark", [_io("x", [1, 3, 8, 8])], [_io("prob", [1, 6])], opset)


# ---------------------------------------------------------------------------------------- vendor / AIMET


def vendor_style(net: FloatNet, extra_op: bool = False) -> onnx.ModelProto:
    """A vendor NPU toolchain's QDQ export with AIMET-style naming (``<t>_q`` / ``<t>_dq``, I/O names kept).

    Emulated from AIMET's ONNX QDQ export (output quantizers on every op's output plus the model input,
    activations uint8 asymmetric, weights int8 symmetric per-channel kept float behind Q/DQ) combined with what
    NPU toolchains add: conv1 + bn1 + relu1 as one ``com.microsoft`` ``FusedConv`` (activation Relu), relu2
    computed in NHWC between a Transpose pair (its Q/DQ sits on the transposed tensor), the residual Add run in
    float16 between Casts. ``extra_op`` inserts a vendor rescale (``Mul`` by 1) after the pool that the float
    model does not have: structure cannot place it, the numeric check on a sample can.
    """
    e = Emitter()
    wt = net.weights
    r = net.ranges
    w1, b1 = folded_conv1(net)

    def act(src: str, float_name: str, dst: str | None = None) -> str:
        scale, zp = asymmetric(*r[float_name], "uint8")
        e.init(f"{src}_scale", np.float32(scale))
        e.ints(f"{src}_offset", [zp], "uint8", [])
        q = e.q(src, f"{src}_scale", f"{src}_offset", f"{src}_q", f"{src}_qnode")
        return e.dq(q, f"{src}_scale", f"{src}_offset", dst or f"{src}_dq", f"{src}_dqnode")

    def weight(name: str, w: np.ndarray) -> str:
        e.init(name, w)
        scale = symmetric(_amax_channels(w, 0), "int8").astype(np.float32)
        e.init(f"{name}_scale", scale)
        e.ints(f"{name}_offset", np.zeros(len(scale)), "int8", [len(scale)])
        q = e.q(name, f"{name}_scale", f"{name}_offset", f"{name}_q", f"{name}_qnode", 0)
        return e.dq(q, f"{name}_scale", f"{name}_offset", f"{name}_dq", f"{name}_dqnode", 0)

    xq = act("x", "x")
    c1 = e.node("FusedConv", [xq, weight("layer1.w", w1), e.init("layer1.b", b1)], ["t1"], "layer1",
                domain="com.microsoft", pads=[1, 1, 1, 1], activation="Relu")
    r1q = act(c1, "r1")
    c2 = e.node("Conv", [r1q, weight("layer2.w", wt["w2"]), e.init("layer2.b", wt["b2"])], ["t2"], "layer2",
                pads=[1, 1, 1, 1])
    t2 = e.node("Transpose", [c2], ["t2_nhwc"], "to_nhwc", perm=[0, 2, 3, 1])
    r2 = e.node("Relu", [t2], ["t3_nhwc"], "act2")
    r2q = act(r2, "r2")
    r2c = e.node("Transpose", [r2q], ["t3"], "to_nchw", perm=[0, 3, 1, 2])
    h2 = e.node("Cast", [r2c], ["t3_fp16"], "cast_a", to=TensorProto.FLOAT16)
    h1 = e.node("Cast", [r1q], ["t1_fp16"], "cast_b", to=TensorProto.FLOAT16)
    s = e.node("Add", [h2, h1], ["t4_fp16"], "residual")
    aq = act(e.node("Cast", [s], ["t4"], "cast_c", to=TensorProto.FLOAT), "a")
    p = e.node("GlobalAveragePool", [aq], ["t5"], "gap")
    if extra_op:
        p = e.node("Mul", [p, e.init("npu_rescale", np.ones((1, 4, 1, 1), np.float32))], ["t5s"], "npu_rescale")
    pq = act(p, "p")
    f = e.node("Flatten", [pq], ["t6"], "flat")
    fq = act(f, "f")
    lg = e.node("Gemm", [fq, weight("head.w", wt["wfc"]), e.init("head.b", wt["bfc"])], ["t7"], "head",
                transB=1)
    lq = act(lg, "logits")
    act(e.node("Softmax", [lq], ["t8"], "prob_softmax", axis=1), "prob", dst="prob")
    return e.model("vendor", [_io("x", [1, 3, 8, 8])], [_io("prob", [1, 6])], 17,
                   extra_domains=("com.microsoft",))


# ---------------------------------------------------------------------------------------- reference metrics


def np_cos(f: np.ndarray, q: np.ndarray) -> float:
    """Contract section 4 cos, written plainly in float64 (the independent reference)."""
    f, q = f.astype(np.float64).ravel(), q.astype(np.float64).ravel()
    nf, nq = np.sqrt(np.sum(f * f)), np.sqrt(np.sum(q * q))
    if nf == 0 and nq == 0:
        return 1.0
    if nf == 0 or nq == 0:
        return 0.0
    return float(np.sum(f * q) / (nf * nq))


def np_rel_rmse(f: np.ndarray, q: np.ndarray) -> float:
    """Contract section 4 relative rmse: sqrt(mean((q-f)^2)) / sqrt(mean(f^2))."""
    f, q = f.astype(np.float64).ravel(), q.astype(np.float64).ravel()
    den = np.sqrt(np.mean(f * f))
    num = np.sqrt(np.mean((q - f) ** 2))
    if num == 0:
        return 0.0
    return float(num / den) if den > 0 else float("inf")


def reference_metrics(net: FloatNet, qdq: onnx.ModelProto, pairs, samples: list[dict]) -> dict[str, tuple]:
    """Mean cos and relative rmse over ``samples`` of each activation pair (QDQ tensor -> (cos, rmse)).

    Both models run in ONNX Runtime with optimizations off; a pair with ``perm`` compares the float tensor
    transposed the same way. This is what a ``quantized:`` integration must reproduce to 1e-6.
    """
    acts = [p for p in pairs if p.kind == "activation"]
    qin = qdq.graph.input[0].name
    fl = run_tensors(net.model, sorted({p.float_tensor for p in acts}), samples)
    qd = run_tensors(qdq, sorted({p.qdq_tensor for p in acts}), [{qin: s["x"]} for s in samples])
    out = {}
    for p in acts:
        cs, rs = [], []
        for fs, qs in zip(fl, qd):
            f = fs[p.float_tensor] if p.perm is None else np.transpose(fs[p.float_tensor], p.perm)
            cs.append(np_cos(f, qs[p.qdq_tensor]))
            rs.append(np_rel_rmse(f, qs[p.qdq_tensor]))
        out[p.qdq_tensor] = (float(np.mean(cs)), float(np.mean(rs)))
    return out
