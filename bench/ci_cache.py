"""Wall time of the CI gate: cold vs warm cache, serial vs ``-n 2``, on the example and on a deep CNN.

    python bench/ci_cache.py [--depth 100] [--channels 8]

Builds a plain deep CNN (``depth`` Conv+Relu blocks at 64x64, so 2*depth+3 layers) with onnx.helper in a
temporary folder, then times complete ``pytest --quantacc`` runs in fresh processes (what CI pays):
the first run on an empty cache, a second unchanged run, and a run where only thresholds changed. Each
configuration gets its own work folder, so the runs do not share cache entries.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]


def deep_cnn(dest: Path, depth: int, channels: int, samples: int = 8) -> Path:
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    x = "input"
    cin = 3
    for i in range(depth):
        w = rng.normal(0, np.sqrt(2.0 / (cin * 9)), (channels, cin, 3, 3)).astype(np.float32)
        b = rng.normal(0, 0.01, channels).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes.append(helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"conv{i}_out"], name=f"conv{i}", pads=[1] * 4))
        nodes.append(helper.make_node("Relu", [f"conv{i}_out"], [f"relu{i}_out"], name=f"relu{i}"))
        x, cin = f"relu{i}_out", channels
    inits += [numpy_helper.from_array(rng.normal(0, 0.3, (10, channels)).astype(np.float32), "fc_w"),
              numpy_helper.from_array(np.zeros(10, np.float32), "fc_b")]
    nodes += [helper.make_node("GlobalAveragePool", [x], ["gap_out"], name="gap"),
              helper.make_node("Flatten", ["gap_out"], ["flat_out"], name="flatten"),
              helper.make_node("Gemm", ["flat_out", "fc_w", "fc_b"], ["logits"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "deep_cnn", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                                 ["batch", 3, 64, 64])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    dest.mkdir(parents=True, exist_ok=True)
    onnx.save(model, dest / "deep.onnx")
    data = rng.random((2 * samples, 3, 64, 64), dtype=np.float32)
    np.savez(dest / "calib.npz", input=data[:samples])
    np.savez(dest / "eval.npz", input=data[samples:])
    spec = dest / "quantacc_deep.yaml"
    spec.write_text("quantacc: 1\nmodels:\n  - name: deep\n    model: deep.onnx\n    calibration: {data: calib.npz}\n"
                    "    evaluation: {data: eval.npz}\n    quantization: {reduce_range: true}\n"
                    "    thresholds: {cos: 0.9, rmse: 0.5}\n    offline: {max_mismatch_rate: 0.5}\n")
    return spec


def timed(spec: Path, work: Path, *extra: str) -> float:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pytest", "--quantacc", str(spec), "--quantacc-workdir", str(work), "-q",
                    "-p", "no:randomly", "-p", "no:cacheprovider", *extra], cwd=spec.parent, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def engine(spec: Path, work: Path) -> tuple[float, float, str]:
    """In-process ``evaluate_cached`` of every model, cold then warm (no pytest, no interpreter start-up)."""
    sys.path.insert(0, str(ROOT))
    from pytest_quantacc.spec.parse import load_spec
    from pytest_quantacc.store.cache import evaluate_cached

    times, how = [], ""
    for _ in range(2):
        t0 = time.perf_counter()
        how = ",".join(evaluate_cached(m, work).cache for m in load_spec(spec).models)
        times.append(time.perf_counter() - t0)
    return times[0], times[1], how


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--depth", type=int, default=100)
    ap.add_argument("--channels", type=int, default=8)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="quantacc-bench-"))
    try:
        deep = deep_cnn(tmp / "deep", args.depth, args.channels)
        example = tmp / "example"
        shutil.copytree(ROOT / "example_project", example, ignore=shutil.ignore_patterns("*.baseline.json"))
        specs = {"example (2 specs)": [example / "quantacc.yaml", example / "quantacc_outlier.yaml"],
                 f"deep CNN ({2 * args.depth + 3} layers, 64x64)": [deep]}
        print(f"{'project':34} {'mode':8} {'first s':>8} {'second s':>9} {'ratio':>6} {'thresholds-only s':>18}")
        for label, paths in specs.items():
            for mode, extra in (("serial", ()), ("-n 2", ("-n", "2"))):
                work = tmp / f"work-{abs(hash((label, mode)))}"
                first = timed(paths[0], work, *map(str, paths[1:]), *extra)
                second = timed(paths[0], work, *map(str, paths[1:]), *extra)
                text = paths[0].read_text()
                paths[0].write_text(text + '    layers: {"relu*": {cos: 0.5, rmse: 0.9}}\n')
                third = timed(paths[0], work, *map(str, paths[1:]), *extra)
                paths[0].write_text(text)
                print(f"{label:34} {mode:8} {first:8.2f} {second:9.2f} {second / first:6.2f} {third:18.2f}")
            cold, warm, how = engine(paths[0], tmp / f"engine-{abs(hash(label))}")
            print(f"{label:34} {'engine':8} {cold:8.2f} {warm:9.2f} {warm / cold:6.2f}  (evaluate_cached of "
                  f"{paths[0].name} only; second: {how})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
