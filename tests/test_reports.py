"""Reports proportional to information: one full report per model, short lines elsewhere, ``--tb`` honoured,
JUnit messages of one line, skips located at the spec, fixed-vs-offline limited to the worst tensors.

The model is the example's outlier CNN without its ``known_bad`` entry: relu3 is the planted fault (the first
diverging layer, abrupt); fc2 and softmax inherit its error (their own errors are far within the thresholds).
One variant tightens softmax's rmse threshold below its own error (0.0007), planting a second root cause whose
own error breaks; another tightens the fixed-vs-offline gate to zero so that it fails on every tensor.
"""

from __future__ import annotations

import json
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conftest import EXAMPLE


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """One work folder for the module: the model is converted and evaluated once, then re-judged."""
    return tmp_path_factory.mktemp("reports-work")


@pytest.fixture
def outlier(pytester) -> Path:
    for sub in ("models", "data"):
        shutil.copytree(EXAMPLE / sub, pytester.path / sub)
    text = (EXAMPLE / "quantacc_outlier.yaml").read_text()
    spec = pytester.path / "spec.yaml"
    spec.write_text(text[:text.index("    known_bad:")])
    return spec


def run(pytester, workdir: Path, *args: str):
    return pytester.runpytest("--quantacc", "spec.yaml", "--quantacc-workdir", str(workdir), "--rootdir",
                              str(pytester.path), "-p", "no:randomly", "--quantacc-remedies", "0", *args)


def failures_section(out: str) -> str:
    """The text between the FAILURES header and the next section's header."""
    return re.split(r"^=+ .+ =+$", out.split("= FAILURES =", 1)[1].split("\n", 1)[1], maxsplit=1, flags=re.M)[0]


