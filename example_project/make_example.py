"""Build the pytest-quantacc example project: models and data.

Trains a small CNN on sklearn's digits (8x8) in pure numpy, exports it to ONNX
and writes calibration / evaluation data.  Everything is written next to this
script, so it can be run from any working directory::

    python example_project/make_example.py

Outputs (deterministic: re-running gives byte-identical files)::

    models/digits_cnn.onnx          healthy model
    models/digits_cnn_outlier.onnx  same function, but conv2 channel 5 scaled by
                                    400 (and fc1 compensated) so that per-tensor
                                    8-bit quantization of relu2's output breaks
    data/calib.npz                  {"input": float32 [64, 1, 8, 8]}
    data/eval.npz                   {"input": float32 [64, 1, 8, 8]}
    data/eval_labels.npy            int64 [64]
"""

from __future__ import annotations

import io
import os
import time
import zipfile
from pathlib import Path

# Single-threaded BLAS: the float summation order (hence the trained weights and
# the .onnx bytes) must not depend on the number of cores.  Also faster here.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

HERE = Path(__file__).resolve().parent
MODELS_DIR = HERE / "models"
DATA_DIR = HERE / "data"

SEED = 0
N_CALIB = 64
N_EVAL = 64
EPOCHS = 30
BATCH = 32
LR = 2e-3

OUTLIER_CHANNEL = 5
OUTLIER_FACTOR = 400.0

OPSET = 17
IR_VERSION = 8


# --------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------
def load_data():
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images.astype(np.float32) / np.float32(16.0)).reshape(-1, 1, 8, 8)
    y = digits.target.astype(np.int64)
    perm = np.random.default_rng(SEED).permutation(len(x))
    calib_idx = np.sort(perm[:N_CALIB])
    eval_idx = np.sort(perm[N_CALIB : N_CALIB + N_EVAL])
    train_idx = perm[N_CALIB + N_EVAL :]
    return (
        (x[train_idx], y[train_idx]),
        x[calib_idx],
        (x[eval_idx], y[eval_idx]),
    )


# --------------------------------------------------------------------------
# numpy CNN
# --------------------------------------------------------------------------
def im2col3x3(x):
    """x: (N, C, H, W) -> cols (N*H*W, C*9), 3x3 kernel, pad 1, stride 1.

    Column index is c*9 + kh*3 + kw, matching W.reshape(O, C*9)."""
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    patches = np.stack(
        [xp[:, :, kh : kh + h, kw : kw + w] for kh in range(3) for kw in range(3)],
        axis=2,
    )  # (N, C, 9, H, W)
    return patches.transpose(0, 3, 4, 1, 2).reshape(n * h * w, c * 9)


def col2im3x3(dcols, shape):
    n, c, h, w = shape
    d = dcols.reshape(n, h, w, c, 3, 3).transpose(0, 3, 4, 5, 1, 2)
    dxp = np.zeros((n, c, h + 2, w + 2), dtype=dcols.dtype)
    for kh in range(3):
        for kw in range(3):
            dxp[:, :, kh : kh + h, kw : kw + w] += d[:, :, kh, kw]
    return dxp[:, :, 1:-1, 1:-1]


def conv_forward(x, wt, b):
    n, _, h, w = x.shape
    o = wt.shape[0]
    cols = im2col3x3(x)
    out = cols @ wt.reshape(o, -1).T + b
    return out.reshape(n, h, w, o).transpose(0, 3, 1, 2), cols


def conv_backward(dout, cols, wt, x_shape, need_dx=True):
    o = wt.shape[0]
    g = dout.transpose(0, 2, 3, 1).reshape(-1, o)
    dw = (g.T @ cols).reshape(wt.shape)
    db = g.sum(axis=0)
    dx = col2im3x3(g @ wt.reshape(o, -1), x_shape) if need_dx else None
    return dx, dw, db


