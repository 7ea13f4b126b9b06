"""The pipeline check: preprocessing folded into the float model, mode original, and the suspects it names.

The model is the example's color_net (3 channels, NCHW, trained on RGB normalised with ImageNet's mean/std);
the raw frames are uint8 BGR NHWC. Expected values come from hand-written numpy preprocessing here, not from
pytest_quantacc.convert.fold.reference.
"""

from __future__ import annotations

import json
import shutil
import textwrap

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from conftest import EXAMPLE, write_spec
from pytest_quantacc.convert.prepare import model_inputs, prepare_float
from pytest_quantacc.engine.pipeline_check import check_pipeline
from pytest_quantacc.samples import load_samples
from pytest_quantacc.spec.parse import load_spec

PIPE = EXAMPLE / "pipeline"
MEAN = [123.675, 116.28, 103.53]
STD = [58.395, 57.12, 57.375]


def frames() -> np.ndarray:
    return np.load(PIPE / "raw_eval.npz")["image"]  # [16, 1, 8, 8, 3] uint8 BGR


def color_net(x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(PIPE / "color_net.onnx"), providers=["CPUExecutionProvider"])
    return sess.run(None, {"image": x.astype(np.float32)})[0]


def entry(preprocess: dict, data=None, **extra) -> dict:
    e = {"name": "color", "model": str(PIPE / "color_net.onnx"),
         "calibration": {"data": str(data or PIPE / "raw_calib.npz")},
         "evaluation": {"data": str(data or PIPE / "raw_eval.npz")}, "preprocess": preprocess}
    e.update(extra)
    return e


def folded_session(tmp_path, preprocess: dict, data=None):
    spec = load_spec(write_spec(tmp_path / "spec.yaml", [entry(preprocess, data)]))
    assert not spec.broken, spec.broken[0].error
    path = prepare_float(spec.models[0], tmp_path / "work")
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]), spec.models[0], path


def test_folded_bgr_nhwc_uint8_matches_hand_preprocessing(tmp_path):
    sess, _, _ = folded_session(tmp_path, {"layout": "NHWC", "color": "BGR", "model_color": "RGB",
                                           "mean": MEAN, "std": STD})
    assert sess.get_inputs()[0].type == "tensor(uint8)" and sess.get_inputs()[0].shape == [1, 8, 8, 3]
    for f in frames()[:4]:
        rgb = f[..., ::-1].astype(np.float32).transpose(0, 3, 1, 2)
        want = color_net((rgb - np.reshape(MEAN, (1, 3, 1, 1))) / np.reshape(STD, (1, 3, 1, 1)))
        np.testing.assert_allclose(sess.run(None, {"image": f})[0], want, rtol=1e-5, atol=1e-6)


def test_folded_nchw_float_input_with_scale(tmp_path):
    raw = frames().transpose(0, 1, 4, 2, 3).astype(np.float32)  # NCHW float frames, treated as RGB
    np.savez(tmp_path / "raw.npz", image=raw)
    sess, _, path = folded_session(tmp_path, {"input": "float32", "layout": "NCHW", "mean": 127.5,
                                              "scale": 0.0078125}, tmp_path / "raw.npz")
    ops = [n.op_type for n in onnx.load(str(path)).graph.node[:2]]
    assert ops == ["Sub", "Mul"]  # no Cast, Transpose or Gather needed
    for x in raw[:4]:
        np.testing.assert_allclose(sess.run(None, {"image": x})[0], color_net((x - 127.5) * 0.0078125),
                                   rtol=1e-5, atol=1e-6)


HOOKS = {
    "ok": "return nchw(frame[..., ::-1]) ",
    "normalisation applied twice": "return norm(norm(nchw(frame[..., ::-1]), raw=False), raw=False)",
    "normalisation not applied (raw pixels fed)": (
        "return np.transpose(frame[..., ::-1], (0, 3, 1, 2)).astype(np.float32)"),
    "RGB/BGR channel order swapped": "return nchw(frame)",
    "NCHW/NHWC layout swapped (buffer reshaped, not transposed)": "return norm(frame[..., ::-1].reshape(1, 3, 8, 8))",
    "mean and std swapped": "return (np.transpose(frame[..., ::-1], (0, 3, 1, 2)) - STD) / MEAN",
    "pixels scaled to 0..1 (divided by 255) before normalisation": (
        "return norm(np.transpose(frame[..., ::-1], (0, 3, 1, 2)) / 255.0)"),
    "pixels scaled by 255 (0..1 data treated as 0..255)": (
        "return norm(np.transpose(frame[..., ::-1], (0, 3, 1, 2)) * 255.0)"),
}


def write_hooks(folder) -> None:
    body = "\n\n".join(f"def hook_{i}(frame):\n    {code}" for i, code in enumerate(HOOKS.values()))
    (folder / "hooks.py").write_text(textwrap.dedent(f"""
        import numpy as np
        MEAN = np.array({MEAN}, np.float32).reshape(1, 3, 1, 1)
        STD = np.array({STD}, np.float32).reshape(1, 3, 1, 1)

        def norm(x, raw=True):
            return (x.astype(np.float32) - MEAN) / STD

        def nchw(frame):
            return norm(np.transpose(frame, (0, 3, 1, 2)))

    """) + body + "\n")


PREPROCESS = {"layout": "NHWC", "color": "BGR", "model_color": "RGB", "mean": MEAN, "std": STD}


