"""The dump backend (vendor per-layer dumps) and the command backend (a real subprocess writes them).

The dumps are the example project's: make_dumps.py plays a vendor simulator (NHWC, channels padded to 16,
uint8, names ``000_relu1_out``, qparams.json). Expected metrics are recomputed here independently from the
files, with numpy and a plain ONNX Runtime session.
"""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from conftest import EXAMPLE, write_spec
from pytest_quantacc.engine.run import evaluate_model
from pytest_quantacc.report.jsonreport import model_json
from pytest_quantacc.spec.parse import load_spec

NAMES = {r"re:\d{3}_(.+)": r"\1"}
N = 16


@pytest.fixture
def dumps(tmp_path):
    """A writable copy of the example dumps."""
    dest = tmp_path / "dumps"
    shutil.copytree(EXAMPLE / "dumps" / "fixed", dest)
    return dest


def entry(dumps_cfg: dict, **extra) -> dict:
    e = {"name": "digits", "model": str(EXAMPLE / "models" / "digits_cnn.onnx"),
         "calibration": {"data": str(EXAMPLE / "data" / "calib.npz")},
         "evaluation": {"data": str(EXAMPLE / "data" / "eval.npz"), "limit": N},
         "dumps": {"fixed": dumps_cfg}}
    e.update(extra)
    return e


def vendor(dumps, **over) -> dict:
    cfg = {"path": str(dumps), "names": NAMES, "layout": "nhwc", "crop_channels": True,
           "dequantize": {"file": str(dumps / "qparams.json")}}
    cfg.update(over)
    return cfg


def evaluate(tmp_path, model_entry: dict):
    spec = load_spec(write_spec(tmp_path / "spec.yaml", [model_entry]))
    assert not spec.broken, spec.broken
    return evaluate_model(spec.models[0], tmp_path / "work")


def float_values(tensor: str) -> list[np.ndarray]:
    model = onnx.load(str(EXAMPLE / "models" / "digits_cnn.onnx"))
    model.graph.output.append(helper.make_empty_tensor_value_info(tensor))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.load(EXAMPLE / "data" / "eval.npz")["input"][:N]
    return [sess.run([tensor], {"input": x[i:i + 1]})[0] for i in range(N)]


def test_vendor_dumps_match_an_independent_computation(tmp_path, dumps):
    result = evaluate(tmp_path, entry(vendor(dumps)))
    assert result.error is None and result.status == "passed"
    fx = result.comparison("float", "fixed")
    qp = json.loads((dumps / "qparams.json").read_text())["001_relu2_out"]
    cos = []
    for i, f in enumerate(float_values("relu2_out")):
        q = np.load(dumps / f"sample_{i}" / "001_relu2_out.npy")  # [1, 8, 8, 16] uint8, 16 real channels
        deq = (np.transpose(q, (0, 3, 1, 2)).astype(np.float64) - qp["zero_point"]) * qp["scale"]
        cos.append(float(np.sum(f * deq) / (np.linalg.norm(f) * np.linalg.norm(deq))))
    assert fx.get("relu2_out").summary["cos"] == pytest.approx(np.mean(cos), abs=1e-6)
    # fc2's 10 logits were padded to 16 and cropped back
    assert fx.get("logits").summary.samples == N
    skipped = {r.layer.name: r.reason for r in fx.layers if r.status == "skipped"}
    assert set(skipped) == {"conv1", "conv2", "fc1"}  # the simulator fused them with their Relu
    assert all("no dumped tensor" in why for why in skipped.values())


def test_a_broken_dumped_layer_fails_and_is_first_diverging(tmp_path, dumps):
    rng = np.random.default_rng(0)
    for i in range(N):
        f = dumps / f"sample_{i}" / "004_relu3_out.npy"
        np.save(f, rng.integers(0, 255, np.load(f).shape).astype(np.uint8))
    result = evaluate(tmp_path, entry(vendor(dumps)))
    fx = result.comparison("float", "fixed")
    assert fx.first_diverging.layer.name == "relu3"
    assert fx.get("relu3_out").status == "failed" and fx.get("relu2_out").status == "passed"
    assert fx.diagnosis is not None and fx.diagnosis.layer == "relu3"
    assert any("in the toolchain, raise relu3" in t for t in fx.diagnosis.todo)
    known = evaluate(tmp_path, entry(vendor(dumps), known_bad=[{"layer": "relu3", "reason": "sim bug"}]))
    assert known.comparison("float", "fixed").get("relu3_out").status == "xfailed"