def failures(out: str) -> dict[str, str]:
    """The FAILURES section's text per item header (``__ name __``)."""
    section = failures_section(out)
    parts = re.split(r"^_+ (.+?) _+$", section, flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


def test_root_cause_carries_the_report_and_the_others_say_where_they_come_from(pytester, workdir, outlier):
    result = run(pytester, workdir, "-rs", "--junitxml", "out.xml")
    result.assert_outcomes(passed=6, failed=5, skipped=3)
    out = result.stdout.str()
    f = failures(out)
    root = f["digits_outlier::float-vs-fixed[relu3/Relu]"]
    assert "first diverging layer: relu3 (Relu) - this layer" in root and "diagnosis (abrupt):" in root
    assert re.search(r"^->\s+relu3\s+Relu", root, re.M)
    for name in ("fc2/Gemm", "softmax/Softmax"):
        text = f[f"digits_outlier::float-vs-fixed[{name}]"].strip().splitlines()
        assert len(text) == 3 and text[2] == "  inherits from relu3: its own error is within the thresholds"
        assert "own error cos" in text[1]
    # the diagnosis and the table once, what to do and Netron once, in the summary
    assert out.count("diagnosis (abrupt):") == 1 and len(re.findall(r"^->", out, re.M)) == 1
    summary = out.split("= quantacc summary =", 1)[1]
    assert "what to do:" not in out.split("= quantacc summary =", 1)[0] and "what to do:" in summary
    (netron,) = re.findall(r"open in Netron: netron (\S+)", out)
    assert Path(netron).name == "fixed.onnx" and Path(netron).is_file()
    # JUnit: the message is the headline; skips name the layer and point at the spec, not the plugin
    assert "SKIPPED [1] spec.yaml: digits_outlier::float-vs-fixed[conv1/Conv]: fused by the quantizer" in out
    assert "pytest_quantacc/" not in out and "nodes.py" not in out
    cases = {c.get("name"): c for c in ET.parse(pytester.path / "out.xml").getroot().iter("testcase")}
    failure = cases["float-vs-fixed[relu3/Relu]"].find("failure")
    assert failure.get("message") == ("digits_outlier: float vs fixed: layer relu3 (Relu, tensor relu3_out): "
                                      "cos 0.4089 < 0.99, rmse 0.9979 > 0.1")
    assert "diagnosis (abrupt):" in failure.text  # the element's text keeps the whole report
    skipped = cases["float-vs-fixed[conv2/Conv]"].find("skipped")
    assert skipped.get("message").startswith("digits_outlier::float-vs-fixed[conv2/Conv]: fused by the quantizer")
    assert skipped.text.startswith(str(outlier))


def test_a_layer_whose_own_error_breaks_is_named_a_root_cause(pytester, workdir, outlier):
    outlier.write_text(outlier.read_text() + "    layers:\n      softmax: {rmse: 0.0001}\n")
    out = run(pytester, workdir).stdout.str()
    softmax = failures(out)["digits_outlier::float-vs-fixed[softmax/Softmax]"]
    assert "own error breaks the thresholds: a root cause of its own (first diverging layer: relu3)" in softmax
    assert "inherits" not in softmax


def test_tb_styles(pytester, workdir, outlier):
    line = run(pytester, workdir, "--tb=line").stdout.str()
    section = failures_section(line).strip().splitlines()
    assert len(section) == 5 and all(s.startswith("spec.yaml: digits_outlier: float vs ") for s in section)
    short = failures(run(pytester, workdir, "--tb=short").stdout.str())
    assert all(len(t.strip().splitlines()) <= 4 for t in short.values())
    assert "diagnosis" not in "".join(short.values())
    long = run(pytester, workdir, "--tb=long").stdout.str()
    # long: every failing layer has today's full detail (table, diagnosis, what to do, the work folder)
    assert long.count("diagnosis (abrupt):") == 3 and long.count("models (open in Netron):") == 3


def test_fixed_vs_offline_lists_the_worst_tensors(pytester, workdir, outlier):
    # Without reduce_range ONNX Runtime's u8s8 kernels saturate on CPUs without VNNI; with a zero tolerance every
    # tensor that differs at all breaks the gate.
    text = outlier.read_text().replace("reduce_range: true", "reduce_range: false")
    outlier.write_text(text + "    offline: {tolerance_steps: 0, max_mismatch_rate: 0.0}\n")
    result = run(pytester, workdir, "--quantacc-report", "r.json")
    report = json.loads((pytester.path / "r.json").read_text())["models"][0]
    tensors = next(c for c in report["comparisons"] if c["reference"] == "fixed")["layers"]
    if all(t["status"] == "passed" for t in tensors):
        pytest.skip("this CPU's integer kernels agree exactly with fake-quant (VNNI)")
    assert len(tensors) > 5
    text = failures(result.stdout.str())["digits_outlier::fixed-vs-offline"]
    rows = [ln for ln in text.splitlines() if any(ln.startswith(t["tensor"] + " ") for t in tensors)]
    worst = sorted(tensors, key=lambda t: (-t["mismatch_rate"], -t["max_steps"]))[:5]
    assert [r.split()[0] for r in rows] == [t["tensor"] for t in worst]
    assert f"({len(tensors) - 5} more tensors" in text


def test_progress_lines_name_the_phases_and_stay_quiet_with_q(pytester, outlier):
    own = pytester.path / "own-work"
    out = run(pytester, own, "--tb=no", "--quantacc-remedies", "2").stdout.str()
    for phase in ("converting", "evaluating 64 samples", "own-error pass", "remedy search: sensitivity of every site",
                  "remedy search: a set at 16 bits",
                  "remedy: verifying mixed precision: 16-bit weights of conv2 + 16-bit weights of fc1 + 16-bit "
                  "activations of conv2", "remedy: verifying per-channel weights"):
        assert re.search(rf"^digits_outlier: {re.escape(phase)} \.\.\. \d+\.\d s$", out, re.M), phase
    quiet = run(pytester, own, "--tb=no", "-q", "--quantacc-no-cache").stdout.str()
    assert "digits_outlier: converting" not in quiet


def test_marker_and_ini_keys(pytester, workdir, outlier):
    pytester.makepyfile(test_plain="def test_plain():\n    pass\n")
    pytester.makeini("[pytest]\nquantacc_report = out/r.json\nquantacc_html = out/r.html\nquantacc_remedies = 0\n"
                     "addopts = --strict-markers\n")
    marked = pytester.runpytest("--quantacc", "spec.yaml", "test_plain.py", "--quantacc-workdir", str(workdir),
                                "-p", "no:randomly", "-m", "quantacc", "--tb=no")
    marked.assert_outcomes(passed=6, failed=5, skipped=3)  # the Python test deselected
    assert (pytester.path / "out" / "r.json").is_file() and (pytester.path / "out" / "r.html").is_file()
    diagnosis = json.loads((pytester.path / "out" / "r.json").read_text())["models"][0]["comparisons"][0]["diagnosis"]
    assert diagnosis["remedy_attempts"] == []  # quantacc_remedies = 0
    unmarked = pytester.runpytest("--quantacc", "spec.yaml", "test_plain.py", "--quantacc-workdir", str(workdir),
                                  "-p", "no:randomly", "-m", "not quantacc", "--collect-only", "-q")
    assert unmarked.stdout.lines[0] == "test_plain.py::test_plain" and "14 deselected" in unmarked.stdout.str()
    markers = pytester.runpytest("--markers").stdout.str()
    assert "quantacc: quantacc(**defaults)" in markers and "Every item collected from a spec" in markers


def test_temporary_work_folder_is_removed_at_the_end(pytester, outlier, tmp_path, monkeypatch):
    """Without a cache directory the models go to a temp folder of the run; it must not outlive the run."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # where the subprocess's tempfile.mkdtemp writes
    result = pytester.runpytest_subprocess("--quantacc", "spec.yaml", "-p", "no:cacheprovider", "-p", "no:randomly",
                                           "--quantacc-remedies", "0", "--tb=no")
    result.assert_outcomes(passed=6, failed=5, skipped=3)
    assert "are removed at the end of the session" in result.stdout.str()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("quantacc-")]


def test_pytest_html_section_once_rows_elsewhere_nothing_without_html(pytester, workdir, outlier):
    pytest.importorskip("pytest_html")
    pytester.makeconftest("def pytest_runtest_logreport(report):\n"
                          "    if getattr(report, 'extras', None):\n"
                          "        open('extras.txt', 'a').write(report.nodeid + '\\n')\n")
    run(pytester, workdir, "--tb=no")
    assert not (pytester.path / "extras.txt").exists()  # no --html: no fragment is built
    run(pytester, workdir, "--tb=no", "--html", "ph.html", "--self-contained-html")
    carriers = (pytester.path / "extras.txt").read_text().split()
    assert len(carriers) == 5 and any(c.endswith("float-vs-fixed[relu3/Relu]") for c in carriers)
    text = (pytester.path / "ph.html").read_text()
    assert text.count("relative RMSE along the graph") == 1  # one model section, on the root cause
    assert text.count("quantacc-row") == 4  # fc2, softmax and both outputs


def test_under_xdist_junit_message_and_tb_line_keep_the_headline(pytester, workdir, outlier):
    """A worker sends a non-traceback failure as plain text; the controller must still see its headline."""
    result = run(pytester, workdir, "-n", "2", "--tb=line", "--junitxml", "out.xml")
    result.assert_outcomes(passed=6, failed=5, skipped=3)
    lines = [ln for ln in failures_section(result.stdout.str()).splitlines() if ln.startswith("spec.yaml: ")]
    assert len(lines) == 5 and all(len(ln) > 60 for ln in lines)  # whole headlines, not pytest's 50-char cut
    cases = {c.get("name"): c for c in ET.parse(pytester.path / "out.xml").getroot().iter("testcase")}
    message = cases["float-vs-fixed[fc2/Gemm]"].find("failure").get("message")
    assert message.startswith("digits_outlier: float vs fixed: layer fc2 (Gemm") and "\n" not in message
