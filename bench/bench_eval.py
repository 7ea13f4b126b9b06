#!/usr/bin/env python3
"""Benchmark: pytest-quantacc's layer-by-layer evaluation against a plain ONNX Runtime floor and against
ONNX Runtime's own ``onnxruntime.quantization.qdq_loss_debug`` pipeline.

Not a test. One run (about 5-6 minutes on a 2-core machine) builds a MobileNetV2-style CNN at 1x3x224x224
with onnx.helper + numpy (fixed seed), quantizes it once through pytest-quantacc (QDQ, MinMax, uint8/int8,
16 calibration samples; untimed), then, for N = 8, 64, 256 evaluation samples, measures in a fresh
subprocess each:

  (a) floor  plain ONNX Runtime: float.onnx with every float node output exposed, and fixed.onnx (QDQ,
             ORT_DISABLE_ALL) with every activation DequantizeLinear output exposed; same samples, same
             thread settings; each output read once (``np.asarray(x).sum()``).
  (b) quantacc  ``evaluate_model(spec.models[0], base, threads)`` on a spec with ``modes: [float, fixed]``
             (conversion already cached; the timed call still checks the cache and loads the data).
  (c) ORT    ``qdq_loss_debug``: modify_model_output_intermediate_tensors (float and QDQ),
             collect_activations (both), create_weight_matching + compute_weight_error,
             create_activation_matching, compute_activation_error.

Timed, in every case: from after the imports to the result, i.e. reading the .npz data, preparing and
loading the models into ONNX Runtime sessions, running every sample through both models, and reducing
the outputs (a: one read each; b: the engine's metrics and report objects; c: ORT's SQNR). Not timed:
Python start-up and imports, building the model and data, and quantization. Peak RSS is the child's
high-water RSS (``VmHWM``; it includes the ~imports baseline, reported separately as "base").

    python bench/bench_eval.py                 # full run (N = 8, 64, 256), prints the table
    python bench/bench_eval.py --quick         # tiny model and sizes, a smoke check (~30 s)
    python bench/bench_eval.py --threads 1     # ONNX Runtime intra-op threads for (a), (b), (c)
    python bench/bench_eval.py --markdown out.md   # also write the tables as Markdown

(c) keeps every exposed tensor of every sample in memory (that is how ``collect_activations`` works), so
its N is capped where the projected peak RSS or run time would not fit (see ``--c-mem-gb``, ``--budget``);
the cap and the linear extrapolation to the full N are printed.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import io
import json
import os
import platform
import pstats
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SEED = 20240611

# --------------------------------------------------------------------------------------------------------
# Model: MobileNetV2 (width 1.0) without BatchNorm: conv with bias, Clip(0, 6), depthwise convs via group,
# linear bottlenecks, residual Adds, a 1x1 conv to 1280 with Relu, GlobalAveragePool, Flatten, Gemm head.
# --------------------------------------------------------------------------------------------------------

# (expansion t, output channels c, repeats n, first stride s), as in the MobileNetV2 paper.
MOBILENET_V2 = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1))
QUICK_BLOCKS = ((1, 8, 1, 1), (4, 16, 2, 2), (4, 24, 2, 2), (4, 32, 2, 2))


def build_model(path: Path, resolution: int, blocks=MOBILENET_V2, stem: int = 32, last: int = 1280,
                classes: int = 1000, seed: int = SEED) -> dict:
    """Write the CNN to ``path``; returns a few counts for the report."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    counts = {"Conv": 0, "depthwise": 0, "Add": 0}

    def init(name: str, arr: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    init("clip_min", np.array(0.0, np.float32))
    init("clip_max", np.array(6.0, np.float32))

    def conv(x: str, name: str, cin: int, cout: int, k: int, stride: int = 1, group: int = 1,
             act: str | None = "clip", gain: float = 2.0) -> str:
        fan_in = (cin // group) * k * k
        w = rng.normal(0.0, np.sqrt(gain / fan_in), size=(cout, cin // group, k, k)).astype(np.float32)
        b = rng.normal(0.0, 0.05, size=cout).astype(np.float32)
        y = f"{name}/conv_out"
        nodes.append(helper.make_node("Conv", [x, init(f"{name}.weight", w), init(f"{name}.bias", b)], [y],
                                      name=f"{name}/Conv", kernel_shape=[k, k], strides=[stride, stride],
                                      pads=[k // 2] * 4, group=group))
        counts["Conv"] += 1
        counts["depthwise"] += group > 1
        if act == "clip":
            nodes.append(helper.make_node("Clip", [y, "clip_min", "clip_max"], [f"{name}/act_out"],
                                          name=f"{name}/Clip"))
            return f"{name}/act_out"
        if act == "relu":
            nodes.append(helper.make_node("Relu", [y], [f"{name}/act_out"], name=f"{name}/Relu"))
            return f"{name}/act_out"
        return y

    x = conv("input", "stem", 3, stem, 3, stride=2)
    cin = stem
    index = 0
    for t, c, n, s in blocks:
        for i in range(n):
            stride = s if i == 0 else 1
            name = f"block{index}"
            h = x
            hidden = cin * t
            if t != 1:
                h = conv(h, f"{name}/expand", cin, hidden, 1)
            h = conv(h, f"{name}/dw", hidden, hidden, 3, stride=stride, group=hidden)
            # Linear bottleneck: no activation; a smaller gain keeps the residual stream from growing.
            h = conv(h, f"{name}/project", hidden, c, 1, act=None, gain=0.5)
            if stride == 1 and cin == c:
                nodes.append(helper.make_node("Add", [x, h], [f"{name}/add_out"], name=f"{name}/Add"))
                counts["Add"] += 1
                h = f"{name}/add_out"
            x, cin = h, c
            index += 1
    x = conv(x, "head", cin, last, 1, act="relu")
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pool_out"], name="pool/GlobalAveragePool"))
    nodes.append(helper.make_node("Flatten", ["pool_out"], ["flat_out"], name="pool/Flatten", axis=1))
    w = rng.normal(0.0, np.sqrt(1.0 / last), size=(classes, last)).astype(np.float32)
    b = np.zeros(classes, np.float32)
    nodes.append(helper.make_node("Gemm", ["flat_out", init("fc.weight", w), init("fc.bias", b)], ["logits"],
                                  name="fc/Gemm", transB=1))
    graph = helper.make_graph(
        nodes, "mobilenetv2_nobn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, resolution, resolution])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="bench_eval")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    params = sum(int(np.prod(i.dims)) for i in inits)
    return {"nodes": len(nodes), "conv": counts["Conv"], "depthwise_conv": counts["depthwise"],
            "residual_add": counts["Add"], "params": params}


def _upsample(grid: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of [..., k, k] to [..., size, size] with two interpolation matrices."""
    k = grid.shape[-1]
    pos = np.linspace(0, k - 1, size)
    lo = np.clip(np.floor(pos).astype(int), 0, k - 2)
    frac = pos - lo
    m = np.zeros((size, k))
    m[np.arange(size), lo] = 1 - frac
    m[np.arange(size), lo + 1] = frac
    return m @ grid @ m.T


def make_images(n: int, resolution: int, seed: int) -> np.ndarray:
    """Random but image-like inputs: smooth multi-scale colour fields with edges and a little pixel noise,
    in [0, 1], then ImageNet mean/std normalized. Shape [n, 1, 3, H, W], float32."""
    rng = np.random.default_rng(seed)
    mean = np.array([0.485, 0.456, 0.406]).reshape(3, 1, 1)
    std = np.array([0.229, 0.224, 0.225]).reshape(3, 1, 1)
    out = np.empty((n, 1, 3, resolution, resolution), np.float32)
    yy, xx = np.mgrid[0:resolution, 0:resolution] / resolution
    for i in range(n):
        img = rng.uniform(0.2, 0.8, size=(3, 1, 1))  # overall colour
        for cells, amp in ((3, 0.35), (8, 0.2), (28, 0.08)):  # coarse shapes to fine texture
            img = img + amp * _upsample(rng.normal(size=(3, cells, cells)), resolution)
        # One hard edge (an "object" boundary) at a random angle.
        a = rng.uniform(0, np.pi)
        edge = (np.cos(a) * (xx - rng.uniform(0.3, 0.7)) + np.sin(a) * (yy - rng.uniform(0.3, 0.7))) > 0
        img = img + edge * rng.normal(0, 0.25, size=(3, 1, 1))
        img = img + rng.normal(0, 0.02, size=img.shape)  # sensor noise
        out[i, 0] = (np.clip(img, 0, 1) - mean) / std
    return out


def write_spec(path: Path, model: Path, calib: Path, evals: Path) -> None:
    # Contract section 2; paths relative to the spec file.
    rel = lambda p: os.path.relpath(p, path.parent)  # noqa: E731
    path.write_text(
        "# Written by bench/bench_eval.py; rewritten for each N (same path, so the conversion cache is shared).\n"
        "quantacc: 1\n"
        "models:\n"
        "  - name: mobilenetv2_nobn\n"
        f"    model: {rel(model)}\n"
        "    calibration:\n"
        f"      data: {rel(calib)}\n"
        "    evaluation:\n"
        f"      data: {rel(evals)}\n"
        "    quantization:\n"
        "      method: minmax\n"
        "      activations: uint8\n"
        "      weights: int8\n"
        "    modes: [float, fixed]\n"
        "    thresholds: {cos: 0.99, rmse: 0.1}\n")


# --------------------------------------------------------------------------------------------------------
# Child processes: one measurement each, reporting JSON on the last line of stdout.
# --------------------------------------------------------------------------------------------------------

def _rss_now_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_rss_mb() -> float:
    """This process image's high-water RSS (VmHWM). Not ``ru_maxrss``: Linux carries the parent's peak over
    fork and exec into it, so a child forked from a big parent would report the parent's size."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _load_npz(path: str) -> np.ndarray:
    with np.load(path) as z:
        return z["input"]


def child_floor(args) -> dict:
    """(a): the two sessions the comparison needs, with the same tensors exposed, outputs read once."""
    import onnx
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    t0 = time.perf_counter()
    data = _load_npz(args.data)

    def session(path: str, pick) -> tuple:
        model = onnx.load(path)
        present = {o.name for o in model.graph.output}
        for name in pick(model):
            if name not in present:
                model.graph.output.append(onnx.ValueInfoProto(name=name))
                present.add(name)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.intra_op_num_threads = args.threads
        opts.log_severity_level = 3
        if args.nospin:  # variant a': worker threads sleep instead of spinning between runs
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        names = [o.name for o in model.graph.output]
        return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]), names

    float_types = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}

    def float_outputs(model):  # every node output of float type (shape inference ran at conversion)
        types = {vi.name: vi.type.tensor_type.elem_type for vi in list(model.graph.value_info) + list(model.graph.output)}
        return [t for n in model.graph.node for t in n.output if t and types.get(t, onnx.TensorProto.FLOAT) in float_types]

    def dequantized_activations(model):  # DQ outputs fed by a QuantizeLinear (weights' DQs read initializers)
        q_out = {n.output[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
        return [n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in q_out]

    fsess, fnames = session(args.float_model, float_outputs)
    qsess, qnames = session(args.fixed_model, dequantized_activations)
    t_setup = time.perf_counter() - t0
    acc = 0.0
    for i in range(min(args.n, len(data))):
        feed = {"input": data[i]}
        for x in fsess.run(fnames, feed):
            acc += float(np.asarray(x).sum())
        for x in qsess.run(qnames, feed):
            acc += float(np.asarray(x).sum())
    total = time.perf_counter() - t0
    return {"seconds": total, "setup_seconds": t_setup, "loop_seconds": total - t_setup, "samples": min(args.n, len(data)),
            "float_outputs": len(fnames), "fixed_outputs": len(qnames), "checksum": acc}


def child_quantacc(args) -> dict:
    """(b): the engine, exactly as a script calls it."""
    from pytest_quantacc import evaluate_model, load_spec

    t0 = time.perf_counter()
    spec = load_spec(args.spec)
    mspec = spec.models[0]
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
    result = evaluate_model(mspec, Path(args.base), args.threads)
    if args.profile:
        prof.disable()
    total = time.perf_counter() - t0
    out = {"seconds": total, "engine_seconds": dict(result.seconds), "samples": result.samples,
           "quantized_layers": result.quantized_layers, "status": result.status,
           "error": str(result.error) if result.error else None}
    comp = result.comparison("float", "fixed")
    if comp is not None:
        out["layers"] = len(comp.layers)
        out["compared"] = sum(1 for r in comp.layers if r.summary is not None and r.status != "skipped")
        out["failing"] = sum(1 for r in comp.layers if r.breaks)
        out["first_diverging"] = comp.first_diverging.layer.name if comp.first_diverging else None
        cos = [r.summary["cos"] for r in comp.layers if r.summary is not None and r.status != "skipped"]
        out["min_cos"] = min(cos) if cos else None
    if result.artifacts is not None:
        out["float_model"] = str(result.artifacts.float_model)
        out["fixed_model"] = str(result.artifacts.fixed_model)
        out["log"] = list(result.artifacts.log)
    if args.profile:
        prof.dump_stats(args.profile)
        s = io.StringIO()
        st = pstats.Stats(prof, stream=s)
        st.sort_stats("tottime").print_stats(25)
        st.sort_stats("cumulative").print_stats(40)
        Path(args.profile + ".txt").write_text(s.getvalue())
    return out


def child_ort(args) -> dict:
    """(c): ONNX Runtime's qdq_loss_debug pipeline, per its module docstring."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_activation_error,
        compute_weight_error,
        create_activation_matching,
        create_weight_matching,
        modify_model_output_intermediate_tensors,
    )

    ort.set_default_logger_severity(3)
    times = {}
    t0 = time.perf_counter()
    tmp = tempfile.mkdtemp(prefix="qdq_loss_debug.", dir=args.tmp)
    try:
        float_aug, qdq_aug = os.path.join(tmp, "float_aug.onnx"), os.path.join(tmp, "qdq_aug.onnx")
        modify_model_output_intermediate_tensors(args.float_model, float_aug)
        modify_model_output_intermediate_tensors(args.fixed_model, qdq_aug)
        times["augment"] = time.perf_counter() - t0
        data = _load_npz(args.data)
        n = min(args.n, len(data))

        class Reader(CalibrationDataReader):
            def __init__(self):
                self._i = 0

            def get_next(self):
                if self._i >= n:
                    return None
                self._i += 1
                return {"input": data[self._i - 1]}

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # collect_activations' default
        opts.intra_op_num_threads = args.threads
        opts.log_severity_level = 3
        t1 = time.perf_counter()
        float_acts = collect_activations(float_aug, Reader(), session_options=opts)
        qdq_acts = collect_activations(qdq_aug, Reader(), session_options=opts)
        times["collect"] = time.perf_counter() - t1
        t1 = time.perf_counter()
        weights = create_weight_matching(args.float_model, args.fixed_model)
        weight_err = compute_weight_error(weights)
        times["weights"] = time.perf_counter() - t1
        t1 = time.perf_counter()
        matched = create_activation_matching(qdq_acts, float_acts)
        # compute_activation_error reads match["float"] unconditionally: keep the pairs with a float tensor.
        with_float = {k: v for k, v in matched.items() if "float" in v}
        act_err = compute_activation_error(with_float)
        times["error"] = time.perf_counter() - t1
        total = time.perf_counter() - t0
        stored = sum(a.nbytes for d in (float_acts, qdq_acts) for v in d.values() for a in v)
        return {"seconds": total, "phase_seconds": times, "samples": n, "float_tensors": len(float_acts),
                "qdq_tensors": len(qdq_acts), "matched_activations": len(matched),
                "compared_activations": len(act_err), "weights": len(weight_err),
                "stored_mb": stored / 2**20}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_child_main(args) -> None:
    base_rss = _rss_now_mb()  # after imports of this module (numpy); the role's own imports come next
    if args.child == "a":
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    elif args.child == "b":
        import onnxruntime  # noqa: F401
        import onnxruntime.quantization  # noqa: F401

        import pytest_quantacc  # noqa: F401
    else:
        import onnxruntime.quantization.qdq_loss_debug  # noqa: F401
    base_rss = _rss_now_mb()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    cpu0, faults0 = ru0.ru_utime + ru0.ru_stime, ru0.ru_minflt
    out = {"a": child_floor, "b": child_quantacc, "c": child_ort}[args.child](args)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    out["peak_rss_mb"] = _peak_rss_mb()
    out["base_rss_mb"] = base_rss
    out["cpu_seconds"] = ru.ru_utime + ru.ru_stime - cpu0  # user + system, all threads, after the imports
    out["minor_faults"] = ru.ru_minflt - faults0
    print("RESULT " + json.dumps(out), flush=True)


# --------------------------------------------------------------------------------------------------------
# Parent: build, convert once, run the children, print the tables.
# --------------------------------------------------------------------------------------------------------

def mem_available_mb() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def run_child(role: str, extra: list[str], threads: int, timeout: float, mem_limit_mb: float, env: dict) -> dict:
    """Run one measurement in a fresh interpreter; kill it if it exceeds the time or memory guard."""
    import threading

    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", role, "--threads", str(threads), *extra]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    out_lines: list[str] = []
    err_lines: list[str] = []
    drains = [threading.Thread(target=lambda st, sink: sink.extend(st), args=(proc.stdout, out_lines), daemon=True),
              threading.Thread(target=lambda st, sink: sink.extend(st), args=(proc.stderr, err_lines), daemon=True)]
    for t in drains:
        t.start()
    killed = None
    while proc.poll() is None:
        time.sleep(0.1)
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                rss = next((int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:")), 0.0)
        except OSError:
            rss = 0.0
        if rss > mem_limit_mb:
            killed = f"killed: RSS {rss:.0f} MB over the {mem_limit_mb:.0f} MB guard"
        elif time.perf_counter() - t0 > timeout:
            killed = f"killed: over the {timeout:.0f} s guard"
        if killed:
            proc.kill()
            proc.wait()
            break
    for t in drains:
        t.join(timeout=5)
    wall = time.perf_counter() - t0
    line = next((x for x in reversed(out_lines) if x.startswith("RESULT ")), None)
    if killed or line is None:
        return {"failed": killed or f"exit {proc.returncode}: {''.join(err_lines)[-1500:]}", "process_seconds": wall}
    res = json.loads(line[len("RESULT "):])
    res["process_seconds"] = wall
    return res


def machine(repo: Path | None) -> dict:
    import onnx
    import onnxruntime

    info = {"python": platform.python_version(),
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            k, _, v = line.partition(":")
            if k.strip() in ("Model name", "CPU(s)", "Thread(s) per core", "Core(s) per socket", "Hypervisor vendor"):
                info[k.strip()] = v.strip()
    except OSError:
        pass
    with open("/proc/meminfo") as f:
        info["memory"] = f"{int(f.readline().split()[1]) / 2**20:.1f} GiB"
    info.update(onnxruntime=onnxruntime.__version__, onnx=onnx.__version__, numpy=np.__version__)
    if repo is not None:
        git = lambda *a: subprocess.run(["git", "-C", str(repo), *a], capture_output=True, text=True).stdout  # noqa: E731
        head = git("rev-parse", "--short", "HEAD").strip()
        dirty = [line[3:] for line in git("status", "--porcelain", "--", "pytest_quantacc").splitlines() if line.strip()]
        info["package_commit"] = (head or "?") + (f" + uncommitted changes in {', '.join(dirty)}" if dirty else "")
    return info


def snapshot_package(work: Path) -> tuple[Path | None, Path | None, str]:
    """Copy the importable pytest_quantacc into the work dir, so that every (b) run measures the same code
    even while the package is being edited. Returns (path for PYTHONPATH, repo root, source digest)."""
    import hashlib

    try:
        import pytest_quantacc
    except Exception as exc:  # a half-edited package: say so instead of measuring nothing
        sys.exit(f"cannot import pytest_quantacc: {type(exc).__name__}: {exc}")
    src = Path(pytest_quantacc.__file__).resolve().parent
    dest = work / "pkg" / "pytest_quantacc"
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    h = hashlib.sha256()
    for f in sorted(dest.rglob("*.py")):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    repo = src.parent if (src.parent / ".git").exists() else None
    return dest.parent, repo, h.hexdigest()[:12]


def default_repeats(n: int) -> int:
    """The machine may be shared: small, cheap measurements are repeated and the fastest run is kept."""
    return 3 if n <= 8 else 2


def measure(role: str, extra: list[str], repeats: int, args, env: dict, mem_limit_mb: float, deadline: float) -> dict:
    runs = []
    for i in range(repeats):
        if i and time.perf_counter() > deadline:
            break  # out of budget for repeats
        r = run_child(role, extra, args.threads, 600, mem_limit_mb, env)
        runs.append(r)
        if "failed" in r:
            break
    ok = [r for r in runs if "failed" not in r]
    if not ok:
        return runs[-1]
    best = dict(min(ok, key=lambda r: r["seconds"]))
    best["runs"] = [round(r["seconds"], 3) for r in ok]
    best["peak_rss_mb"] = max(r["peak_rss_mb"] for r in ok)  # conservative: the largest peak of the runs
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] + "\n\nSee bench/README.md.",
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny model (64x64, 7 blocks) and N = 2, 4, 8: a smoke check")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="ONNX Runtime intra-op threads for all measurements (default: all CPUs)")
    ap.add_argument("--sizes", type=lambda v: [int(x) for x in v.split(",")], default=None,
                    help="evaluation sample counts, comma separated (default 8,64,256; quick 2,4,8)")
    ap.add_argument("--calibration", type=int, default=None, help="calibration samples (default 16; quick 4)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="runs per measurement, fastest kept (default 3 for N<=8, else 2; a capped (c) runs once)")
    ap.add_argument("--workdir", default=None, help="where model, data and caches go (default: a temp dir, removed)")
    ap.add_argument("--budget", type=float, default=540.0,
                    help="seconds the whole run should stay under; (c) is capped and repeats dropped to fit (default 540)")
    ap.add_argument("--c-mem-gb", type=float, default=None,
                    help="peak RSS allowed for (c) (default: the smaller of 10 GB and half of MemAvailable)")
    ap.add_argument("--no-snapshot", action="store_true",
                    help="run (b) against the live package instead of a copy taken at start")
    ap.add_argument("--no-profile", action="store_true", help="skip the cProfile run of (b)")
    ap.add_argument("--markdown", default=None, help="also write the report as Markdown to this file")
    # Internal: one measurement in a child process.
    ap.add_argument("--child", choices=["a", "b", "c"], help=argparse.SUPPRESS)
    for opt in ("--data", "--float-model", "--fixed-model", "--spec", "--base", "--profile", "--tmp"):
        ap.add_argument(opt, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--nospin", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        run_child_main(args)
        return

    start = time.perf_counter()
    deadline_repeats = start + 0.6 * args.budget
    sizes = sorted(args.sizes or ([2, 4, 8] if args.quick else [8, 64, 256]))
    ncal = args.calibration or (4 if args.quick else 16)
    resolution = 64 if args.quick else 224
    work = Path(args.workdir).resolve() if args.workdir else Path(tempfile.mkdtemp(prefix="quantacc-bench."))
    work.mkdir(parents=True, exist_ok=True)
    mem_avail = mem_available_mb()
    c_mem_limit = args.c_mem_gb * 1024 if args.c_mem_gb else min(10 * 1024, 0.5 * mem_avail)
    guard_mem = 0.85 * mem_avail
    env = dict(os.environ)
    pkg_path, repo, digest = snapshot_package(work)
    if not args.no_snapshot:
        env["PYTHONPATH"] = os.pathsep.join([str(pkg_path)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    info = machine(repo)
    info["package_digest"] = digest + ("" if args.no_snapshot else " (snapshot used for every run)")
    info["load_start"] = loadavg()
    print(f"# quantacc evaluation benchmark: {info.get('Model name', '?')}, {info.get('CPU(s)', '?')} CPUs, "
          f"{info['memory']}, onnxruntime {info['onnxruntime']}, threads={args.threads}, load {info['load_start']}",
          flush=True)
    print(f"# work directory: {work}; pytest_quantacc {info.get('package_commit', '')} [{info['package_digest']}]",
          flush=True)

    # 1. Model and data (untimed).
    t0 = time.perf_counter()
    model = work / "mobilenetv2_nobn.onnx"
    model_info = build_model(model, resolution, QUICK_BLOCKS if args.quick else MOBILENET_V2,
                             stem=16 if args.quick else 32, last=128 if args.quick else 1280,
                             classes=100 if args.quick else 1000)
    np.savez(work / "calib.npz", input=make_images(ncal, resolution, SEED + 1))
    evals = make_images(max(sizes), resolution, SEED + 2)
    data = {}
    for n in sizes:  # one file per N: reading the data is part of every measurement, so each file holds N
        data[n] = work / f"eval_{n}.npz"
        np.savez(data[n], input=evals[:n])
    del evals
    spec, base = work / "quantacc.yaml", work / ".quantacc"
    print(f"# model: {model_info} at 1x3x{resolution}x{resolution}; built with data in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)

    # 2. Conversion once (untimed): evaluate_model on the smallest N fills the cache.
    write_spec(spec, model, work / "calib.npz", data[sizes[0]])
    conv = run_child("b", ["--spec", str(spec), "--base", str(base), "--n", str(sizes[0])], args.threads, 600,
                     guard_mem, env)
    if "failed" in conv:
        sys.exit(f"conversion run failed: {conv['failed']}")
    if conv.get("error"):
        sys.exit(f"conversion run reported an input error: {conv['error']}")
    print(f"# conversion (untimed): {conv['engine_seconds']['convert']:.1f} s; {conv['quantized_layers']} quantized "
          f"layers, {conv['compared']} of {conv['layers']} float layers compared, status {conv['status']}, "
          f"min cos {conv['min_cos']:.4f}", flush=True)

    common = ["--float-model", conv["float_model"], "--fixed-model", conv["fixed_model"], "--tmp", str(work)]
    rows = []
    for n in sizes:
        write_spec(spec, model, work / "calib.npz", data[n])
        reps = args.repeats or default_repeats(n)
        row = {"n": n}
        a_args = ["--data", str(data[n]), "--n", str(n), *common]
        row["a"] = measure("a", a_args, reps, args, env, guard_mem, deadline_repeats)
        row["a2"] = measure("a", [*a_args, "--nospin"], reps, args, env, guard_mem, deadline_repeats)
        row["b"] = measure("b", ["--spec", str(spec), "--base", str(base), "--n", str(n)], reps, args, env, guard_mem,
                           deadline_repeats)
        # (c) keeps everything in memory: cap its N by the memory and time projected from its previous runs.
        nc, slope, c_cap = n, None, None
        prev = [r.get("c_measured", r["c"]) for r in rows if "failed" not in r["c"]]
        if prev:
            p = prev[-1]
            if len(prev) >= 2 and p["samples"] > prev[-2]["samples"]:
                q = prev[-2]
                per_mb = (p["peak_rss_mb"] - q["peak_rss_mb"]) / (p["samples"] - q["samples"])
                per_s = (p["seconds"] - q["seconds"]) / (p["samples"] - q["samples"])
            else:  # one run: what it stored per sample, plus a margin for the transient copies of the error step
                per_mb = 1.15 * p["stored_mb"] / p["samples"]
                per_s = p["seconds"] / p["samples"]
            slope = (per_mb, per_s)
            fixed_mb, fixed_s = p["peak_rss_mb"] - per_mb * p["samples"], p["seconds"] - per_s * p["samples"]
            remaining = args.budget - (time.perf_counter() - start)
            later = [m for m in sizes if m > n]
            # Keep time for the later sizes' (a), (a'), (b) and for the profile run (scaled from this N's).
            ab = row["a"].get("seconds", 0) + row["a2"].get("seconds", 0) + row["b"].get("seconds", 0)
            reserve = ab * sum(m / n for m in later) + (0 if args.no_profile else row["b"].get("seconds", 0) * 1.5) + 15
            by_mem = int((c_mem_limit - fixed_mb) / max(per_mb, 1e-6))
            by_time = int((remaining - reserve - fixed_s) / max(per_s, 1e-6))
            nc = max(1, min(n, by_mem, by_time))
            if nc < n:
                c_cap = row["c_cap"] = {"n": n, "ran": nc, "by": "memory" if by_mem <= by_time else "time",
                         "projected_rss_mb": fixed_mb + per_mb * n, "projected_seconds": fixed_s + per_s * n,
                         "mem_limit_mb": c_mem_limit}
        c_reps = reps if nc == n else 1
        row["c"] = measure("c", ["--data", str(data[n]), "--n", str(nc), *common], c_reps, args, env,
                           min(guard_mem, c_mem_limit * 1.1), deadline_repeats)
        if nc < n and "failed" not in row["c"]:
            # Extrapolate from the capped run by (c)'s own per-sample slope (from the smaller (c) runs).
            m = row["c_measured"] = dict(row["c"])
            per_mb, per_s = slope
            c_cap.update(projected_seconds=m["seconds"] + per_s * (n - nc),
                         projected_rss_mb=m["peak_rss_mb"] + per_mb * (n - nc))
            row["c"].update(capped=True, seconds=c_cap["projected_seconds"], peak_rss_mb=c_cap["projected_rss_mb"])
        line = f"N={n:4d}  " + "  ".join(
            f"({k}) {fmt_s(row[k])} s {row[k].get('peak_rss_mb', 0):.0f} MB" for k in ("a", "a2", "b", "c"))
        if "c_measured" in row:
            m = row["c_measured"]
            line += f"  [(c) capped by {c_cap['by']}: ran {nc} samples in {m['seconds']:.2f} s, {m['peak_rss_mb']:.0f} MB]"
        print(line + f"  load {loadavg()}", flush=True)
        rows.append(row)

    prof = None
    if not args.no_profile:
        pn = 64 if 64 in sizes else sizes[len(sizes) // 2]
        write_spec(spec, model, work / "calib.npz", data[pn])
        prof_path = str(work / f"quantacc_N{pn}.prof")
        pr = run_child("b", ["--spec", str(spec), "--base", str(base), "--n", str(pn), "--profile", prof_path],
                       args.threads, 600, guard_mem, env)
        text = Path(prof_path + ".txt").read_text() if Path(prof_path + ".txt").exists() else pr.get("failed", "")
        prof = {"n": pn, "result": pr, "path": prof_path, "text": text}

    info["load_end"] = loadavg()
    total = time.perf_counter() - start
    report = render(info, model_info, resolution, ncal, args.threads, conv, rows, prof, total)
    print(report)
    if args.markdown:
        Path(args.markdown).write_text(report)
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


def fmt_s(r: dict | None, key: str = "seconds") -> str:
    if not r:
        return "-"
    if "failed" in r:
        return "FAILED"
    return f"{r[key]:.2f}" + ("*" if r.get("capped") else "")


def ratio(x: dict, y: dict) -> str:
    if "failed" in x or "failed" in y:
        return "-"
    return f"{x['seconds'] / y['seconds']:.2f}" + ("~" if y.get("capped") else "")


def render(info, model_info, resolution, ncal, threads, conv, rows, prof, total) -> str:
    L = ["## Machine\n",
         f"- CPU: {info.get('Model name', '?')}, {info.get('CPU(s)', '?')} CPUs ({info.get('Core(s) per socket', '?')} "
         f"cores per socket, {info.get('Thread(s) per core', '?')} thread per core"
         + (f", {info['Hypervisor vendor']} VM" if info.get("Hypervisor vendor") else "") + ")",
         f"- memory: {info['memory']}",
         f"- onnxruntime {info['onnxruntime']}, onnx {info['onnx']}, numpy {info['numpy']}, Python {info['python']}",
         f"- pytest_quantacc: {info.get('package_commit', '?')} (sources {info['package_digest']})",
         f"- date: {info['date']}; load average at start {info['load_start']}, at end {info['load_end']}",
         f"- ONNX Runtime intra-op threads: {threads} (all three measurements)\n",
         "## Workload\n",
         f"- model: MobileNetV2-style CNN without BatchNorm at 1x3x{resolution}x{resolution}: {model_info['conv']} "
         f"Conv ({model_info['depthwise_conv']} depthwise), {model_info['residual_add']} residual Add, Clip(0,6) and "
         f"Relu, GlobalAveragePool, Gemm; {model_info['params'] / 1e6:.2f} M parameters; He-init, seed {SEED}",
         f"- quantization (untimed, cached): QDQ, MinMax, uint8 activations, int8 weights, per-tensor, {ncal} "
         f"calibration samples; {conv['quantized_layers']} quantized layers; {conv['compared']} of {conv['layers']} "
         f"float layers compared; status {conv['status']}, min cos {conv['min_cos']:.4f}"]
    a0 = next((r["a"] for r in rows if "failed" not in r["a"]), None)
    if a0:
        L.append(f"- exposed tensors in (a): float model {a0['float_outputs']}, fixed model {a0['fixed_outputs']}")
    c0 = next((r.get("c_measured", r["c"]) for r in rows if "failed" not in r["c"]), None)
    if c0:
        L.append(f"- (c) saves {c0['float_tensors']} float-model and {c0['qdq_tensors']} QDQ-model tensors per sample "
                 f"({c0['stored_mb'] / c0['samples']:.0f} MB per sample, all kept); {c0['compared_activations']} "
                 f"activations and {c0['weights']} weights compared")
    L += ["", "## Results\n",
          "Wall seconds inside a fresh subprocess, from after the imports to the result: reading the data, "
          "preparing the models and ONNX Runtime sessions, every sample through the float and fixed models, and "
          "the reduction (a: one read per output; b: `evaluate_model`, which also checks the conversion cache; "
          "c: ORT's pipeline). Peak RSS (MB) is the subprocess's high-water RSS (`VmHWM`). The fastest of the repeated runs "
          "is shown (runs in the breakdown).\n",
          "| N | a time | b time | c time | b/a | b/c | a RSS | b RSS | c RSS |",
          "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def rss(x):
        return "-" if "failed" in x else f"{x['peak_rss_mb']:.0f}" + ("*" if x.get("capped") else "")

    for r in rows:
        L.append(f"| {r['n']} | {fmt_s(r['a'])} | {fmt_s(r['b'])} | {fmt_s(r['c'])} | {ratio(r['b'], r['a'])} | "
                 f"{ratio(r['b'], r['c'])} | {rss(r['a'])} | {rss(r['b'])} | {rss(r['c'])} |")
    for c_cap in (r["c_cap"] for r in rows if "c_cap" in r and "c_measured" in r):
        m = next(r["c_measured"] for r in rows if r["n"] == c_cap["n"])
        L.append(f"\n\\* (c) at N={c_cap['n']} was capped by {c_cap['by']}: `collect_activations` keeps every exposed "
                 f"tensor of every sample, projected {c_cap['projected_rss_mb'] / 1024:.1f} GB peak RSS (limit "
                 f"{c_cap['mem_limit_mb'] / 1024:.1f} GB) and {c_cap['projected_seconds']:.0f} s. It ran {c_cap['ran']} "
                 f"samples ({m['seconds']:.2f} s, {m['peak_rss_mb']:.0f} MB peak); the starred values are linear "
                 f"extrapolations to N={c_cap['n']}: the capped run plus the per-sample cost in time and peak RSS measured "
                 f"on the smaller (c) runs; ~ marks ratios that use them.")
    for r in rows:
        for k in ("a", "a2", "b", "c"):
            if "failed" in r[k]:
                L.append(f"\n({k}) at N={r['n']} failed: {r[k]['failed'][:400]}")

    L += ["\n### Breakdown\n",
          "a' is the floor with `session.intra_op.allow_spinning=0`. ms/sample is the whole time over N. "
          "cpu is user+system seconds of the subprocess (all threads).\n",
          "| N | a ms/sample | a' time | a cpu | b cache+load | b simulate | b ms/sample | b cpu | c augment | "
          "c collect | c weights | c error | runs a / b / c |",
          "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        a, a2, b = r["a"], r["a2"], r["b"]
        c = r.get("c_measured", r["c"])
        cells = [str(r["n"])]
        cells += ["-"] * 3 if "failed" in a else [f"{1000 * a['seconds'] / a['samples']:.0f}", fmt_s(a2),
                                                  f"{a['cpu_seconds']:.1f}"]
        if "failed" in b:
            cells += ["-"] * 4
        else:
            es = b["engine_seconds"]
            cells += [f"{es.get('convert', 0):.2f}", f"{es.get('simulate', 0):.2f}",
                      f"{1000 * b['seconds'] / b['samples']:.0f}", f"{b['cpu_seconds']:.1f}"]
        if "failed" in c:
            cells += ["-"] * 4
        else:
            ph = c["phase_seconds"]
            cells += [f"{ph['augment']:.2f}",
                      f"{ph['collect']:.2f}" + (f" (N={c['samples']})" if c["samples"] != r["n"] else ""),
                      f"{ph['weights']:.2f}", f"{ph['error']:.2f}"]
        cells.append(" / ".join(",".join(f"{v:.2f}" for v in x.get("runs", [])) or "-" for x in (a, b, c)))
        L.append("| " + " | ".join(cells) + " |")
    L.append("\nRSS after imports, before the work (MB): " + "; ".join(
        f"N={r['n']}: a {r['a'].get('base_rss_mb', 0):.0f}, b {r['b'].get('base_rss_mb', 0):.0f}, "
        f"c {r.get('c_measured', r['c']).get('base_rss_mb', 0):.0f}" for r in rows))

    L.append("\n## Goals\n")
    by_n = {r["n"]: r for r in rows}
    lo, hi = min(by_n), max(by_n)
    mid = 64 if 64 in by_n else sorted(by_n)[len(by_n) // 2]
    verdict = lambda flag: "**met**" if flag else "**not met**"  # noqa: E731
    rm = by_n[mid]
    if "failed" not in rm["a"] and "failed" not in rm["b"]:
        v = rm["b"]["seconds"] / rm["a"]["seconds"]
        L.append(f"- b/a <= 1.3 at N={mid}: {v:.2f} -> {verdict(v <= 1.3)}")
    pairs = [(r, r["b"]["seconds"] / r["c"]["seconds"]) for r in rows if "failed" not in r["b"] and "failed" not in r["c"]]
    if pairs:
        L.append("- b/c < 1.0 in time: " + ", ".join(f"N={r['n']} {v:.2f}" + ("~" if r["c"].get("capped") else "")
                                                     for r, v in pairs)
                 + f" -> {verdict(all(v < 1.0 for _, v in pairs))}")
    if "failed" not in by_n[lo]["b"] and "failed" not in by_n[hi]["b"]:
        v = by_n[hi]["b"]["peak_rss_mb"] / by_n[lo]["b"]["peak_rss_mb"]
        L.append(f"- b peak RSS within 1.2x from N={lo} to N={hi}: {by_n[lo]['b']['peak_rss_mb']:.0f} -> "
                 f"{by_n[hi]['b']['peak_rss_mb']:.0f} MB = {v:.2f}x -> {verdict(v <= 1.2)}")
    if prof:
        L += [f"\n## cProfile of (b) at N={prof['n']}\n",
              f"One extra run under cProfile ({prof['result'].get('seconds', 0):.1f} s with the profiler on); "
              "top functions by own time, then by cumulative time.\n", "```", prof["text"].strip(), "```"]
    L.append(f"\nWhole benchmark run: {total:.0f} s.")
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    main()