@pytest.mark.parametrize("index, mistake", list(enumerate(HOOKS)))
def test_each_usual_mistake_is_named(tmp_path, index, mistake):
    write_hooks(tmp_path)
    _, mspec, path = folded_session(tmp_path, {**PREPROCESS, "hook": f"hooks.py:hook_{index}"})
    evals = load_samples(mspec.evaluation.path, 6, model_inputs(path), mspec.spec_path, "k")
    result = check_pipeline(mspec, path, evals)
    if mistake == "ok":
        assert result.passed and not result.suspects
        assert min(s["cos"] for _, s in result.outputs) > 0.999999
        return
    assert not result.passed
    fits = [s.mistake for s in result.suspects if s.fits]
    assert fits and fits[0] == mistake, result.suspects


@pytest.mark.parametrize("preprocess, modes, expected", [
    ({"mean": MEAN}, ["original", "float"], "mode 'original' needs preprocess.hook"),
    ({"hook": "hooks.py"}, ["original", "float"], "expected 'module.py:function'"),
    ({"hook": "nowhere.py:f"}, ["original", "float"], "models[0].preprocess.hook: file not found"),
    ({"std": [1], "scale": [1]}, None, "give std (x - mean) / std or scale"),
    ({"std": [1, 0, 1]}, None, "must not be zero"),
    ({"color": "BRG"}, None, "'BRG' is not one of RGB, BGR"),
    ({"hook": "hooks.py:hook_0"}, ["original", "fixed"], "mode 'original' is compared with mode 'float'"),
])
def test_pipeline_spec_errors(tmp_path, preprocess, modes, expected):
    write_hooks(tmp_path)
    extra = {"modes": modes} if modes else {}
    spec = load_spec(write_spec(tmp_path / "spec.yaml", [entry(preprocess, **extra)]))
    assert len(spec.broken) == 1 and expected in spec.broken[0].error.message


@pytest.mark.parametrize("preprocess, hook, expected", [
    ({"mean": [1, 2]}, None, "models[0].preprocess: mean has 2 values, but input image has 3 channels"),
    (PREPROCESS, "def bad(frame):\n    raise ValueError('no camera')", "bad raised on sample 0: ValueError: no camera"),
    (PREPROCESS, "def bad(frame):\n    return frame",
     "the original model rejects what bad returned (shape [1, 8, 8, 3])"),
    (PREPROCESS, "syntax error here", "cannot import hook.py: SyntaxError"),
])
def test_pipeline_input_problems_fail_the_model(tmp_path, preprocess, hook, expected):
    from pytest_quantacc.engine.run import evaluate_model

    extra = {}
    if hook is not None:
        (tmp_path / "hook.py").write_text(hook + "\n")
        preprocess = {**preprocess, "hook": "hook.py:bad"}
        extra["modes"] = ["original", "float"]
    spec = load_spec(write_spec(tmp_path / "spec.yaml", [entry(preprocess, **extra)]))
    result = evaluate_model(spec.models[0], tmp_path / "work")
    assert result.status == "failed" and expected in result.error.message


def test_plugin_pipeline_example_and_the_planted_bgr_swap(pytester):
    shutil.copytree(PIPE, pytester.path / "pipeline")
    shutil.copy(EXAMPLE / "quantacc_pipeline.yaml", pytester.path)
    report = pytester.path / "r.json"
    result = pytester.runpytest("--quantacc", "quantacc_pipeline.yaml", "pipeline/bgr_swap.yaml", "-p", "no:randomly",
                                "--quantacc-workdir", str(pytester.path / "w"), "--quantacc-report", str(report))
    result.stdout.fnmatch_lines([
        "*color_net_bgr_bug::original-vs-float*",
        "what fits: your preprocessing behaves like the spec's preprocessing with this mistake:",
        "  - RGB/BGR channel order swapped (cos 1.000000)",
    ])
    outcomes = result.parseoutcomes()
    assert outcomes["failed"] == 1  # only the buggy spec's original-vs-float
    models = {m["name"]: m for m in json.loads(report.read_text())["models"]}
    assert models["color_net"]["status"] == "passed" and models["color_net"]["pipeline"]["status"] == "passed"
    bug = models["color_net_bgr_bug"]["pipeline"]
    assert bug["status"] == "failed" and bug["suspects"][0] == {
        "mistake": "RGB/BGR channel order swapped", "cos": pytest.approx(1.0, abs=1e-6), "fits": True}
    # Warm cache: the hook is the user's code, so the pipeline check runs again and gives the same outcome.
    again = pytester.runpytest("--quantacc", "quantacc_pipeline.yaml", "pipeline/bgr_swap.yaml", "-p", "no:randomly",
                               "--quantacc-workdir", str(pytester.path / "w"))
    assert again.parseoutcomes() == outcomes
    pytest.importorskip("xdist")  # results travel from the workers with their pipeline check
    workers = pytester.runpytest("--quantacc", "quantacc_pipeline.yaml", "pipeline/bgr_swap.yaml", "-p", "no:randomly",
                                 "--quantacc-workdir", str(pytester.path / "w"), "--quantacc-report", "x.json",
                                 "-n", "2")
    assert workers.parseoutcomes() == outcomes
    assert {m["name"]: m["pipeline"] for m in json.loads((pytester.path / "x.json").read_text())["models"]} == {
        name: m["pipeline"] for name, m in models.items()}
