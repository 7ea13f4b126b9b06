"""Remedy search on real specs: what it finds, what it costs to deploy, how long it takes, how much memory.

For each spec: three ``pytest --quantacc`` runs under ``/usr/bin/time -v``, each with a fresh work folder
unless said otherwise: (a) remedies off (the evaluation alone), (b) remedies on (cold), (c) (b) again on
its work folder (warm: results and search reused). Prints one markdown block per spec.

    python bench/bench_remedies.py SPEC [SPEC ...] [--out DIR] [--threads N] [--remedy-time S]

The spec's first model is reported. Needs GNU time at /usr/bin/time.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path


def _run(spec: Path, work: Path, report: Path, extra: list[str]) -> dict:
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
           str(spec), "--quantacc", "--quantacc-workdir", str(work), "--quantacc-report", str(report), *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=spec.parent)
    wall = time.perf_counter() - t0
    (report.with_suffix(".out")).write_text(proc.stdout + "\n" + proc.stderr)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    cpu = sum(float(m) for m in re.findall(r"(?:User|System) time \(seconds\): ([\d.]+)", proc.stderr))
    summary = proc.stdout[proc.stdout.find("quantacc summary"):]
    return {"wall": wall, "cpu": cpu, "rss_mb": int(rss.group(1)) / 1024 if rss else None, "summary": summary,
            "json": json.loads(report.read_text()) if report.is_file() else None}


def _diagnosis(rep: dict) -> dict | None:
    model = rep["json"]["models"][0] if rep["json"] else None
    comp = next((c for c in (model or {}).get("comparisons", ()) if c.get("target") == "fixed"), None)
    return comp.get("diagnosis") if comp else None


def _accuracy(attempt: dict) -> str:
    value = attempt.get("accuracy")
    return "" if value is None else f", accuracy {value:.4f}"


def bench(spec: Path, out: Path, extra: list[str]) -> str:
    name = spec.parent.name
    base = out / name
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    off = _run(spec, base / "w_off", base / "off.json", [*extra, "--quantacc-remedies", "0"])
    cold = _run(spec, base / "w_on", base / "cold.json", extra)
    warm = _run(spec, base / "w_on", base / "warm.json", extra)
    d = _diagnosis(cold) or {}
    s = d.get("search") or {}
    c = d.get("cost") or {}
    lines = [f"### {name} ({spec})", "",
             "| | wall s | CPU s (user+sys) | peak RSS MB |", "| --- | --- | --- | --- |",
             f"| remedies off (evaluation) | {off['wall']:.1f} | {off['cpu']:.1f} | {off['rss_mb']:.0f} |",
             f"| remedies on, cold | {cold['wall']:.1f} | {cold['cpu']:.1f} | {cold['rss_mb']:.0f} |",
             f"| remedies on, warm re-run | {warm['wall']:.1f} | {warm['cpu']:.1f} | {warm['rss_mb']:.0f} |", ""]
    if s:
        wd = _diagnosis(warm) or {}
        first, alt = s.get("first") or {}, s.get("alternative") or {}
        lines += [f"- ratios: cold run / evaluation {cold['wall'] / off['wall']:.2f} (wall), "
                  f"{cold['cpu'] / max(off['cpu'], 1e-9):.2f} (CPU); peak RSS {cold['rss_mb'] / off['rss_mb']:.2f}; "
                  f"warm re-run / evaluation {warm['wall'] / off['wall']:.2f}",
                  f"- search: {s.get('ranked')}/{s.get('sites')} sites ranked on {s.get('samples')} samples "
                  f"({s.get('ranking_seconds')} s), {s.get('watched')} layers watched, "
                  f"{s.get('evaluations', 0) + first.get('evaluations', 0) + (alt.get('evaluations') or 0)} set "
                  f"evaluations, {s.get('runs')} switchboard runs; switchboard {s.get('switchboard_seconds')} s "
                  f"(inference {s.get('inference_seconds')} s), re-conversions {s.get('attempts_seconds')} s, latency "
                  f"measurement {s.get('cost_seconds')} s, deepen total {s.get('total_seconds')} s; checks "
                  f"{first.get('checks', [])} then {s.get('checks')}; cut: {s.get('cut') or 'nothing'}",
                  f"- set found ({s.get('level')}): {len(s.get('chosen', ()))} sites "
                  f"{[x['site'] for x in s.get('chosen', ())][:8]}, verified: {s.get('verified')}"
                  + (f"; before it at {first.get('level')}: {len(first.get('chosen') or ())} sites, verified "
                     f"{first.get('verified')}" if first else "")
                  + (f"; float alternative: {len(alt.get('chosen') or ())} sites, verified {alt.get('verified')}"
                     if alt else ""),
                  f"- offered remedy: {d.get('remedy')}",
                  f"- its cost: {c.get('shares')}, latency {c.get('latency_ms')} ms vs int8 {c.get('latency_int8_ms')}"
                  f" ms, float {c.get('latency_float_ms')} ms, slower than float: {c.get('slower_than_float')}",
                  "- attempts: " + "; ".join(f"{a['label']} -> {'pass' if a['passes'] else 'fail'}"
                                             f"{' HARMFUL' if a.get('harmful') else ''}"
                                             f"{_accuracy(a)}"
                                             f" ({a['seconds']} s, {(a.get('cost') or {}).get('latency_ms')} ms)"
                                             for a in d.get("remedy_attempts", ())),
                  f"- warm re-run: search cache {(wd.get('search') or {}).get('cache')}"]
    else:
        lines.append("- no remedy search (the model passes, or the float-vs-fixed comparison did not fail)")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("specs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=Path("/tmp/quantacc-bench-remedies"))
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--remedy-time", type=float, default=None)
    a = ap.parse_args()
    extra = ["--quantacc-threads", str(a.threads)]
    if a.remedy_time is not None:
        extra += ["--quantacc-remedy-time", str(a.remedy_time)]
    for spec in a.specs:
        print(bench(spec.resolve(), a.out, extra), flush=True)


if __name__ == "__main__":
    main()