def test_npz_format_float_dumps_named_by_node(tmp_path, dumps):
    """One .npz per sample, float32 NCHW values, names that are node names or globs."""
    out = tmp_path / "npz"
    out.mkdir()
    qps = json.loads((dumps / "qparams.json").read_text())
    for i in range(N):
        arrays = {}
        for f in (dumps / f"sample_{i}").glob("*.npy"):
            q = np.load(f)
            q = np.moveaxis(q, -1, 1) if q.ndim >= 3 else q
            deq = ((q.astype(np.float32) - qps[f.stem]["zero_point"]) * qps[f.stem]["scale"]).astype(np.float32)
            arrays[f.stem] = deq
        np.savez(out / f"s{i}.npz", **arrays)
    names = {"000_*": "relu1", "001_*": "relu2", r"re:\d{3}_(.+)": r"\1"}  # node name, glob, regex
    result = evaluate(tmp_path, entry({"path": str(out), "format": "npz", "names": names, "crop_channels": True}))
    assert result.status == "passed", result.error
    ref = evaluate(tmp_path / "b", entry(vendor(dumps)))
    for tensor in ("relu1_out", "relu2_out", "logits"):
        assert result.comparison("float", "fixed").get(tensor).summary["cos"] == pytest.approx(
            ref.comparison("float", "fixed").get(tensor).summary["cos"], abs=1e-6)


def test_a_wrong_scale_is_pointed_at(tmp_path, dumps):
    qp = json.loads((dumps / "qparams.json").read_text())
    qp["001_relu2_out"]["scale"] *= 1.5
    (dumps / "qparams.json").write_text(json.dumps(qp))
    fx = evaluate(tmp_path, entry(vendor(dumps))).comparison("float", "fixed")
    r = fx.get("relu2_out")
    assert fx.first_diverging is r and r.summary["cos"] > 0.999 and r.summary["rmse"] > 0.4
    assert "wrong dequantization scale for relu2_out" in fx.diagnosis.todo[0]


def test_per_channel_dequantization_from_the_spec(tmp_path):
    """int16 NCHW dumps with per-channel scales given under dequantize.tensors."""
    out = tmp_path / "d"
    f = float_values("relu1_out")
    scale = np.linspace(0.001, 0.004, 8)
    for i, v in enumerate(f):
        (out / str(i)).mkdir(parents=True)
        np.save(out / str(i) / "relu1_out.npy", np.round(v / scale.reshape(1, 8, 1, 1)).astype(np.int16))
    deq = {"tensors": {"relu1*": {"scale": scale.tolist(), "zero_point": 0}}}
    result = evaluate(tmp_path, entry({"path": str(out), "dequantize": deq}))
    r = result.comparison("float", "fixed").get("relu1_out")
    assert r.status == "passed" and r.summary["cos"] > 0.9999
    wrong = evaluate(tmp_path, entry({"path": str(out), "dequantize": {"scale": [0.1, 0.2]}}))
    assert "2 scale values, but the tensor has 8 channels (axis 1)" in wrong.error.message


def test_dumps_without_batch_axis(tmp_path, dumps):
    for i in range(N):
        for f in (dumps / f"sample_{i}").glob("*.npy"):
            np.save(f, np.load(f)[0])  # [8, 8, 16] HWC, [256], ...
    result = evaluate(tmp_path, entry(vendor(dumps)))
    assert result.status == "passed", result.error
    assert result.comparison("float", "fixed").get("relu1_out").summary.samples == N