def maxpool_forward(x):
    n, c, h, w = x.shape
    win = (
        x.reshape(n, c, h // 2, 2, w // 2, 2)
        .transpose(0, 1, 2, 4, 3, 5)
        .reshape(n, c, h // 2, w // 2, 4)
    )
    idx = win.argmax(axis=-1)[..., None]
    return np.take_along_axis(win, idx, axis=-1)[..., 0], idx


def maxpool_backward(dout, idx, x_shape):
    n, c, h, w = x_shape
    dwin = np.zeros((n, c, h // 2, w // 2, 4), dtype=dout.dtype)
    np.put_along_axis(dwin, idx, dout[..., None], axis=-1)
    return (
        dwin.reshape(n, c, h // 2, w // 2, 2, 2)
        .transpose(0, 1, 2, 4, 3, 5)
        .reshape(n, c, h, w)
    )


def init_params(rng):
    def he(shape, fan_in):
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    return {
        "conv1.weight": he((8, 1, 3, 3), 9),
        "conv1.bias": np.zeros(8, np.float32),
        "conv2.weight": he((16, 8, 3, 3), 72),
        "conv2.bias": np.zeros(16, np.float32),
        "fc1.weight": he((32, 256), 256),
        "fc1.bias": np.zeros(32, np.float32),
        "fc2.weight": he((10, 32), 32),
        "fc2.bias": np.zeros(10, np.float32),
    }


def forward(p, x, cache=False):
    c1, cols1 = conv_forward(x, p["conv1.weight"], p["conv1.bias"])
    r1 = np.maximum(c1, 0)
    c2, cols2 = conv_forward(r1, p["conv2.weight"], p["conv2.bias"])
    r2 = np.maximum(c2, 0)
    pl, pidx = maxpool_forward(r2)
    fl = pl.reshape(len(x), -1)
    f1 = fl @ p["fc1.weight"].T + p["fc1.bias"]
    r3 = np.maximum(f1, 0)
    logits = r3 @ p["fc2.weight"].T + p["fc2.bias"]
    if not cache:
        return logits
    return logits, dict(x=x, c1=c1, cols1=cols1, r1=r1, c2=c2, cols2=cols2,
                        r2=r2, pidx=pidx, fl=fl, f1=f1, r3=r3)


def backward(p, cache, dlogits):
    g = {}
    g["fc2.weight"] = dlogits.T @ cache["r3"]
    g["fc2.bias"] = dlogits.sum(0)
    dr3 = dlogits @ p["fc2.weight"]
    df1 = dr3 * (cache["f1"] > 0)
    g["fc1.weight"] = df1.T @ cache["fl"]
    g["fc1.bias"] = df1.sum(0)
    dfl = df1 @ p["fc1.weight"]
    dr2 = maxpool_backward(dfl.reshape(-1, 16, 4, 4), cache["pidx"], cache["r2"].shape)
    dc2 = dr2 * (cache["c2"] > 0)
    dr1, g["conv2.weight"], g["conv2.bias"] = conv_backward(
        dc2, cache["cols2"], p["conv2.weight"], cache["r1"].shape)
    dc1 = dr1 * (cache["c1"] > 0)
    _, g["conv1.weight"], g["conv1.bias"] = conv_backward(
        dc1, cache["cols1"], p["conv1.weight"], cache["x"].shape, need_dx=False)
    return g


def softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def train(x, y, rng):
    p = init_params(rng)
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(v) for k, v in p.items()}
    b1, b2, eps = 0.9, 0.999, 1e-8
    step = 0
    n = len(x)
    for epoch in range(EPOCHS):
        lr = LR * 0.5 * (1 + np.cos(np.pi * epoch / EPOCHS))  # cosine schedule
        order = rng.permutation(n)
        tot_loss = 0.0
        for s in range(0, n, BATCH):
            idx = order[s : s + BATCH]
            xb, yb = x[idx], y[idx]
            logits, cache = forward(p, xb, cache=True)
            prob = softmax(logits)
            tot_loss += -np.log(prob[np.arange(len(yb)), yb] + 1e-12).sum()
            dlogits = prob
            dlogits[np.arange(len(yb)), yb] -= 1
            dlogits = (dlogits / len(yb)).astype(np.float32)
            grads = backward(p, cache, dlogits)
            step += 1
            for k in p:
                m[k] = b1 * m[k] + (1 - b1) * grads[k]
                v[k] = b2 * v[k] + (1 - b2) * grads[k] ** 2
                mh = m[k] / (1 - b1**step)
                vh = v[k] / (1 - b2**step)
                p[k] = (p[k] - lr * mh / (np.sqrt(vh) + eps)).astype(np.float32)
        if epoch % 5 == 4 or epoch == EPOCHS - 1:
            acc = (forward(p, x).argmax(1) == y).mean()
            print(f"  epoch {epoch + 1:2d}: loss {tot_loss / n:.4f}  train acc {acc:.4f}")
    return p


# --------------------------------------------------------------------------
# ONNX export
# --------------------------------------------------------------------------
def build_onnx(p, graph_name="digits_cnn"):
    nodes = [
        helper.make_node("Conv", ["input", "conv1.weight", "conv1.bias"], ["conv1_out"],
                         name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]),
        helper.make_node("Relu", ["conv1_out"], ["relu1_out"], name="relu1"),
        helper.make_node("Conv", ["relu1_out", "conv2.weight", "conv2.bias"], ["conv2_out"],
                         name="conv2", kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]),
        helper.make_node("Relu", ["conv2_out"], ["relu2_out"], name="relu2"),
        helper.make_node("MaxPool", ["relu2_out"], ["pool_out"], name="pool",
                         kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["pool_out"], ["flatten_out"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flatten_out", "fc1.weight", "fc1.bias"], ["fc1_out"],
                         name="fc1", transB=1),
        helper.make_node("Relu", ["fc1_out"], ["relu3_out"], name="relu3"),
        helper.make_node("Gemm", ["relu3_out", "fc2.weight", "fc2.bias"], ["logits"],
                         name="fc2", transB=1),
        helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=1),
    ]
    inits = [numpy_helper.from_array(np.ascontiguousarray(v, dtype=np.float32), name=k)
             for k, v in p.items()]
    graph = helper.make_graph(
        nodes,
        graph_name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10]),
         helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 10])],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="pytest-quantacc-example",
        producer_version="1",
    )
    model.ir_version = IR_VERSION
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    return model


