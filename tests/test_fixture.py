"""The quantacc fixture and marker, through pytester: the README's example file, the failure text the spec items
give, marker defaults, spec errors, the cache and the reports."""
from __future__ import annotations

import importlib.util
import json
import re
import shutil
import xml.etree.ElementTree as ET

import numpy as np
import onnx

from conftest import EXAMPLE, write_spec

INNER = '''
import pytest
from test_in_memory_model import samples, small_cnn

CAL, EVAL = samples(32, 1), samples(8, 2)


@pytest.mark.quantacc(thresholds={"cos": 0.98, "rmse": 0.2})
def test_same_text(quantacc):
    quantacc.check(small_cnn(outlier=100.0), calibration=CAL, evaluation=EVAL, name="m")


@pytest.mark.quantacc(thresholds={"cos": 0.98, "rmse": 0.2})
def test_kwargs_win_over_the_marker(quantacc):
    quantacc.check(small_cnn(outlier=100.0), calibration=CAL, evaluation=EVAL, thresholds={"cos": -1.0, "rmse": 10})


def test_per_sample_dicts(quantacc):
    ev = quantacc.check(small_cnn(), calibration=[{"x": x} for x in CAL["x"]], evaluation=EVAL)
    assert ev.result.samples == 8 and ev.result.status == "passed"


def test_typo(quantacc):
    quantacc.check(small_cnn(), calibration=CAL, quantization={"methd": "minmax"})
'''


def _sections(text: str) -> dict[str, str]:
    """Failure sections of pytest's output by title."""
    parts = re.split(r"^_{3,} (.+?) _{3,}$", text, flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def test_fixture_example_and_the_yaml_gate_agree(pytester):
    shutil.copy(EXAMPLE / "test_in_memory_model.py", pytester.path)
    pytester.makepyfile(test_inner=INNER)
    # The same model and data as a YAML spec: its relu2 item must fail with the text the fixture fails with.
    spec_ = importlib.util.spec_from_file_location("example", EXAMPLE / "test_in_memory_model.py")
    example = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(example)
    onnx.save(example.small_cnn(outlier=100.0), pytester.path / "m.onnx")
    np.savez(pytester.path / "cal.npz", **example.samples(32, 1))
    np.savez(pytester.path / "eval.npz", **example.samples(8, 2))
    write_spec(pytester.path / "quantacc.yaml", [{"name": "m", "model": "m.onnx", "calibration": {"data": "cal.npz"},
                                                  "evaluation": {"data": "eval.npz"},
                                                  "thresholds": {"cos": 0.98, "rmse": 0.2}}])
    args = ("--quantacc", "quantacc.yaml", "test_inner.py", "test_in_memory_model.py", "--quantacc-remedies", "0",
            "--quantacc-workdir", "work", "--quantacc-report", "r.json", "--quantacc-html", "r.html",
            "--junitxml", "j.xml", "-p", "no:randomly")
    result = pytester.runpytest(*args)
    outcomes = result.parseoutcomes()
    text = result.stdout.str()
    sections = _sections(text)
    fixture_text = sections["test_same_text"]
    item_text = sections["m::float-vs-fixed[relu2/Relu]"]
    netron = re.compile(r"^models \(open in Netron\): .*$", re.M)
    first_block = fixture_text.split("\nalso failing")[0]  # the first failing layer's text, as the item gives it
    assert netron.sub("", item_text).strip() == netron.sub("", first_block).strip()
    assert "Traceback" not in fixture_text and "fixture.py" not in fixture_text  # the text, not a traceback
    assert "also failing in float vs fixed: pool, flatten" in fixture_text
    assert "models[0].quantization.methd: unknown key (did you mean 'method'?)" in sections["test_typo"]
    assert outcomes["failed"] >= 2 and "test_kwargs_win_over_the_marker" not in sections
    assert "test_small_cnn_quantizes_well" not in sections and "test_outlier_channel_is_a_known_bad_layer" not in \
        sections  # the README example passes, its known_bad layer reported, not failing
    report = {m["name"]: m for m in json.loads((pytester.path / "r.json").read_text())["models"]}
    assert {"m", "test_small_cnn_quantizes_well", "test_outlier_channel_is_a_known_bad_layer",
            "test_per_sample_dicts", "test_kwargs_win_over_the_marker"} <= {n for n in report}
    assert "test_outlier_channel_is_a_known_bad_layer" in (pytester.path / "r.html").read_text()
    junit = ET.parse(pytester.path / "j.xml").getroot()
    props = {tc.get("name"): [(p.get("name"), p.get("value")) for p in tc.iter("property")]
             for tc in junit.iter("testcase")}
    known = props["test_outlier_channel_is_a_known_bad_layer"]
    assert ("quantacc.known_bad_failing", "relu2, pool, flatten") in known
    assert ("quantacc.cache", "computed") in known and ("quantacc.layer", "relu2") in known
    # second run: the fixture's checks reuse the cache (its files sit under the work folder, not tmp_path)
    pytester.runpytest(*args)
    again = {tc.get("name"): [(p.get("name"), p.get("value")) for p in tc.iter("property")]
             for tc in ET.parse(pytester.path / "j.xml").getroot().iter("testcase")}
    assert ("quantacc.cache", "reused") in again["test_outlier_channel_is_a_known_bad_layer"]


def test_fixture_without_quantacc_and_marker_registered(pytester):
    shutil.copy(EXAMPLE / "test_in_memory_model.py", pytester.path)
    result = pytester.runpytest("test_in_memory_model.py", "--strict-markers", "-p", "no:randomly")
    result.assert_outcomes(passed=2)
    assert pytester.runpytest("test_in_memory_model.py", "-m", "not quantacc").ret == 5  # both carry the marker
    assert "quantacc summary" not in result.stdout.str()  # no --quantacc: just the tests
    assert "quantacc(**defaults)" in pytester.runpytest("--markers").stdout.str()