def test_channels_last_model_with_channels_first_padded_dumps(tmp_path):
    """A TensorFlow-style NHWC model; the dumps are NCHW, channels padded 3 -> 8, per-channel int8."""
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 4, 3])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4, 4, 3])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="act")], "nhwc", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "nhwc.onnx")
    data = np.random.default_rng(1).normal(0, 1, (4, 1, 4, 4, 3)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=data)
    scale = np.array([0.03, 0.04, 0.05])  # 127 steps cover the data
    for i, v in enumerate(data):
        q = np.round(np.maximum(v, 0) / scale).astype(np.int8).transpose(0, 3, 1, 2)  # NCHW [1, 3, 4, 4]
        (tmp_path / "d" / f"{i}").mkdir(parents=True)
        np.save(tmp_path / "d" / f"{i}" / "act.npy", np.pad(q, [(0, 0), (0, 5), (0, 0), (0, 0)]))
    cfg = {"path": str(tmp_path / "d"), "layout": "nchw", "model_layout": "nhwc", "crop_channels": True,
           "dequantize": {"tensors": {"act": {"scale": scale.tolist()}}}}
    e = {"name": "m", "model": str(tmp_path / "nhwc.onnx"), "calibration": {"data": str(tmp_path / "x.npz")},
         "dumps": {"fixed": cfg}}
    result = evaluate(tmp_path, e)
    r = result.comparison("float", "fixed").get("y")
    assert r.status == "passed" and r.summary["cos"] > 0.9999 and r.summary.samples == 4


@pytest.mark.parametrize("setup, expected", [
    ("no_crop", "dumped shape [1, 16, 8, 8] (layout nhwc) does not fit the float tensor relu1_out [1, 8, 8, 8]"),
    ("nchw", "000_relu1_out.npy: dumped shape [1, 8, 8, 16] (layout nchw, channels cropped) does not fit"),
    ("no_qparams", "integer dump (uint8) but no scale/zero_point"),
    ("few_samples", "holds 3 dumped samples, but the evaluation data has 16"),
    ("no_names", "no dumped tensor matches a tensor or node of the float model"),
    ("bad_dtype", "dtype bool is not supported"),
])
def test_dump_problems_name_the_file_and_key(tmp_path, dumps, setup, expected):
    cfg = vendor(dumps)
    if setup == "no_crop":
        cfg["crop_channels"] = False
    elif setup == "nchw":
        cfg["layout"] = "nchw"
    elif setup == "no_qparams":
        del cfg["dequantize"]
    elif setup == "few_samples":
        for i in range(3, N):
            shutil.rmtree(dumps / f"sample_{i}")
    elif setup == "no_names":
        del cfg["names"]
    elif setup == "bad_dtype":
        np.save(dumps / "sample_0" / "000_relu1_out.npy", np.zeros((1, 8, 8, 16), bool))
    result = evaluate(tmp_path, entry(cfg))
    assert result.error is not None and result.status == "failed"
    assert expected in result.error.message
    assert "models[0].dumps.fixed" in result.error.message and "spec.yaml" in result.error.message


@pytest.mark.parametrize("cfg, extra, expected", [
    ({"names": {}}, {}, "give 'path'"),
    ({"path": ".", "command": "x"}, {}, "leave 'path' out"),
    ({"command": "sim --in {inputz}"}, {}, "unknown placeholder {inputz}"),
    ({"command": "sim 'unclosed"}, {}, "cannot split the command"),
    ({"path": ".", "timeout": 3}, {}, "'timeout' applies to 'command'"),
    ({"path": ".", "layout": "nhcw"}, {}, "'nhcw' is not one of nchw, nhwc (did you mean 'nhwc'?)"),
    ({"path": ".", "dequantize": {"scale": -1}}, {}, "a scale must be positive"),
    ({"path": ".", "dequantize": {"file": "{out}/q.json"}}, {}, "{out} is only known with 'command'"),
    ({"path": "."}, {"modes": ["float", "fixed", "offline"]}, "with 'dumps', the modes are float and fixed"),
])
def test_dump_spec_errors(tmp_path, cfg, extra, expected):
    spec = load_spec(write_spec(tmp_path / "spec.yaml", [entry(cfg, **extra)]))
    assert len(spec.broken) == 1
    assert expected in spec.broken[0].error.message
    assert "models[0]" in spec.broken[0].error.message