def save_onnx(model, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString(deterministic=True))


def ort_run(path, x):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits, probs = sess.run(["logits", "probs"], {"input": x})
    return logits, probs


# --------------------------------------------------------------------------
# deterministic npz writer (np.savez stores the current time in the zip)
# --------------------------------------------------------------------------
def save_npz_deterministic(path, **arrays):
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for key, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())


def main():
    t0 = time.perf_counter()
    (x_tr, y_tr), x_cal, (x_ev, y_ev) = load_data()
    print(f"data: train {len(x_tr)}, calib {len(x_cal)}, eval {len(x_ev)}")

    rng = np.random.default_rng(SEED)
    params = train(x_tr, y_tr, rng)
    t_train = time.perf_counter() - t0

    logits_np = forward(params, x_ev)
    acc_np = float((logits_np.argmax(1) == y_ev).mean())
    print(f"eval accuracy (numpy):       {acc_np:.4f}")

    # --- healthy model
    healthy_path = MODELS_DIR / "digits_cnn.onnx"
    save_onnx(build_onnx(params), healthy_path)
    logits_ort, probs_ort = ort_run(healthy_path, x_ev)
    diff = float(np.abs(logits_ort - logits_np).max())
    acc_ort = float((logits_ort.argmax(1) == y_ev).mean())
    print(f"eval accuracy (onnxruntime): {acc_ort:.4f}  (max |logits ort - numpy| = {diff:.2e})")
    assert diff < 1e-4, diff
    assert np.allclose(probs_ort, softmax(logits_ort), atol=1e-5)
    assert acc_ort >= 0.95, acc_ort

    # --- outlier model: scale conv2 channel c by k, compensate in fc1
    c, k = OUTLIER_CHANNEL, np.float32(OUTLIER_FACTOR)
    _, cache = forward(params, x_cal, cache=True)
    ch_max = cache["r2"].max(axis=(0, 2, 3))
    assert ch_max[c] > 0, f"conv2 channel {c} is dead; pick another"
    out = {key: val.copy() for key, val in params.items()}
    out["conv2.weight"][c] *= k
    out["conv2.bias"][c] *= k
    out["fc1.weight"][:, c * 16 : (c + 1) * 16] /= k
    outlier_path = MODELS_DIR / "digits_cnn_outlier.onnx"
    save_onnx(build_onnx(out, graph_name="digits_cnn_outlier"), outlier_path)
    logits_out, _ = ort_run(outlier_path, x_ev)
    diff_out = float(np.abs(logits_out - logits_ort).max())
    print(f"outlier model: channel {c} x{OUTLIER_FACTOR:g} (calib max {ch_max[c]:.3f} -> "
          f"{ch_max[c] * k:.1f}; other channels max {np.delete(ch_max, c).max():.3f}); "
          f"max |logits - healthy| = {diff_out:.2e}")
    assert diff_out < 1e-3, diff_out

    # --- data
    save_npz_deterministic(DATA_DIR / "calib.npz", input=x_cal)
    save_npz_deterministic(DATA_DIR / "eval.npz", input=x_ev)
    np.save(DATA_DIR / "eval_labels.npy", y_ev.astype(np.int64))

    for f in sorted([*MODELS_DIR.glob("*.onnx"), *DATA_DIR.glob("*")]):
        print(f"wrote {f.relative_to(HERE)} ({f.stat().st_size} bytes)")
    print(f"time: training {t_train:.1f} s, total {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
