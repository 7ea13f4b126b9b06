"""Models stored with external data: the whole engine on side files, never reading the weights into Python.

The engine's external-data path is chosen by "the model has external data", not by its size, so these small
models (weights of 83-332 KB per tensor, above the 64 KiB inlining limit) run the code a model beyond
protobuf's 2 GB runs (bench/bench_large.py runs a 2.2 GB one). Every result is checked against the same
model saved as one file, which takes the plain path: metrics must agree to 1e-9.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import corpus
import numpy as np
import onnx
import pytest
import zoo
from onnx import helper

from conftest import write_spec
from pytest_quantacc import evaluate_model, load_spec
from pytest_quantacc.graph.extdata import INLINE_BYTES
from pytest_quantacc.remedy.search import deepen
from pytest_quantacc.store.cache import QuantaccCacheWarning, evaluate_cached

CHANNELS = [3, 96, 96, 96, 96]
HW = 8


def _wide_cnn(dest: Path, outlier: bool, channels: list[int] = CHANNELS, opset: int = zoo.OPSET
              ) -> tuple[Path, Path, Path]:
    """Conv3x3+Relu layers of 96 channels (332 KB of float, 83 KB of int8 weights each), GAP, Gemm; saved twice:
    as one file and with external data.

    ``outlier`` plants zoo.outlier_channel_cnn's fault: output channel 0 of conv2 x1000, the conv3 weights
    reading it /1000 (float function unchanged, per-tensor uint8 range of relu2 ruined; relu3 fails).
    """
    rng = np.random.default_rng(7)
    convs, fc = zoo._cnn_params(rng, channels)
    if outlier:
        convs[1][0][0] *= 1000.0
        convs[1][1][0] *= 1000.0
        convs[2][0][:, 0] /= 1000.0
    graph = zoo._cnn_graph("wide_cnn", convs, fc, hw=HW)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = zoo.IR_VERSION
    dest.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(dest / "single.onnx"))
    (dest / "ext").mkdir(exist_ok=True)
    onnx.save_model(model, str(dest / "ext" / "model.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="model.weights", size_threshold=0)
    images = zoo._images(31, 12, hw=HW)
    np.savez(dest / "calib.npz", input=images[:6])
    np.savez(dest / "eval.npz", input=images[6:])
    return dest / "single.onnx", dest / "ext" / "model.onnx", dest


@pytest.fixture(scope="module")
def healthy(tmp_path_factory):
    return _wide_cnn(tmp_path_factory.mktemp("healthy"), outlier=False)


@pytest.fixture(scope="module")
def shallow(tmp_path_factory):
    return _wide_cnn(tmp_path_factory.mktemp("shallow"), outlier=False, channels=CHANNELS[:3])


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    return _wide_cnn(tmp_path_factory.mktemp("faulty"), outlier=True)


def _spec(tmp_path: Path, model: Path, data: Path, name: str, **extra):
    entry = {"name": name, "model": str(model), "calibration": {"data": str(data / "calib.npz")},
             "evaluation": {"data": str(data / "eval.npz")}, "modes": ["float", "fixed", "offline"], **extra}
    return load_spec(write_spec(tmp_path / f"{name}.yaml", [entry])).models[0]


def _metrics(result) -> dict:
    out = {}
    for c in result.comparisons:
        for r in c.layers:
            if r.summary is not None:
                out[(c.target, r.layer.tensor, "all")] = (r.summary["cos"], r.summary["rmse"])
            if r.own is not None:
                out[(c.target, r.layer.tensor, "own")] = (r.own["cos"], r.own["rmse"])
    for a in result.agreement.tensors:
        out[("agreement", a.tensor)] = (a.mismatch_rate, a.max_steps)
    return out


def _assert_same(ext, single) -> None:
    a, b = _metrics(ext), _metrics(single)
    assert a.keys() == b.keys() and a
    for k in a:
        assert a[k] == pytest.approx(b[k], abs=1e-9), k


def _assert_external(path: Path) -> None:
    """The artifact's weights are in ``<artifact>.data`` beside it; the graph file itself is small."""
    side = path.with_name(path.name + ".data")
    graph = onnx.load(str(path), load_external_data=False)
    locations = {e.value for t in graph.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {side.name}, path
    assert side.stat().st_size >= 96 * 96 * 9  # at least the int8 weights of a 96->96 conv
    assert path.stat().st_size < 20_000, path  # graph and inlined scales only
    assert all(len(t.raw_data) <= INLINE_BYTES for t in graph.graph.initializer)


# Entropy's threshold search costs ~1 s per calibrated tensor: two convs, their tensors only.
@pytest.mark.parametrize("quantization", [{}, {"method": "entropy", "exclude_op_types": ["GlobalAveragePool",
                                                                                         "Flatten", "Gemm"]},
                                          {"method": "percentile"}, {"per_channel": True}],
                         ids=["minmax", "entropy", "percentile", "per_channel"])
def test_external_data_model_matches_the_same_model_in_one_file(tmp_path, healthy, shallow, quantization):
    single, ext, data = shallow if quantization.get("method") in ("entropy", "percentile") else healthy
    r_ext = evaluate_model(_spec(tmp_path, ext, data, "ext", quantization=quantization), tmp_path / "w")
    r_one = evaluate_model(_spec(tmp_path, single, data, "one", quantization=quantization), tmp_path / "w")
    assert r_ext.error is None and r_one.error is None, (r_ext.error, r_one.error)
    assert r_ext.quantized_layers == r_one.quantized_layers > 0
    _assert_same(r_ext, r_one)
    art = r_ext.artifacts
    for path in (art.float_model, art.fixed_model, art.offline_model):
        _assert_external(path)
    # The one-file model takes the plain path: no side files.
    assert not list(r_one.artifacts.workdir.glob("*.data"))
    # shape inference ran on the weightless graph (it silently gives nothing on a > 2 GB proto)
    assert onnx.load(str(art.float_model), load_external_data=False).graph.value_info
    # the user's files are not touched
    assert sorted(p.name for p in ext.parent.iterdir()) == ["model.onnx", "model.weights"]


def test_cache_is_reused_and_a_deleted_or_corrupt_side_file_is_rebuilt(tmp_path, healthy):
    single, ext, data = healthy
    mspec = _spec(tmp_path, ext, data, "ext")
    first = evaluate_cached(mspec, tmp_path / "w")
    assert first.cache == "computed" and first.result.error is None, first.result.error
    art = first.result.artifacts
    assert evaluate_cached(mspec, tmp_path / "w").cache == "reused"

    side = art.fixed_model.with_name("fixed.onnx.data")
    side.unlink()
    with pytest.warns(QuantaccCacheWarning, match="fixed.onnx.data"):
        again = evaluate_cached(mspec, tmp_path / "w")
    assert again.cache == "computed" and side.is_file()
    _assert_same(again.result, first.result)

    flipped = bytearray(art.float_model.with_name("float.onnx.data").read_bytes())
    flipped[100] ^= 0xFF
    art.float_model.with_name("float.onnx.data").write_bytes(bytes(flipped))
    with pytest.warns(QuantaccCacheWarning, match="float.onnx.data"):
        rebuilt = evaluate_cached(mspec, tmp_path / "w")
    assert rebuilt.cache == "computed"
    _assert_same(rebuilt.result, first.result)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert evaluate_cached(mspec, tmp_path / "w").cache == "reused"


def test_engine_rebuilds_a_missing_side_file_without_the_cache_layer(tmp_path, healthy):
    single, ext, data = healthy
    mspec = _spec(tmp_path, ext, data, "ext")
    first = evaluate_model(mspec, tmp_path / "w")
    art = first.artifacts
    for name in ("float.onnx.data", "offline.onnx.data"):
        (art.workdir / name).unlink()
    second = evaluate_model(mspec, tmp_path / "w")
    assert second.error is None, second.error
    assert (art.workdir / "float.onnx.data").is_file() and (art.workdir / "offline.onnx.data").is_file()
    _assert_same(second, first)


def test_planted_fault_diagnosis_and_remedy_with_external_data(tmp_path, faulty):
    single, ext, data = faulty
    results = {}
    for name, model in (("ext", ext), ("one", single)):
        result = deepen(evaluate_model(_spec(tmp_path, model, data, name), tmp_path / "w"), attempts=8)
        assert result.error is None, result.error
        results[name] = result
    _assert_same(results["ext"], results["one"])
    d_ext = results["ext"].comparison("float", "fixed").diagnosis
    d_one = results["one"].comparison("float", "fixed").diagnosis
    assert d_ext.layer == d_one.layer == "relu3"
    assert any(k[2] == "own" for k in _metrics(results["ext"]) if len(k) == 3)  # the own-error pass ran
    # root-cause statistics read the weights of conv3 (and conv2) from the side files
    weights = [s for s in d_ext.stats if "weights" in s.role]
    assert weights and [s.as_json() for s in d_ext.stats] == [s.as_json() for s in d_one.stats]
    assert d_ext.remedy is not None and d_ext.remedy == d_one.remedy
    assert [a.result_json() for a in d_ext.attempts] == [a.result_json() for a in d_one.attempts]
    # attempts quantize the one float.onnx into their own folders: no copy of its side file
    workdir = results["ext"].artifacts.workdir
    subs = list((workdir / "remedies").iterdir())
    assert subs and not list((workdir / "remedies").rglob("float.onnx*"))
    for sub in subs:
        _assert_external(sub / "fixed.onnx")


def test_preprocess_folding_with_external_data(tmp_path, healthy):
    """Deployment preprocessing is folded in front of a graph whose weights stay in the user's side file."""
    single, ext, data = healthy
    (tmp_path / "prep.py").write_text("def preprocess(raw):\n    return (raw - 0.5) / 2.0\n")
    pre = {"input": "float32", "layout": "NCHW", "model_layout": "NCHW", "mean": [0.5] * 3, "std": [2.0] * 3}
    # mode original: the user's graph runs with ONNX Runtime reading its weights from the user's side file
    r_ext = evaluate_model(_spec(tmp_path, ext, data, "ext", preprocess={**pre, "hook": "prep.py:preprocess"},
                                 modes=["original", "float", "fixed"]), tmp_path / "w")
    r_one = evaluate_model(_spec(tmp_path, single, data, "one", preprocess=pre, modes=["float", "fixed"]),
                           tmp_path / "w")
    assert r_ext.error is None and r_one.error is None, (r_ext.error, r_one.error)
    a = {r.layer.tensor: r.summary for r in r_ext.comparisons[0].layers if r.summary}
    b = {r.layer.tensor: r.summary for r in r_one.comparisons[0].layers if r.summary}
    assert a.keys() == b.keys() and all(a[k]["cos"] == pytest.approx(b[k]["cos"], abs=1e-9) for k in a)
    _assert_external(r_ext.artifacts.float_model)
    assert r_ext.pipeline is not None and r_ext.pipeline.passed


def test_plugin_runs_an_external_data_model(pytester, healthy):
    single, ext, data = healthy
    work = pytester.path / "m"
    shutil.copytree(ext.parent, work)
    write_spec(pytester.path / "quantacc.yaml", [
        {"name": "ext", "model": str(work / "model.onnx"), "calibration": {"data": str(data / "calib.npz")},
         "evaluation": {"data": str(data / "eval.npz")}, "modes": ["float", "fixed", "offline"]}])
    result = pytester.runpytest("--quantacc", "quantacc.yaml", "-p", "no:randomly")
    outcomes = result.parseoutcomes()
    assert result.ret == 0 and outcomes["passed"] > 0 and "failed" not in outcomes
    sides = {p.name for p in pytester.path.rglob("*.onnx.data")}
    assert sides == {"float.onnx.data", "fixed.onnx.data", "offline.onnx.data"}


def test_old_opset_is_upgraded_on_the_weightless_graph(tmp_path):
    """onnx's version converter runs on float.onnx's graph without its weights; they stay external."""
    single, ext, data = _wide_cnn(tmp_path / "m", outlier=False, channels=CHANNELS[:3], opset=11)
    per_channel = {"per_channel": True}
    r_ext = evaluate_model(_spec(tmp_path, ext, data, "ext", quantization=per_channel), tmp_path / "w")
    r_one = evaluate_model(_spec(tmp_path, single, data, "one", quantization=per_channel), tmp_path / "w")
    assert r_ext.error is None and r_one.error is None, (r_ext.error, r_one.error)
    graph = onnx.load(str(r_ext.artifacts.float_model), load_external_data=False)
    assert graph.opset_import[0].version >= 13
    _assert_external(r_ext.artifacts.float_model)
    _assert_same(r_ext, r_one)


def test_quantizer_failure_is_explained_with_external_data(tmp_path):
    """The fill-value explanation runs the float graph with ONNX Runtime reading the weights from the side file."""
    cm = corpus.masked_attention(tmp_path / "m", d=160)  # 100 KB projections: external in float.onnx
    ext = tmp_path / "m" / "ext" / "masked.onnx"
    ext.parent.mkdir()
    onnx.save_model(onnx.load(str(cm.model)), str(ext), save_as_external_data=True, location="masked.weights",
                    size_threshold=0)
    entry = {"name": "mask", "model": str(ext), "calibration": {"data": str(cm.calib)},
             "evaluation": {"data": str(cm.eval)}, "quantization": {"method": "entropy"}}
    mspec = load_spec(write_spec(tmp_path / "mask.yaml", [entry])).models[0]
    result = evaluate_model(mspec, tmp_path / "w")
    assert result.error is not None
    assert "ONNX Runtime's quantizer failed" in result.error.message
    assert "ext_mask (node mask_fill_min, |x| up to 3.4e+38)" in result.error.message
    _assert_external(next((tmp_path / "w").rglob("float.onnx")))


def test_missing_or_truncated_user_side_file_is_an_input_error(tmp_path, healthy):
    single, ext, data = healthy
    model = tmp_path / "m" / "model.onnx"
    model.parent.mkdir()
    shutil.copy(ext, model)
    mspec = _spec(tmp_path, model, data, "broken")
    result = evaluate_model(mspec, tmp_path / "w")
    assert result.error.message == (
        f"{mspec.spec_path}: models[0].model: model.onnx refers to external data files that are missing or "
        f"shorter than its tensors need (model.weights, looked up in {model.parent})")
    (model.parent / "model.weights").write_bytes((ext.parent / "model.weights").read_bytes()[:1000])
    assert "missing or shorter" in evaluate_model(mspec, tmp_path / "w").error.message