def command_entry(command, **cfg) -> dict:
    c = {"command": command, "names": NAMES, "layout": "nhwc", "crop_channels": True,
         "dequantize": {"file": "{out}/qparams.json"}}
    c.update(cfg)
    e = entry(c)
    e["evaluation"]["limit"] = 4
    return e


def test_command_backend_runs_a_real_subprocess(tmp_path):
    script = str(EXAMPLE / "make_dumps.py")
    cmd = ["{python}", script, "--model", "{model}", "--calib", "{calibration}", "--inputs", "{inputs}",
           "--out", "{out}"]
    result = evaluate(tmp_path, command_entry(cmd, timeout=120))
    assert result.error is None and result.status == "passed"
    assert result.command.returncode == 0 and "dumped 7 tensors x 4 samples" in result.command.stdout
    assert model_json(result)["command"]["argv"] == list(result.command.argv)
    assert result.command.argv[0] == sys.executable
    assert result.command.argv[5] == str(EXAMPLE / "data" / "calib.npz")
    assert result.comparison("float", "fixed").get("relu2_out").summary.samples == 4
    assert not list((tmp_path / "work").rglob(".command-*"))  # the run's inputs and dumps are cleaned up
    # the string form is split before substitution: a spec folder with a space stays one argument
    spaced = tmp_path / "with space"
    text = f"{{python}} {script} --model {{model}} --inputs {{inputs}} --out {{out}}"
    assert evaluate(spaced, command_entry(text)).status == "passed"


@pytest.mark.parametrize("command, timeout, expected", [
    (["{python}", str(EXAMPLE / "make_dumps.py"), "--fail"], 60,
     ["command exited with status 1", "stderr (tail):", "license server unreachable"]),
    (["{python}", "-c", "import sys, time; print('warming up', file=sys.stderr, flush=True); time.sleep(30)"], 1,
     ["command timed out after 1 s", "warming up"]),
    (["{python}", "-c", "print('nothing to do')"], 60, ["exited 0 but wrote no dumps"]),
    (["/nonexistent/simulator", "{out}"], 60, ["cannot run '/nonexistent/simulator'"]),
])
def test_failing_commands_are_clear_errors(tmp_path, command, timeout, expected):
    result = evaluate(tmp_path, command_entry(command, timeout=timeout))
    assert result.status == "failed"
    for text in expected:
        assert text in result.error.message
    assert "models[0].dumps.fixed.command" in result.error.message


def test_plugin_runs_the_dump_example(pytester):
    for sub in ("models", "data", "dumps"):
        shutil.copytree(EXAMPLE / sub, pytester.path / sub)
    shutil.copy(EXAMPLE / "quantacc_dumps.yaml", pytester.path)
    report = pytester.path / "r.json"
    result = pytester.runpytest("--quantacc", "quantacc_dumps.yaml", "--quantacc-workdir",
                                str(pytester.path / "w"), "--quantacc-report", str(report), "-p", "no:randomly")
    result.assert_outcomes(passed=8, skipped=3)
    model = json.loads(report.read_text())["models"][0]
    assert model["status"] == "passed" and model["comparisons"][0]["target"] == "fixed"


def test_plugin_reports_a_failing_command(pytester):
    spec = write_spec(pytester.path / "quantacc.yaml", [command_entry(["{python}", "-c", "raise SystemExit('boom')"])])
    result = pytester.runpytest("--quantacc", str(spec), "--quantacc-workdir", str(pytester.path / "w"),
                                "-p", "no:randomly")
    result.assert_outcomes(failed=1, skipped=10)
    result.stdout.fnmatch_lines(["*models[[]0[]].dumps.fixed.command: command exited with status 1*", "boom"])
    assert "Traceback" not in result.stdout.str()

