"""The same spec and data give bit-identical metrics: across runs, thread counts, processes (different hash
seeds) and pytest-xdist workers. docs/determinism.md says what is pinned and why."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from conftest import write_spec

import corpus
import onnxruntime  # noqa: F401  (imported once here rather than in every pytester run)
from pytest_quantacc import evaluate_model, load_spec


def _fingerprint(result) -> list:
    """Every number a run reports, at full precision."""
    rows = [(c.reference, c.target, r.layer.tensor, r.status, r.summary and tuple(r.summary.mean.items()),
             r.summary and tuple(r.summary.worst.items())) for c in result.comparisons for r in c.layers]
    if result.agreement is not None:
        rows += [(a.tensor, a.max_steps, a.mismatches, tuple(a.histogram.items())) for a in result.agreement.tensors]
    return rows


@pytest.fixture(scope="module")
def detector(tmp_path_factory) -> corpus.CorpusModel:
    return corpus.detection_cnn(tmp_path_factory.mktemp("det"))


@pytest.mark.parametrize("method", ["minmax", "percentile"])
def test_bit_identical_across_thread_counts_and_fresh_conversions(tmp_path, detector, method):
    entry = {"name": "det", "model": str(detector.model), "calibration": {"data": str(detector.calib)},
             "evaluation": {"data": str(detector.eval)}, "quantization": {"method": method}}
    mspec = load_spec(write_spec(tmp_path / "spec.yaml", [entry])).models[0]
    runs = [evaluate_model(mspec, tmp_path / f"work{threads}", threads=threads) for threads in (1, 2, 0)]
    assert all(r.error is None for r in runs)
    first = _fingerprint(runs[0])
    assert all(_fingerprint(r) == first for r in runs[1:])
    fixed = [r.artifacts.fixed_model.read_bytes() for r in runs]
    assert fixed[1] == fixed[0] and fixed[2] == fixed[0]  # a fresh conversion equals the cached one


def _junit_metrics(path) -> dict[str, dict[str, str]]:
    out = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        props = {p.get("name"): p.get("value") for p in case.iter("property") if not p.get("name").startswith(
            "quantacc.seconds")}
        out[case.get("name")] = props
    return out


def test_bit_identical_across_processes_and_xdist(pytester, tmp_path, monkeypatch):
    """A plain run and a ``-n 2`` run, in processes with different hash seeds, report the same numbers."""
    cm = corpus.unnamed_cnn(tmp_path / "m")
    write_spec(pytester.path / "quantacc.yaml", [
        {"name": "cnn", "model": str(cm.model), "calibration": {"data": str(cm.calib)},
         "evaluation": {"data": str(cm.eval)}, "quantization": {"reduce_range": True}}])
    junit = []
    for seed, extra in (("1", ["-p", "no:xdist"]), ("2", ["-n", "2"])):
        monkeypatch.setenv("PYTHONHASHSEED", seed)
        res = pytester.runpytest_subprocess("--quantacc", "quantacc.yaml", "-p", "no:randomly", "-p",
                                            "no:cacheprovider", "--quantacc-workdir", f"w{seed}", "--junitxml",
                                            f"{seed}.xml", *extra)
        assert res.ret == 0, res.stdout.str()
        junit.append(_junit_metrics(pytester.path / f"{seed}.xml"))
    assert len(junit[0]) >= 5 and sum("quantacc.cos" in p for p in junit[0].values()) >= 3
    assert junit[1] == junit[0]
