"""dumps.offline: the board as the offline mode (float vs board per layer, PC offline vs board in steps).

The "board" is played by ONNX Runtime itself: the deployable model of the spec's own conversion, run with every
optimization, its QuantizeLinear outputs dequantized and written as one .npy per layer and sample, the way a
board's per-layer dump arrives. A faithful board agrees bit for bit; one with a planted +3-step error on part of
one tensor fails the gate at exactly that tensor. Float vs board metrics are checked against numpy.
"""
from __future__ import annotations

import json
from pathlib import Path

import foreign_models as fm
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from conftest import write_spec
from pytest_quantacc.engine.run import evaluate_model
from pytest_quantacc.graph.match import match_layers
from pytest_quantacc.spec.parse import load_spec


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("board")
    net = fm.float_net()
    onnx.save(net.model, d / "float.onnx")
    np.savez(d / "calib.npz", x=np.concatenate([s["x"] for s in net.calib]))
    np.savez(d / "eval.npz", x=np.concatenate([s["x"] for s in net.eval]))
    entry = {"name": "net", "model": str(d / "float.onnx"), "calibration": {"data": str(d / "calib.npz")},
             "evaluation": {"data": str(d / "eval.npz")}}
    pc = evaluate_model(load_spec(write_spec(d / "pc.yaml", [entry])).models[0], d / "work")
    assert pc.error is None
    return d, net, entry, pc.artifacts


def play_the_board(art, samples: list[dict], out: Path, planted: str | None = None) -> dict[str, str]:
    """Per-layer dumps of the deployable model: dequantized QuantizeLinear outputs, named by float tensor."""
    fixed = onnx.load(art.fixed_model)
    layers = [lay for lay in match_layers(onnx.load(art.float_model), fixed) if lay.quant_tensor]
    m = onnx.ModelProto()
    m.CopyFrom(fixed)
    names = [lay.quant_tensor for lay in layers]
    m.graph.output.extend(onnx.helper.make_tensor_value_info(
        lay.quant_tensor, onnx.helper.np_dtype_to_tensor_dtype(np.dtype(lay.qparams.dtype)), None) for lay in layers)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for i, s in enumerate(samples):
        folder = out / f"sample_{i}"
        folder.mkdir(parents=True)
        for lay, q in zip(layers, sess.run(names, s)):
            q = q.astype(np.int64)
            if lay.tensor == planted:  # the board's kernel is off by 3 steps on a tenth of the elements
                q = np.where(rng.random(q.shape) < 0.1, q + 3, q)
            scale, zp = lay.qparams.scale[0], lay.qparams.zero_point[0]
            np.save(folder / f"{lay.tensor}.npy", ((q - zp) * np.float32(scale)).astype(np.float32))
    return {lay.tensor: lay.quant_tensor for lay in layers}


def test_faithful_and_planted_boards(setup, pytester):
    d, net, entry, art = setup
    good, bad = d / "good", d / "bad"
    tensors = play_the_board(art, net.eval, good)
    play_the_board(art, net.eval, bad, planted="a")
    spec = write_spec(pytester.path / "quantacc.yaml", [
        {**entry, "name": "good", "dumps": {"offline": {"path": str(good)}}},
        {**entry, "name": "bad", "dumps": {"offline": {"path": str(bad)}}}])
    out = pytester.path / "r.json"
    result = pytester.runpytest("--quantacc", str(spec), "--quantacc-report", str(out), "--quantacc-workdir",
                                str(d / "work"), "-p", "no:randomly", "-rA")
    report = {m["name"]: m for m in json.loads(out.read_text())["models"]}
    g, b = report["good"], report["bad"]
    assert g["status"] == "passed" and b["status"] == "failed", result.stdout.str()
    gate = {m: next(c for c in report[m]["comparisons"] if c["target"] == "board") for m in report}
    assert gate["good"]["reference"] == "offline" and all(t["max_steps"] == 0 for t in gate["good"]["layers"])
    assert {t["tensor"] for t in gate["good"]["layers"]} == set(tensors)
    assert gate["bad"]["status"] == "failed" and gate["bad"]["first_diverging_layer"] == "a"
    planted = next(t for t in gate["bad"]["layers"] if t["tensor"] == "a")
    assert planted["max_steps"] == 3 and 0.08 < planted["mismatch_rate"] < 0.12
    # float vs board per layer, against numpy on the same float tensors and dumps
    board = next(c for c in g["comparisons"] if (c["reference"], c["target"]) == ("float", "offline"))
    measured = [lay for lay in board["layers"] if lay["status"] != "skipped"]
    assert {lay["tensor"] for lay in measured} == set(tensors)
    fl = fm.run_tensors(net.model, sorted(tensors), net.eval)
    for lay in measured:
        dumps = [np.load(good / f"sample_{i}" / f"{lay['tensor']}.npy") for i in range(len(net.eval))]
        f = [fl[i][lay["tensor"]] for i in range(len(net.eval))]
        assert lay["cos"] == pytest.approx(np.mean([fm.np_cos(a, q) for a, q in zip(f, dumps)]), abs=1e-6)
        assert lay["rmse"] == pytest.approx(np.mean([fm.np_rel_rmse(a, q) for a, q in zip(f, dumps)]), abs=1e-6)
    result.stdout.fnmatch_lines(["*PASSED*good::float-vs-board[[]a[]]*", "*PASSED*good::offline-vs-board*",
                                 "*FAILED*bad::offline-vs-board*"])
    assert "bad: offline vs board: worst tensor a:" in result.stdout.str()


def test_board_spec_rules(setup, tmp_path):
    d, _, entry, _ = setup
    spec = load_spec(write_spec(tmp_path / "q.yaml", [
        {**entry, "dumps": {"offline": {"path": str(d)}}},
        {**entry, "name": "b", "dumps": {"offline": {"path": str(d)}}, "modes": ["float", "fixed"]},
        {**entry, "name": "c", "dumps": {"offline": {"path": str(d)}, "fixed": {"path": str(d)}}}]))
    assert spec.models[0].modes == ("float", "offline")
    why = {b.name: b.error.problem for b in spec.broken}
    assert "the modes are float and offline" in why["b"] and "one mode comes from dumps at a time" in why["c"]


def test_changed_dumps_are_not_served_from_the_cache(setup, tmp_path):
    """The cache key covers every dump file (a re-run with the same spec but a re-flashed board's dumps must
    measure again; before, dumps were not in the key and stale metrics were re-judged)."""
    from pytest_quantacc.store.cache import evaluate_cached

    d, net, entry, art = setup
    board = tmp_path / "board"
    play_the_board(art, net.eval, board)
    (mspec,) = load_spec(write_spec(tmp_path / "q.yaml", [{**entry, "dumps": {"offline": {"path": str(board)}}}])
                         ).models
    assert evaluate_cached(mspec, tmp_path / "work").cache == "computed"
    assert evaluate_cached(mspec, tmp_path / "work").cache == "reused"
    f = board / "sample_0" / "a.npy"
    np.save(f, np.load(f) * 2)
    again = evaluate_cached(mspec, tmp_path / "work")
    assert again.cache == "computed" and again.result.agreement.first_failing.tensor == "a"
