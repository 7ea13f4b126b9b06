#!/usr/bin/env python3
"""What-if timings for engine changes suggested by bench_eval.py, without editing the package.

Each variant runs ``evaluate_model`` in a fresh subprocess with the engine patched at run time (monkeypatching
only; the package on disk is untouched), on the model, data and conversion cache that
``bench_eval.py --workdir DIR`` left behind (the package snapshot in DIR/pkg unless --live):

  engine      pytest_quantacc as it is
  spin        ONNX Runtime sessions allowed to spin (session.intra_op.allow_spinning=1, ORT's default)
  buffers     tensor_metrics as the engine computes it (float64 blocks, numpy pairwise sums: bit-identical
              results) but into three preallocated float64 block buffers, products written with out=,
              and ndarray.sum() instead of the np.sum wrapper: no per-block allocations
  f32         tensor_metrics on float32 blocks: products and numpy pairwise sums in float32 per 64k block,
              blocks accumulated in float64 (no float64 casts)
  overlap     each sample's metrics computed in one worker thread while ONNX Runtime runs the next sample
              (at most ~1.5 samples of outputs in flight)
  f32+overlap both
  no-metrics  tensor_metrics replaced by a constant: what the loop costs without any metric (ORT alone)

    python bench/bench_eval.py --workdir /tmp/qb --sizes 8,64 --no-profile   # once, to build and convert
    python bench/whatif_engine.py --workdir /tmp/qb --n 64 [--repeats 3] [--variants engine,f32,...]

The "max |dcos|" column is the largest difference of any layer's mean cos from the unpatched engine's.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
VARIANTS = ("engine", "spin", "buffers", "f32", "overlap", "buffers+overlap", "f32+overlap", "no-metrics")
FEATURES = {
    "engine": set(),
    "spin": {"spin"},
    "buffers": {"buffers"},
    "f32": {"f32"},
    "buffers+overlap": {"buffers", "overlap"},
    "overlap": {"overlap"},
    "f32+overlap": {"f32", "overlap"},
    "no-metrics": {"nometrics"},
}


def _sums_to_metrics(n: int, ff: float, qq: float, fq: float, dd: float, mx: float) -> dict[str, float]:
    # Same edge cases as pytest_quantacc.metrics.tensor_metrics (contract section 4).
    if ff == 0.0 and qq == 0.0:
        cos = 1.0
    elif ff == 0.0 or qq == 0.0:
        cos = 0.0
    else:
        cos = max(-1.0, min(1.0, fq / math.sqrt(ff * qq)))
    if dd == 0.0:
        rmse, sqnr = 0.0, math.inf
    elif ff == 0.0:
        rmse, sqnr = math.inf, -math.inf
    else:
        rmse, sqnr = math.sqrt(dd / ff), 10.0 * math.log10(ff / dd)
    return {"cos": cos, "rmse": rmse, "mse": dd / n, "sqnr_db": sqnr, "max_abs": mx}


def metrics_buffers(f, q, chunk: int = 1 << 16):
    """The engine's float64 block sums, bit for bit, without per-block temporaries."""
    import numpy as np

    f = np.asarray(f).reshape(-1)
    q = np.asarray(q).reshape(-1)
    if f.size == 0:
        return {"cos": 1.0, "rmse": 0.0, "mse": 0.0, "sqnr_db": math.inf, "max_abs": 0.0}
    size = min(chunk, f.size)
    a_buf, b_buf, t_buf = np.empty(size), np.empty(size), np.empty(size)
    ff = qq = fq = dd = mx = 0.0
    for i in range(0, f.size, chunk):
        n = min(chunk, f.size - i)
        a, b, t = a_buf[:n], b_buf[:n], t_buf[:n]
        a[...] = f[i:i + n]
        b[...] = q[i:i + n]
        ff += float(np.multiply(a, a, out=t).sum())
        qq += float(np.multiply(b, b, out=t).sum())
        fq += float(np.multiply(a, b, out=t).sum())
        np.subtract(b, a, out=t)
        mx = max(mx, float(np.abs(t, out=t).max()))
        np.subtract(b, a, out=t)
        dd += float(np.multiply(t, t, out=t).sum())
    return _sums_to_metrics(f.size, ff, qq, fq, dd, mx)


def metrics_f32(f, q, chunk: int = 1 << 16):
    """float32 products and pairwise sums per block (numpy, no BLAS), blocks accumulated in float64."""
    import numpy as np

    f = np.asarray(f).reshape(-1)
    q = np.asarray(q).reshape(-1)
    if f.size == 0:
        return {"cos": 1.0, "rmse": 0.0, "mse": 0.0, "sqnr_db": math.inf, "max_abs": 0.0}
    ff = qq = fq = dd = mx = 0.0
    for i in range(0, f.size, chunk):
        a, b = f[i:i + chunk], q[i:i + chunk]
        d = b - a
        ff += float(np.sum(a * a))
        qq += float(np.sum(b * b))
        fq += float(np.sum(a * b))
        dd += float(np.sum(d * d))
        mx = max(mx, float(np.max(np.abs(d))))
    return _sums_to_metrics(f.size, ff, qq, fq, dd, mx)


