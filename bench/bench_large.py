"""Benchmark: a model whose weights exceed protobuf's 2 GB limit, end to end through the engine.

Builds (reproducibly, no download) a stack of square MatMul+Relu layers whose float weights total about
2.4 GB, saved with external data, plus a few calibration and evaluation samples; then, each in a fresh
subprocess so that peak RSS belongs to that step alone:

1. ``evaluate_model`` with modes float, fixed, offline (conversion from scratch);
2. the same again (every artifact reused from the work folder);
3. a plain ONNX Runtime session load + run of the user's float model, for comparison.

It prints wall time per phase (``ModelResult.seconds``), peak RSS (``VmHWM``), the disk used by the work
folder and the artifact sizes. A script, not a test. See bench/README.md.

    python bench/bench_large.py                    # ~2.4 GB model in /tmp/quantacc-bench-large
    python bench/bench_large.py --layers 2 --width 4096   # small smoke run (134 MB)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def build(dest: Path, layers: int, width: int, n_calib: int, n_eval: int) -> Path:
    """model.onnx + model.weights (one layer's weights in memory at a time), calib.npz, eval.npz, quantacc.yaml."""
    import onnx
    from onnx import TensorProto, helper

    stamp = dest / "built.json"
    params = {"layers": layers, "width": width, "n_calib": n_calib, "n_eval": n_eval}
    if stamp.is_file() and json.loads(stamp.read_text()) == params:
        return dest / "quantacc.yaml"
    dest.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2026)
    inits, nodes = [], []
    x = "x"
    offset = 0
    with open(dest / "model.weights", "wb") as f:
        for i in range(1, layers + 1):
            w = (rng.standard_normal((width, width), dtype=np.float32) * np.float32(np.sqrt(2.0 / width)))
            f.write(w.tobytes())
            t = TensorProto(name=f"w{i}", data_type=TensorProto.FLOAT, dims=[width, width])
            t.data_location = TensorProto.EXTERNAL
            for key, value in (("location", "model.weights"), ("offset", offset), ("length", w.nbytes)):
                t.external_data.add(key=key, value=str(value))
            offset += w.nbytes
            inits.append(t)
            nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"mm{i}"], name=f"mm{i}"))
            nodes.append(helper.make_node("Relu", [f"mm{i}"], [f"relu{i}"], name=f"relu{i}"))
            x = f"relu{i}"
            del w
    graph = helper.make_graph(nodes, "large_mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                   ["n", width])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["n", width])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(dest / "model.onnx"))  # tensors already external: only the graph is written
    data = rng.standard_normal((n_calib + n_eval, width), dtype=np.float32)
    np.savez(dest / "calib.npz", x=data[:n_calib])
    np.savez(dest / "eval.npz", x=data[n_calib:])
    import yaml

    (dest / "quantacc.yaml").write_text(yaml.safe_dump({"quantacc": 1, "models": [{
        "name": "large_mlp", "model": "model.onnx", "calibration": {"data": "calib.npz"},
        "evaluation": {"data": "eval.npz"}, "modes": ["float", "fixed", "offline"]}]}, sort_keys=False))
    stamp.write_text(json.dumps(params))
    return dest / "quantacc.yaml"


def _peak_mb() -> float:
    """High-water RSS of this process image (VmHWM): ``ru_maxrss`` would include the parent's peak."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:"))


def _du(path: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


def child_engine(spec: Path, work: Path, method: str = "minmax", split: bool = False) -> dict:
    """``evaluate_model``; with ``split``, float.onnx and the quantization are timed first, one by one."""
    from dataclasses import replace

    from pytest_quantacc import evaluate_model, load_spec
    from pytest_quantacc.convert.prepare import model_inputs, prepare_float
    from pytest_quantacc.convert.quantize import quantize
    from pytest_quantacc.samples import load_samples

    mspec = load_spec(spec).models[0]
    mspec = replace(mspec, quantization=replace(mspec.quantization, method=method))
    t0 = time.perf_counter()
    steps = {}
    if split:
        float_path = prepare_float(mspec, work)
        steps["float.onnx"] = time.perf_counter() - t0
        calib = load_samples(mspec.calibration.path, None, model_inputs(float_path), spec, "calibration")
        t1 = time.perf_counter()
        quantize(mspec, float_path, calib, work)
        steps["fixed.onnx + offline.onnx"] = time.perf_counter() - t1
    result = evaluate_model(mspec, work)
    wall = time.perf_counter() - t0
    art = result.artifacts
    out = {"wall_s": wall, "phases_s": {**steps, **result.seconds}, "peak_rss_mb": _peak_mb(),
           "status": result.status, "error": None if result.error is None else str(result.error)}
    if art is not None:
        out["workdir_disk_mb"] = _du(art.workdir) / 1e6
        out["files_mb"] = {p.name: p.stat().st_size / 1e6 for p in sorted(art.workdir.iterdir()) if p.is_file()}
        fx = result.comparison("float", "fixed")
        out["worst_cos"] = min((r.summary["cos"] for r in fx.layers if r.summary), default=None)
        out["outputs_vs_offline"] = [(r.layer.tensor, r.summary["cos"]) for r in
                                     result.comparison("float", "offline").layers if r.summary]
        out["agreement_passed"] = result.agreement.passed if result.agreement else None
    return out


def child_plain(model: Path, data: Path) -> dict:
    import onnxruntime as ort

    t0 = time.perf_counter()
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    load = time.perf_counter() - t0
    x = np.load(data)["x"]
    t0 = time.perf_counter()
    for i in range(len(x)):
        session.run(None, {"x": x[i:i + 1]})
    return {"load_s": load, "run_s": time.perf_counter() - t0, "peak_rss_mb": _peak_mb()}


def _child(args: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=Path("/tmp/quantacc-bench-large"))
    ap.add_argument("--layers", type=int, default=9)
    ap.add_argument("--width", type=int, default=8192)
    ap.add_argument("--calibration", type=int, default=4)
    ap.add_argument("--evaluation", type=int, default=4)
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "engine":
            out = child_engine(Path(rest[0]), Path(rest[1]), rest[2], rest[3] == "split")
        else:
            out = child_plain(Path(rest[0]), Path(rest[1]))
        print(json.dumps(out))
        return

    import onnx
    import onnxruntime

    t0 = time.perf_counter()
    spec = build(args.dir, args.layers, args.width, args.calibration, args.evaluation)
    weights = (args.dir / "model.weights").stat().st_size
    print(f"model: {args.layers} x MatMul({args.width}x{args.width})+Relu, float weights {weights / 1e9:.2f} GB "
          f"(protobuf limit 2.15 GB), built in {time.perf_counter() - t0:.0f} s; onnxruntime "
          f"{onnxruntime.__version__}, onnx {onnx.__version__}, {os.cpu_count()} cores")
    import shutil

    for work in (args.dir / "work", args.dir / "work-entropy"):
        if work.exists():
            shutil.rmtree(work)
    runs = {"minmax, cold": ["engine", str(spec), str(args.dir / "work"), "minmax", "whole"],
            "minmax, warm (artifacts reused)": ["engine", str(spec), str(args.dir / "work"), "minmax", "whole"],
            "entropy, cold, conversion steps timed one by one": [
                "engine", str(spec), str(args.dir / "work-entropy"), "entropy", "split"]}
    results = {name: _child(argv) for name, argv in runs.items()}
    results["plain"] = _child(["plain", str(args.dir / "model.onnx"), str(args.dir / "eval.npz")])
    for name in runs:
        r = results[name]
        phases = ", ".join(f"{k} {v:.1f} s" for k, v in r["phases_s"].items())
        print(f"engine {name}: {r['status']}, wall {r['wall_s']:.1f} s ({phases}), peak RSS "
              f"{r['peak_rss_mb'] / 1024:.2f} GiB, work folder {r.get('workdir_disk_mb', 0) / 1e3:.2f} GB on disk")
        if r["error"]:
            print(f"  error: {r['error']}")
    cold = results["minmax, cold"]
    print("  files (MB): " + ", ".join(f"{k} {v:.1f}" for k, v in cold.get("files_mb", {}).items()))
    print(f"  worst float-vs-fixed cos {cold.get('worst_cos')}, outputs vs offline {cold.get('outputs_vs_offline')}, "
          f"fixed-vs-offline agreement passed: {cold.get('agreement_passed')}")
    p = results["plain"]
    print(f"plain ONNX Runtime: session load {p['load_s']:.1f} s, {args.evaluation} runs {p['run_s']:.2f} s, peak RSS "
          f"{p['peak_rss_mb'] / 1024:.2f} GiB")
    (args.dir / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
