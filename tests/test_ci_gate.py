"""The CI gate at scale: evaluation cache, pytest-xdist, baselines, task accuracy.

Inference is counted, not guessed: the specs here score accuracy with a user metric (``count.py``) that
appends a line to ``calls.txt`` each time it runs; a model evaluation calls it twice (float and deployable
model), a reuse of stored metrics never.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conftest import EXAMPLE, ROOT

COUNTING_METRIC = textwrap.dedent('''
    from pathlib import Path

    import numpy as np


    def top1(outputs, labels):
        with open(Path(__file__).with_name("calls.txt"), "a") as f:
            f.write("call\\n")
        return float(np.mean(outputs.reshape(len(outputs), -1).argmax(-1) == labels))
''')


def _with_accuracy(text: str, metric: str = "count.py:top1", max_drop: float = 0.01) -> str:
    text = text.replace("      data: data/eval.npz\n",
                        "      data: data/eval.npz\n      labels: data/eval_labels.npy\n", 1)
    text = "\n".join(line for line in text.splitlines() if "labels: data/eval_labels.npy   #" not in line
                     and not line.strip().startswith("accuracy:")) + "\n"
    return text + f"    accuracy: {{max_drop: {max_drop}, metric: \"{metric}\"}}\n"


@pytest.fixture
def project(pytester):
    """The example project with both specs scoring accuracy through the counting metric."""
    for sub in ("models", "data"):
        shutil.copytree(EXAMPLE / sub, pytester.path / sub)
    for spec in ("quantacc.yaml", "quantacc_outlier.yaml"):
        (pytester.path / spec).write_text(_with_accuracy((EXAMPLE / spec).read_text(),
                                                         max_drop=0.01 if spec == "quantacc.yaml" else 1.0))
    (pytester.path / "count.py").write_text(COUNTING_METRIC)
    return pytester


def calls(pytester) -> int:
    path = pytester.path / "calls.txt"
    return len(path.read_text().splitlines()) if path.exists() else 0


def run(pytester, *args, workdir="work"):
    return pytester.runpytest("--quantacc", *args, "--quantacc-workdir", str(pytester.path / workdir), "-p",
                              "no:randomly", "-p", "no:cacheprovider")


def edit(pytester, spec: str, old: str, new: str) -> None:
    path = pytester.path / spec
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def junit_props(path: Path, name: str) -> dict[str, str]:
    case = next(c for c in ET.parse(path).getroot().iter("testcase") if c.get("name") == name)
    return {p.get("name"): p.get("value") for p in case.iter("property")}


def report_without_paths(path: Path) -> dict:
    report = json.loads(path.read_text())
    for m in report["models"]:
        m.pop("artifacts", None)
        m.pop("cache", None)
    return report


# ---------------------------------------------------------------------------------------------------- cache


def test_second_run_reuses_everything_and_reports_the_same(project):
    """Re-judged stored metrics give the same report as a fresh evaluation, diagnosis and inheritance included."""
    run(project, ".", "--quantacc-report", "first.json").assert_outcomes(passed=19, skipped=6, xfailed=5)
    assert calls(project) == 4
    result = run(project, ".", "--quantacc-report", "second.json", "--junitxml", "second.xml")
    result.assert_outcomes(passed=19, skipped=6, xfailed=5)
    assert calls(project) == 4  # no inference
    assert junit_props(project.path / "second.xml", "convert")["quantacc.cache"] == "reused"
    assert report_without_paths(project.path / "first.json") == report_without_paths(project.path / "second.json")


def test_threshold_and_known_bad_changes_recheck_stored_metrics(project):
    run(project, "quantacc_outlier.yaml").assert_outcomes(passed=7, skipped=3, xfailed=5)
    assert calls(project) == 2
    # the known_bad entry goes: the same stored metrics now fail five items, with the full diagnosis
    text = (project.path / "quantacc_outlier.yaml").read_text()
    start = text.index("    known_bad:")
    (project.path / "quantacc_outlier.yaml").write_text(text[:start] + text[text.index("    accuracy:"):])
    result = run(project, "quantacc_outlier.yaml")
    result.assert_outcomes(passed=7, failed=5, skipped=3)
    assert "first diverging layer: relu3 (Relu)" in result.stdout.str()
    assert "diagnosis (abrupt)" in result.stdout.str()
    # the model now fails: its remedy search scores each re-converted attempt on the task (the only inference)
    searched = calls(project)
    assert searched > 2
    # per-layer thresholds and the accuracy limit change too
    edit(project, "quantacc_outlier.yaml", "    accuracy: {max_drop: 1.0",
         '    layers: {"*": {cos: -1.0, rmse: 2.0}}\n    accuracy: {max_drop: 0.95')
    run(project, "quantacc_outlier.yaml").assert_outcomes(passed=12, skipped=3)
    assert calls(project) == searched  # re-judged stored metrics, no inference


def test_changed_input_invalidates_what_depends_on_it(project):
    run(project, "quantacc.yaml").assert_outcomes(passed=12, skipped=3)
    work = project.path / "work"
    float_mtime = next(work.rglob("float.onnx")).stat().st_mtime_ns
    fixed_mtime = next(work.rglob("fixed.onnx")).stat().st_mtime_ns
    edit(project, "quantacc.yaml", "      weights: int8", "      weights: int8\n      per_channel: true")
    run(project, "quantacc.yaml").assert_outcomes(passed=12, skipped=3)
    assert calls(project) == 4
    assert next(work.rglob("float.onnx")).stat().st_mtime_ns == float_mtime  # the float model did not change
    assert next(work.rglob("fixed.onnx")).stat().st_mtime_ns != fixed_mtime
    fixed_mtime = next(work.rglob("fixed.onnx")).stat().st_mtime_ns
    edit(project, "quantacc.yaml", "      data: data/eval.npz\n", "      data: data/eval.npz\n      limit: 32\n")
    run(project, "quantacc.yaml").assert_outcomes(passed=12, skipped=3)
    assert calls(project) == 6
    assert next(work.rglob("fixed.onnx")).stat().st_mtime_ns == fixed_mtime  # evaluation only: not re-quantized


@pytest.mark.parametrize("victim", ["fixed.onnx", "results.json"])
def test_corrupt_entry_is_detected_and_rebuilt(project, victim):
    run(project, "quantacc.yaml").assert_outcomes(passed=12, skipped=3)
    path = next((project.path / "work").rglob(victim))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    result = run(project, "quantacc.yaml")
    result.assert_outcomes(passed=12, skipped=3)
    assert calls(project) == 4  # rebuilt, not trusted
    assert "QuantaccCacheWarning" in result.stdout.str() and f"{victim} in" in result.stdout.str()
    run(project, "quantacc.yaml").assert_outcomes(passed=12, skipped=3)
    assert calls(project) == 4  # the rebuilt entry is sound


def test_no_cache_and_clear_cache(project):
    run(project, "quantacc.yaml").assert_outcomes(passed=12, skipped=3)
    run(project, "quantacc.yaml", "--quantacc-no-cache").assert_outcomes(passed=12, skipped=3)
    assert calls(project) == 4
    (project.path / "work" / "mine.txt").write_text("the user's file")
    run(project, "quantacc.yaml", "--quantacc-clear-cache").assert_outcomes(passed=12, skipped=3)
    assert calls(project) == 6
    assert (project.path / "work" / "mine.txt").read_text() == "the user's file"


CONCURRENT = textwrap.dedent('''
    import json, os, sys, time
    from pathlib import Path
    from pytest_quantacc.store.cache import evaluate_cached, payload
    from pytest_quantacc.spec.parse import load_spec

    spec, base, barrier = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    mspec = load_spec(spec).models[0]
    (barrier / str(os.getpid())).touch()
    deadline = time.time() + 60
    while len(list(barrier.iterdir())) < 3 and time.time() < deadline:  # start together, imports done
        time.sleep(0.005)
    ev = evaluate_cached(mspec, base, threads=1)
    d = payload(ev)
    d["result"].pop("seconds")
    print(json.dumps({"cache": ev.cache, "result": d["result"]}, sort_keys=True))
''')


def test_concurrent_processes_build_once_and_agree(project):
    """Three real processes start together on a cold cache: one computes, the others wait and reuse."""
    script = project.path / "race.py"
    script.write_text(CONCURRENT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    barrier = project.mkdir("barrier")
    procs = [subprocess.Popen([sys.executable, str(script), str(project.path / "quantacc.yaml"),
                               str(project.path / "work"), str(barrier)], stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(3)]
    outs = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(o["cache"] for o in outs) == ["computed", "reused", "reused"]
    assert calls(project) == 2
    assert outs[0]["result"] == outs[1]["result"] == outs[2]["result"]
    workdir = next((project.path / "work").rglob("checksums.json")).parent
    assert not [p.name for p in workdir.iterdir() if p.name.startswith(".")]  # no temporary leftovers


# ---------------------------------------------------------------------------------------------------- xdist


def test_xdist_two_workers_match_serial_and_work_once(project):
    pytest.importorskip("xdist")
    serial = run(project, ".", "--quantacc-report", "serial.json", "--junitxml", "serial.xml", workdir="w1")
    serial.assert_outcomes(passed=19, skipped=6, xfailed=5)
    assert calls(project) == 4
    # --dist load spreads one model's items over both workers: the second waits on the lock and reuses
    xdist = run(project, ".", "-n", "2", "--quantacc-report", "xdist.json", "--junitxml", "xdist.xml",
                workdir="w2")
    xdist.assert_outcomes(passed=19, skipped=6, xfailed=5)
    assert calls(project) == 8  # each model's inference ran once, not once per worker
    assert report_without_paths(project.path / "serial.json") == report_without_paths(project.path / "xdist.json")

    def cases(name):
        return sorted((c.get("classname"), c.get("name")) for c in ET.parse(project.path / name).getroot()
                      .iter("testcase"))

    assert cases("serial.xml") == cases("xdist.xml")
    summary = xdist.stdout.str()[xdist.stdout.str().index("quantacc summary"):]
    assert summary.count("(quantacc.yaml): PASSED") == 1 and summary.count("(quantacc_outlier.yaml): PASSED") == 1
    assert "accuracy (count.py:top1, logits): float 0.9844, offline 0.9844" in summary


# ---------------------------------------------------------------------------------------------------- baseline


def test_baseline_records_compares_and_reports(project, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    result = run(project, "quantacc.yaml")
    assert "baseline: none recorded (quantacc.baseline.json)" in result.stdout.str()
    run(project, "quantacc.yaml", "--quantacc-baseline-update").assert_outcomes(passed=12, skipped=3)
    path = project.path / "quantacc.baseline.json"
    recorded = json.loads(path.read_text())
    layers = recorded["models"]["digits_cnn"]["float-vs-fixed"]
    assert list(layers) == sorted(layers) and "relu1" in layers and "conv1" not in layers  # conv1 is skipped
    assert all(len(str(v["cos"]).split(".")[-1]) <= 6 for v in layers.values())
    assert path.read_text() == json.dumps(recorded, indent=1, sort_keys=True) + "\n"
    run(project, "quantacc.yaml").assert_outcomes(passed=13, skipped=3)  # + the baseline item

    # relu1 was better before (regressed now), pool worse before (improved now), a layer that is gone (stale)
    layers["relu1"]["rmse"] = layers["relu1"]["rmse"] - 0.02
    layers["pool"]["rmse"] = layers["pool"]["rmse"] + 0.05
    layers["old_conv"] = {"cos": 0.999, "rmse": 0.01}
    path.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
    result = run(project, "quantacc.yaml", "--quantacc-report", "r.json")
    result.assert_outcomes(passed=12, failed=1, skipped=3)
    out = result.stdout.str()
    assert "float-vs-fixed[relu1/Relu]" in out and "got worse than its baseline" in out
    assert "baseline: 1 regressed, 1 improved" in out and "1 stale" in out
    assert "stale (no longer compared): float-vs-fixed: old_conv" in out
    report = json.loads((project.path / "r.json").read_text())["models"][0]
    assert report["status"] == "failed"
    assert [d["layer"] for d in report["baseline"]["regressed"]] == ["relu1"]
    assert [d["layer"] for d in report["baseline"]["improved"]] == ["pool"]
    # a looser tolerance in the spec accepts the change
    edit(project, "quantacc.yaml", "    accuracy:", "    baseline: {tolerance: {rmse: 0.05}}\n    accuracy:")
    run(project, "quantacc.yaml").assert_outcomes(passed=13, skipped=3)


def test_baseline_never_written_in_ci(project, monkeypatch):
    monkeypatch.setenv("CI", "true")
    result = run(project, "quantacc.yaml", "--quantacc-baseline-update")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "refusing to write baselines in CI" in result.stderr.str()
    assert not (project.path / "quantacc.baseline.json").exists()


def test_required_baseline_missing_fails(project):
    edit(project, "quantacc.yaml", "    accuracy:", "    baseline: {required: true}\n    accuracy:")
    result = run(project, "quantacc.yaml")
    result.assert_outcomes(passed=12, failed=1, skipped=3)
    assert "no baseline recorded" in result.stdout.str() and "baseline.required: true" in result.stdout.str()


# ---------------------------------------------------------------------------------------------------- accuracy


def test_example_project_accuracy_item_passes(pytester):
    for sub in ("models", "data"):
        shutil.copytree(EXAMPLE / sub, pytester.path / sub)
    shutil.copy(EXAMPLE / "quantacc.yaml", pytester.path / "quantacc.yaml")
    result = run(pytester, "quantacc.yaml", "--junitxml", "out.xml")
    result.assert_outcomes(passed=12, skipped=3)
    props = junit_props(pytester.path / "out.xml", "accuracy")
    assert props["quantacc.metric"] == "top1" and float(props["quantacc.float_accuracy"]) == pytest.approx(63 / 64)
    assert float(props["quantacc.accuracy_drop"]) <= 0.01


def test_outlier_accuracy_collapses(project):
    edit(project, "quantacc_outlier.yaml", "max_drop: 1.0", "max_drop: 0.01")
    result = run(project, "quantacc_outlier.yaml")
    result.assert_outcomes(passed=6, skipped=3, xfailed=5, failed=1)
    out = result.stdout.str()
    assert "float 0.9844, deployable (offline) 0.0781: drop 0.9062 > max_drop 0.01" in out
    assert "digits_outlier (quantacc_outlier.yaml): FAILED" in out


def test_accuracy_input_errors_name_the_key(project):
    base = (project.path / "quantacc.yaml").read_text()
    base = base[base.index("  - name:"):base.index("    accuracy:")]
    cases = {"no_labels": ("    accuracy: {max_drop: 0.01}", "models[0].accuracy",
                           "needs labels: add evaluation.labels"),
             "no_function": ("    accuracy: {max_drop: 0.01, metric: \"count.py:nothing\"}",
                             "models[1].accuracy.metric",
                             "defines no function nothing"),
             "not_a_metric": ("    accuracy: {max_drop: 0.01, metric: \"count\"}", "models[2].accuracy.metric",
                              "expected top1 or"),
             "no_output": ("    accuracy: {max_drop: 0.01}", "models[3].evaluation.output", "no output 'nope'"),
             "probs": ("    accuracy: {max_drop: 0.01}", "", "")}
    entries = []
    for name, (line, _, _) in cases.items():
        entry = base.replace("name: digits_cnn", f"name: {name}") + line + "\n"
        if name == "no_labels":
            entry = entry.replace("      labels: data/eval_labels.npy\n", "")
        if name in ("no_output", "probs"):
            output = "nope" if name == "no_output" else "probs"
            entry = entry.replace("      labels: data/eval_labels.npy\n",
                                  f"      labels: data/eval_labels.npy\n      output: {output}\n")
        entries.append(entry)
    (project.path / "quantacc.yaml").write_text("quantacc: 1\nmodels:\n" + "".join(entries))
    result = run(project, "quantacc.yaml", "--junitxml", "out.xml")
    out = result.stdout.str()
    for _, key, words in list(cases.values())[:-1]:
        assert f"quantacc.yaml: {key}" in out and words in out, out
    assert "Traceback" not in out
    result.assert_outcomes(passed=34, failed=4, skipped=9)
    probs = [c for c in ET.parse(project.path / "out.xml").getroot().iter("testcase")
             if c.get("name") == "accuracy" and c.get("classname").endswith("probs")]
    props = {p.get("name"): p.get("value") for p in probs[0].iter("property")}
    assert props["quantacc.output"] == "probs" and float(props["quantacc.float_accuracy"]) == pytest.approx(63 / 64)


def test_labels_that_do_not_fit_fail_the_accuracy_item_only(project):
    import numpy as np

    np.save(project.path / "data" / "eval_labels.npy", np.zeros(10, dtype=np.int64))
    result = run(project, "quantacc.yaml")
    result.assert_outcomes(passed=11, failed=1, skipped=3)
    assert "models[0].evaluation.labels: eval_labels.npy holds 10 labels but the evaluation data has 64" in \
        result.stdout.str()


def test_file_digests_are_remembered_by_size_and_modification_time(tmp_path):
    """Warm runs must not re-hash gigabytes of weights and data: a digest is reused while the file's size and
    modification time are unchanged, and recomputed (checked against hashlib) as soon as either changes."""
    import hashlib

    from pytest_quantacc.convert.workdir import file_digest

    f = tmp_path / "weights.data"
    f.write_bytes(b"a" * 1000)
    first = file_digest(f, tmp_path)
    assert first == hashlib.sha256(b"a" * 1000).hexdigest()
    assert json.loads((tmp_path / "digests.json").read_text())[str(f.resolve())][2] == first
    st = f.stat()
    f.write_bytes(b"b" * 1000)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and time: the remembered digest stands
    assert file_digest(f, tmp_path) == first
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert file_digest(f, tmp_path) == hashlib.sha256(b"b" * 1000).hexdigest()
    assert file_digest(f) == hashlib.sha256(b"b" * 1000).hexdigest()  # without a memo: always hashed


def test_sealed_files_are_rehashed_when_their_stamp_changes(tmp_path):
    from pytest_quantacc.store.cache import seal, verify

    work = tmp_path / "m"
    work.mkdir()
    (work / "manifest.json").write_text("{}")
    (work / "fixed.onnx.data").write_bytes(b"x" * 64)
    seal(work)
    verify(work)
    assert (work / "fixed.onnx.data").exists()  # untouched: kept without hashing
    st = (work / "fixed.onnx.data").stat()
    (work / "fixed.onnx.data").write_bytes(b"y" * 64)  # same size, new bytes, a later modification time
    os.utime(work / "fixed.onnx.data", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    with pytest.warns(Warning, match="failed the checksum"):
        verify(work)
    assert not (work / "fixed.onnx.data").exists()


def test_seal_rehashes_changed_files_and_keeps_unchanged_digests(tmp_path):
    import hashlib

    from pytest_quantacc.store.cache import seal

    work = tmp_path / "m"
    work.mkdir()
    (work / "float.onnx.data").write_bytes(b"f" * 64)
    (work / "fixed.onnx.data").write_bytes(b"x" * 64)
    seal(work)
    first = json.loads((work / "checksums.json").read_text())
    st = (work / "fixed.onnx.data").stat()
    (work / "fixed.onnx.data").write_bytes(b"y" * 64)
    os.utime(work / "fixed.onnx.data", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    seal(work)
    second = json.loads((work / "checksums.json").read_text())
    assert second["float.onnx.data"] == first["float.onnx.data"]
    assert second["fixed.onnx.data"][2] == hashlib.sha256(b"y" * 64).hexdigest()
    assert first["fixed.onnx.data"][2] == hashlib.sha256(b"x" * 64).hexdigest()
