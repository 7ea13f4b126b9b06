"""Run the current pytest-quantacc on the models make_models.py built and collect the facts the issues need.

Usage: ``python bench/models/measure.py [OUTDIR] [--only NAMES] [--skip-remedies]`` from the worktree root.
Why: issues 12-14 are judged on real exported models; this records, per model, what the tool says (terminal
size, passed/failed, float-vs-offline verdicts, first diverging layer, diagnosis kind), what it costs (wall
time and peak RSS of a remedies-off run and of a cold default run with the remedy search), and what the task
metric says about the deployable model (fixed.onnx with all ONNX Runtime optimizations) against float.
Writes ``OUTDIR/<name>/before.{txt,json}``, ``remedies.{txt,json}``, ``*.time`` and ``facts.json``.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path


def timed(cmd: list[str], stdout: Path, timefile: Path) -> dict:
    """Run under /usr/bin/time -v; wall seconds and peak RSS from its report."""
    with stdout.open("wb") as out:
        subprocess.run(["/usr/bin/time", "-v", "-o", str(timefile), *cmd], stdout=out, stderr=subprocess.STDOUT,
                       check=False)
    text = timefile.read_text()
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", text).group(1)
    seconds = sum(float(p) * 60 ** i for i, p in enumerate(reversed(wall.split(":"))))
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
    return {"wall_s": round(seconds, 1), "peak_rss_mib": round(rss_kb / 1024, 1)}


def terminal_facts(path: Path) -> dict:
    data = path.read_bytes()
    last = [ln for ln in data.decode(errors="replace").splitlines() if ln.strip()][-1]
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|xfailed|xpassed|error)", last)}
    return {"lines": data.count(b"\n"), "bytes": len(data), "counts": counts, "last_line": last.strip("= ")}


def report_facts(path: Path) -> dict:
    model = json.loads(path.read_text())["models"][0]
    comps = {(c["reference"], c["target"]): c for c in model["comparisons"]}
    fixed = comps.get(("float", "fixed"), {})
    offline = comps.get(("float", "offline"), {})
    agreement = comps.get(("fixed", "offline"), {})
    diag = fixed.get("diagnosis") or {}
    layers = fixed.get("layers", [])
    statuses = [r["status"] for r in layers]
    return {
        "status": model["status"],
        "artifacts": model.get("artifacts"),
        "layer_items": len(layers),
        "layers_failed": statuses.count("failed"),
        "layers_passed": statuses.count("passed"),
        "layers_skipped": statuses.count("skipped"),
        "first_diverging_layer": fixed.get("first_diverging_layer"),
        "diagnosis_layer": diag.get("layer"),
        "diagnosis_kind": diag.get("kind"),
        "diagnosis_contributors": diag.get("contributors"),
        "remedy": diag.get("remedy"),
        "remedy_attempts": len(diag.get("remedy_attempts") or []),
        "float_vs_offline": [{"output": r["layer"], "status": r["status"], "cos": r["cos"], "rmse": r["rmse"]}
                             for r in offline.get("layers", [])],
        "fixed_vs_offline": {"status": agreement.get("status"),
                             "first": agreement.get("first_diverging_layer"),
                             "worst_mismatch_rate": max((t["mismatch_rate"] for t in agreement.get("layers", [])),
                                                        default=None)},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("outdir", nargs="?", default="/work/realmodels")
    parser.add_argument("--only", default=None)
    parser.add_argument("--skip-remedies", action="store_true")
    args = parser.parse_args(argv)
    root = Path(args.outdir)
    names = args.only.split(",") if args.only else sorted(p.parent.name for p in root.glob("*/quantacc.yaml"))
    pytest = [sys.executable, "-m", "pytest", "-p", "no:randomly", "--quantacc"]
    for name in names:
        d = root / name
        spec = str(d / "quantacc.yaml")
        facts: dict = {"name": name, "build": json.loads((d / "build.json").read_text())}
        facts["before_run"] = timed([*pytest, spec, "--quantacc-remedies", "0", "--quantacc-report",
                                     str(d / "before.json")], d / "before.txt", d / "before.time")
        facts["before_terminal"] = terminal_facts(d / "before.txt")
        facts["before"] = report_facts(d / "before.json")
        art = Path(facts["before"]["artifacts"])
        metric = subprocess.run([sys.executable, str(d / "metric.py"), str(art / "float.onnx"),
                                 str(art / "fixed.onnx")], capture_output=True, text=True, check=False)
        facts["task_metric"] = json.loads(metric.stdout) if metric.returncode == 0 else metric.stderr[-2000:]
        if not args.skip_remedies:
            work = d / "work_remedies"
            shutil.rmtree(work, ignore_errors=True)
            facts["remedies_run"] = timed([*pytest, spec, "--quantacc-workdir", str(work), "--quantacc-report",
                                           str(d / "remedies.json")], d / "remedies.txt", d / "remedies.time")
            facts["remedies_terminal"] = terminal_facts(d / "remedies.txt")
            facts["remedies"] = report_facts(d / "remedies.json")
        (d / "facts.json").write_text(json.dumps(facts, indent=2))
        print(json.dumps(facts, indent=2), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
