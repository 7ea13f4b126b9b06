#!/usr/bin/env python3
"""Benchmark: evaluation in several passes over the graph under a memory budget (chunking.py).

Not a test. Builds the MobileNetV2-style model of bench_eval.py (52 conv, 65 quantized layers) at
1x3xRxR, converts it once (untimed), then evaluates N samples (modes float, fixed, offline) in a fresh
subprocess per memory budget: unlimited (one pass), then budgets that force about 2, 4 and 8 passes, then
1 byte (a pass per layer). Prints passes, wall time, peak RSS (``VmHWM``) and RSS above the
after-import baseline, each relative to one pass, and whether every metric equals the one-pass result
bit for bit.

    python bench/bench_passes.py                   # R = 224, N = 16 (about 2-3 minutes on 2 cores)
    python bench/bench_passes.py --resolution 96 --samples 4    # a smoke check
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_eval import build_model, make_images  # noqa: E402


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))


def child(spec: str, base: str, budget: int, threads: int) -> dict:
    from pytest_quantacc import evaluate_model, load_spec

    mspec = load_spec(Path(spec)).models[0]
    start_rss = _rss_mb()
    t0 = time.perf_counter()
    result = evaluate_model(mspec, Path(base), threads, memory_budget=budget)
    seconds = time.perf_counter() - t0
    numbers = {f"{c.reference}/{c.target}/{r.layer.tensor}": asdict(r.summary) for c in result.comparisons
               for r in c.layers if r.summary is not None}
    numbers["agreement"] = [asdict(a) for a in result.agreement.tensors] if result.agreement else None
    # VmHWM, not ru_maxrss: Linux carries the parent's peak over fork and exec into ru_maxrss.
    peak = next(int(x.split()[1]) / 1024 for x in open("/proc/self/status") if x.startswith("VmHWM:"))
    return {"seconds": seconds, "passes": result.passes, "peak_mb": peak, "base_mb": start_rss, "status": result.status, "numbers": numbers}


def per_sample_bytes(spec: Path, base: Path) -> int:
    import onnx

    from pytest_quantacc import evaluate_model, load_spec
    from pytest_quantacc.engine.ort_backend import plan_passes
    from pytest_quantacc.graph.match import match_layers

    mspec = load_spec(spec).models[0]
    result = evaluate_model(mspec, base, memory_budget=1 << 50)  # converts (untimed) and fills the cache
    assert result.error is None, result.error
    f = onnx.load(str(result.artifacts.float_model), load_external_data=False)
    q = onnx.load(str(result.artifacts.fixed_model), load_external_data=False)
    from pytest_quantacc.graph.structure import input_infos
    from pytest_quantacc.samples import load_samples

    evals = load_samples(mspec.evaluation.path, None, input_infos(f), spec, "evaluation.data")
    return plan_passes(f, match_layers(f, q), evals, set(mspec.modes), 1, 2).per_sample


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        spec, base, budget = args.child
        print(json.dumps(child(spec, base, int(budget), args.threads)))
        return
    with tempfile.TemporaryDirectory(prefix="quantacc-passes-") as tmp:
        work = Path(tmp)
        model = work / "mobilenetv2.onnx"
        build_model(model, args.resolution)
        np.savez(work / "calib.npz", input=make_images(8, args.resolution, seed=1))
        np.savez(work / "eval.npz", input=make_images(args.samples, args.resolution, seed=2))
        spec = work / "quantacc.yaml"
        spec.write_text(f"quantacc: 1\nmodels:\n  - name: mobilenetv2\n    model: {model.name}\n"
                        "    calibration: {data: calib.npz}\n    evaluation: {data: eval.npz}\n"
                        "    modes: [float, fixed, offline]\n")
        per_sample = per_sample_bytes(spec, work / "cache")
        budgets = [("unlimited", 1 << 50)] + [(f"~{k} passes", 2 * per_sample // k) for k in (2, 4, 8)] + [
            ("1 byte", 1)]
        print(f"model {args.resolution}x{args.resolution}, N={args.samples}, threads={args.threads}; compared "
              f"tensors ~{per_sample / 2**20:.1f} MiB per sample (float, fixed and integer copies)")
        rows = []
        for label, budget in budgets:
            out = subprocess.run([sys.executable, __file__, "--threads", str(args.threads), "--child", str(spec),
                                  str(work / "cache"), str(budget)], capture_output=True, text=True, check=True)
            rows.append((label, budget, json.loads(out.stdout.strip().splitlines()[-1])))
        one = rows[0][2]
        print(f"{'budget':>14} {'passes':>6} {'seconds':>8} {'x1':>5} {'peak MB':>8} {'above base':>10} {'x1':>5} "
              "identical")
        for label, budget, r in rows:
            above = r["peak_mb"] - r["base_mb"]
            one_above = one["peak_mb"] - one["base_mb"]
            print(f"{label:>14} {r['passes']:>6} {r['seconds']:>8.2f} {r['seconds'] / one['seconds']:>5.2f} "
                  f"{r['peak_mb']:>8.0f} {above:>10.0f} {above / one_above:>5.2f} "
                  f"{'yes' if r['numbers'] == one['numbers'] else 'NO'}")


if __name__ == "__main__":
    main()
