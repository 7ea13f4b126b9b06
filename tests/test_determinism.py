"""The same spec and data give bit-identical metrics: across runs, thread counts, processes (different hash
seeds) and pytest-xdist workers. docs/determinism.md says what is pinned and why."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import corpus
import onnxruntime  # noqa: F401  (imported once here rather than in every pytester run)
import pytest

from conftest import write_spec
from pytest_quantacc import evaluate_model, load_spec
from pytest_quantacc.report.junit import junit_properties


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


def _junit_metrics(path) -> dict[tuple[str, str], dict[str, str]]:
    """(comparison kind, tensor) -> the layer item's quantacc.* properties (timings left out)."""
    out = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        if "quantacc.tensor" in props and "quantacc.cos" in props:
            out[(case.get("name").split("[")[0], props["quantacc.tensor"])] = props
    return out


def test_bit_identical_in_xdist_workers(pytester, tmp_path, monkeypatch):
    """``-n 2`` runs the model in worker processes with another hash seed, sharing one work folder: every
    layer item reports exactly what this process computes."""
    cm = corpus.unnamed_cnn(tmp_path / "m")
    entry = {"name": "cnn", "model": str(cm.model), "calibration": {"data": str(cm.calib)},
             "evaluation": {"data": str(cm.eval)}, "quantization": {"reduce_range": True}}
    here = evaluate_model(load_spec(write_spec(tmp_path / "spec.yaml", [entry])).models[0], tmp_path / "w")
    expected = {(f"{c.reference}-vs-{c.target}", r.layer.tensor): dict(junit_properties(r))
                for c in here.comparisons for r in c.layers if r.summary is not None}
    write_spec(pytester.path / "quantacc.yaml", [entry])
    monkeypatch.setenv("PYTHONHASHSEED", "7")
    res = pytester.runpytest_subprocess("--quantacc", "quantacc.yaml", "-p", "no:randomly", "-p", "no:cacheprovider",
                                        "--quantacc-workdir", "w", "--junitxml", "out.xml", "-n", "2")
    assert res.ret == 0, res.stdout.str()
    got = _junit_metrics(pytester.path / "out.xml")
    assert len(got) >= 4 and set(got) <= set(expected)
    for key, props in got.items():
        assert props == {k: str(v) for k, v in expected[key].items()}, key


def test_metrics_do_not_depend_on_blas_threads(tmp_path):
    """The metric sums avoid BLAS, whose thread count (set per machine) changes the order of summation."""
    script = ("import numpy as np; from pytest_quantacc.engine.metrics import tensor_metrics; "
              "r = np.random.default_rng(0); f = r.standard_normal(300_001); "
              "q = f + r.standard_normal(300_001) * 1e-2; "
              "print(repr(sorted(tensor_metrics(f, q).items())))")
    outs = []
    for threads in ("1", "2", "8"):
        env = {**os.environ, "OPENBLAS_NUM_THREADS": threads, "OMP_NUM_THREADS": threads,
               "PYTHONPATH": os.pathsep.join(sys.path)}
        outs.append(subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                                   check=True).stdout)
    assert outs[0] and outs[1] == outs[0] and outs[2] == outs[0]