def child(args) -> None:
    feats = FEATURES[args.variant]
    import collections
    import threading

    import onnxruntime as ort

    import pytest_quantacc
    from pytest_quantacc import evaluate_model, load_spec

    ev = sys.modules["pytest_quantacc.engine.ort_backend"]
    met = sys.modules["pytest_quantacc.engine.metrics"]
    sim = sys.modules["pytest_quantacc.engine.runner"]
    timers = collections.Counter()

    if "spin" in feats:
        orig_init = ort.InferenceSession.__init__

        def init(self, model, sess_options=None, *a, **k):
            if sess_options is not None:
                sess_options.add_session_config_entry("session.intra_op.allow_spinning", "1")
            return orig_init(self, model, sess_options, *a, **k)

        ort.InferenceSession.__init__ = init

    metric_fn = met.tensor_metrics
    if "buffers" in feats:
        metric_fn = metrics_buffers
    if "f32" in feats:
        metric_fn = metrics_f32
    if "nometrics" in feats:
        def metric_fn(f, q):
            return {"cos": 1.0, "rmse": 0.0, "mse": 0.0, "sqnr_db": math.inf, "max_abs": 0.0}

    def timed_metrics(f, q, _fn=metric_fn):
        t = time.perf_counter()
        r = _fn(f, q)
        timers["metrics"] += time.perf_counter() - t
        return r

    met.tensor_metrics = timed_metrics

    orig_run = sim.Runner.run

    def run(self, feeds):
        t = time.perf_counter()
        r = orig_run(self, feeds)
        timers["ort_run"] += time.perf_counter() - t
        return r

    sim.Runner.run = run

    if "overlap" in feats:
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(1)
        inflight = threading.BoundedSemaphore(100)  # about 1.5 samples of compared tensors (65 a sample here)
        pending = []
        orig_compare, orig_finish = ev.accumulate, ev.finish

        def compare(acc, skips, tensor, f, q):
            inflight.acquire()

            def job():
                try:
                    orig_compare(acc, skips, tensor, f, q)
                finally:
                    inflight.release()

            pending.append(pool.submit(job))

        def finish(*a, **k):
            for fut in pending:
                fut.result()
            pending.clear()
            return orig_finish(*a, **k)

        ev.accumulate, ev.finish = compare, finish

    spec = load_spec(args.spec)
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    result = evaluate_model(spec.models[0], Path(args.base), args.threads)
    wall = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    comp = result.comparison("float", "fixed")
    cos = {r.layer.tensor: r.summary["cos"] for r in comp.layers if r.summary is not None} if comp else {}
    print("RESULT " + json.dumps({
        "seconds": wall, "samples": result.samples, "cpu_seconds": ru.ru_utime + ru.ru_stime - ru0.ru_utime - ru0.ru_stime,
        "peak_rss_mb": next(int(x.split()[1]) / 1024 for x in open("/proc/self/status") if x.startswith("VmHWM:")), "ort_run": timers["ort_run"], "metrics": timers["metrics"],
        "status": result.status, "cos": cos, "package": str(Path(pytest_quantacc.__file__).parent)}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", help="the --workdir of an earlier bench_eval.py run (required)")
    ap.add_argument("--n", type=int, default=64, help="evaluation samples (an eval_N.npz must exist)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeats", type=int, default=3, help="runs per variant, fastest kept (default 3)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--live", action="store_true", help="use the installed package, not DIR/pkg")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--base", help=argparse.SUPPRESS)
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    if not args.workdir:
        ap.error("--workdir is required")

    sys.path.insert(0, str(HERE))
    from bench_eval import write_spec

    work = Path(args.workdir).resolve()
    data = work / f"eval_{args.n}.npz"
    if not data.exists():
        sys.exit(f"{data} not found: run bench_eval.py --workdir {work} with --sizes including {args.n} first")
    spec = work / "quantacc.yaml"
    write_spec(spec, work / "mobilenetv2_nobn.onnx", work / "calib.npz", data)
    env0 = dict(os.environ)
    if not args.live and (work / "pkg" / "pytest_quantacc").is_dir():
        env0["PYTHONPATH"] = os.pathsep.join([str(work / "pkg")] + ([env0["PYTHONPATH"]] if env0.get("PYTHONPATH") else []))
    print(f"# evaluate_model, N={args.n}, threads={args.threads}, fastest of {args.repeats} (round-robin); "
          f"load {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    print(f"{'variant':12s} {'time s':>7s} {'ms/smp':>7s} {'cpu s':>6s} {'ORT run s':>9s} {'metrics s':>9s} "
          f"{'RSS MB':>7s} {'max |dcos|':>10s}  runs")
    variants = args.variants.split(",")
    results: dict[str, list[dict]] = {v: [] for v in variants}
    failed: set[str] = set()
    for _ in range(args.repeats):  # round-robin, so that a burst of outside load hits every variant alike
        for v in variants:
            if v in failed:
                continue
            cmd = [sys.executable, __file__, "--child", "1", "--variant", v, "--spec", str(spec),
                   "--base", str(work / ".quantacc"), "--threads", str(args.threads)]
            p = subprocess.run(cmd, capture_output=True, text=True, env=env0)
            line = next((x for x in reversed(p.stdout.splitlines()) if x.startswith("RESULT ")), None)
            if line is None:
                print(f"{v:12s} FAILED: {p.stderr[-800:]}")
                failed.add(v)
                continue
            results[v].append(json.loads(line[7:]))
    ref = None
    for v in variants:
        runs = results[v]
        if not runs:
            continue
        best = min(runs, key=lambda r: r["seconds"])
        if ref is None:
            ref = best["cos"]
        dcos = max((abs(best["cos"][k] - ref[k]) for k in ref if k in best["cos"]), default=0.0)
        dcos_s = "-" if v == "no-metrics" else f"{dcos:.1e}"
        print(f"{v:12s} {best['seconds']:7.2f} {1000 * best['seconds'] / best['samples']:7.0f} {best['cpu_seconds']:6.1f} "
              f"{best['ort_run']:9.2f} {best['metrics']:9.2f} {best['peak_rss_mb']:7.0f} {dcos_s:>10s}  "
              + ",".join(f"{r['seconds']:.2f}" for r in runs), flush=True)
    print(f"# load at end {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")


if __name__ == "__main__":
    main()
