"""Contract section 6, end to end through pytest: bad specs, models and data give one clear message naming
the spec file, the key path and the problem, never an internal traceback, and never touch the user's files."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

# pytester's in-process runs drop every module first imported during the run; import the heavy ones here
# so that each run does not import (and assertion-rewrite) them again
import hypothesis  # noqa: F401  (its pytest plugin loads in the inner runs)
import numpy as np
import onnxruntime  # noqa: F401
import pytest
import yaml
import zoo

import pytest_quantacc.engine.run  # noqa: F401
import pytest_quantacc.plugin.nodes  # noqa: F401

SPEC = "spec.yaml"


@pytest.fixture(scope="module")
def healthy(tmp_path_factory) -> zoo.ZooModel:
    """healthy_cnn: input 'input' float32 [batch, 3, 16, 16]; nodes conv1..conv5, relu1..relu5, gap, flatten, fc."""
    return zoo.healthy_cnn(tmp_path_factory.mktemp("zoo"))


class Project:
    """The user's folder (pytester's directory): models/cnn.onnx, data/calib.npz, data/eval.npz and a spec."""

    def __init__(self, pytester: pytest.Pytester, work: Path) -> None:
        self.pytester = pytester
        self.path = pytester.path
        self.work = work

    @property
    def spec(self) -> Path:
        return self.path / SPEC

    def entry(self, name: str = "cnn", **extra) -> dict:
        entry = {"name": name, "model": "models/cnn.onnx", "calibration": {"data": "data/calib.npz"},
                 "evaluation": {"data": "data/eval.npz"}, "quantization": {"reduce_range": True},
                 "modes": ["float", "fixed"]}
        entry.update(extra)
        return entry

    def write_spec(self, *models: dict, text: str | None = None) -> None:
        if text is None:
            text = yaml.safe_dump({"quantacc": 1, "models": list(models)}, sort_keys=False)
        self.spec.write_text(text)

    def write_npz(self, rel: str, **arrays: np.ndarray) -> None:
        path = self.path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **arrays)

    def _snapshot(self) -> dict[str, str]:
        # pytester points HOME at this folder, and ONNX Runtime keeps a device-id database in $HOME/.cache:
        # that is the environment's, not the plugin's doing, so it is left out
        return {str(p.relative_to(self.path)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(self.path.rglob("*"))
                if p.is_file() and p.relative_to(self.path).parts[0] != ".cache"}

    def run(self, *extra: str) -> tuple[pytest.RunResult, str]:
        """Run pytest on the spec; check that the user's files are byte-identical afterwards."""
        before = self._snapshot()
        result = self.pytester.runpytest("--quantacc", SPEC, "-v", "--quantacc-workdir", str(self.work),
                                         "-p", "no:cacheprovider", "-p", "no:randomly", "-p", "no:benchmark",
                                         *extra)
        assert self._snapshot() == before, "the run modified, added or deleted files in the user's folder"
        return result, result.stdout.str() + "\n" + result.stderr.str()


@pytest.fixture
def project(pytester: pytest.Pytester, tmp_path: Path, healthy: zoo.ZooModel) -> Project:
    (pytester.path / "models").mkdir()
    (pytester.path / "data").mkdir()
    shutil.copy(healthy.model, pytester.path / "models/cnn.onnx")
    shutil.copy(healthy.calib, pytester.path / "data/calib.npz")
    shutil.copy(healthy.eval, pytester.path / "data/eval.npz")
    return Project(pytester, tmp_path / "work")


def calib_images(n: int = 4) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, 3, 16, 16)).astype(np.float32)


def assert_no_internal_traceback(out: str) -> None:
    assert "Traceback" not in out, out
    assert "INTERNALERROR" not in out, out
    # pytest's rendering of an exception: source lines of our package, and the "E   " exception lines
    assert not re.search(r"pytest_quantacc[/\\]\w+\.py:\d+", out), out
    assert not re.search(r"^E {3}", out, re.M), out


def assert_reported(project: Project, out: str, key: str, *problem: str) -> None:
    """One message names the spec file and the key path, followed by the problem."""
    located = f"{project.spec}: {key}: "
    assert located in out, f"{located!r} not in output:\n{out}"
    line = next(ln for ln in out.splitlines() if located in ln)
    message = line[line.index(located):]
    for words in problem:
        assert words in message, f"{words!r} not in {message!r}"


def assert_one_problem(result: pytest.RunResult) -> None:
    """A collection error or a failed test (contract section 6), and nothing passes."""
    outcomes = result.parseoutcomes()
    assert outcomes.get("errors", 0) + outcomes.get("failed", 0) == 1, outcomes
    assert outcomes.get("passed", 0) == 0, outcomes
    assert result.ret != pytest.ExitCode.OK


# --------------------------------------------------------------------------------------------------------
# the spec
# --------------------------------------------------------------------------------------------------------


def test_invalid_yaml_syntax(project: Project) -> None:
    project.write_spec(text="quantacc: 1\nmodels:\n  - name: cnn\n    model: [models/cnn.onnx\n")
    result, out = project.run()
    result.assert_outcomes(failed=1)
    assert_no_internal_traceback(out)
    assert f"{project.spec}: not valid YAML" in out
    assert "line 5" in out or "line 4" in out  # PyYAML's position of the problem


def test_unknown_key_suggests_the_right_one(project: Project) -> None:
    project.write_spec(project.entry(thresholdz={"cos": 0.99}))
    result, out = project.run()
    result.assert_outcomes(failed=1)
    assert_no_internal_traceback(out)
    assert_reported(project, out, "models[0].thresholdz", "unknown key", "did you mean 'thresholds'?")


def test_missing_required_key(project: Project) -> None:
    entry = project.entry()
    del entry["calibration"]
    project.write_spec(entry)
    result, out = project.run()
    result.assert_outcomes(failed=1)
    assert_no_internal_traceback(out)
    assert_reported(project, out, "models[0].calibration", "required key is missing")


def test_threshold_out_of_range(project: Project) -> None:
    project.write_spec(project.entry(thresholds={"cos": 1.5}))
    result, out = project.run()
    result.assert_outcomes(failed=1)
    assert_no_internal_traceback(out)
    assert_reported(project, out, "models[0].thresholds.cos", "1.5 is out of range [-1.0, 1.0]")


def test_unknown_method(project: Project) -> None:
    project.write_spec(project.entry(quantization={"method": "kmeans"}))
    result, out = project.run()
    result.assert_outcomes(failed=1)
    assert_no_internal_traceback(out)
    assert_reported(project, out, "models[0].quantization.method", "'kmeans' is not one of minmax, entropy, percentile")


# --------------------------------------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------------------------------------


def test_missing_model_file(project: Project) -> None:
    project.write_spec(project.entry(model="models/nope.onnx"))
    result, out = project.run()
    result.assert_outcomes(failed=1)
    assert_no_internal_traceback(out)
    assert_reported(project, out, "models[0].model", "file not found", "nope.onnx")


def test_file_that_is_not_onnx(project: Project) -> None:
    (project.path / "models/junk.onnx").write_bytes(np.random.default_rng(1).bytes(512))
    project.write_spec(project.entry(model="models/junk.onnx"))
    result, out = project.run()
    assert_one_problem(result)
    assert_no_internal_traceback(out)
    assert_reported(project, out, "models[0].model", "junk.onnx", "ONNX")


def test_exclude_nodes_naming_a_missing_node(project: Project) -> None:
    project.write_spec(project.entry(quantization={"reduce_range": True, "exclude_nodes": ["conv1", "conv9"]}))
    result, out = project.run()
    assert_one_problem(result)
    assert_no_internal_traceback(out)
    assert_reported(project, out, "models[0].quantization.exclude_nodes[1]", "no node named 'conv9'")


# --------------------------------------------------------------------------------------------------------
# the data
# --------------------------------------------------------------------------------------------------------


def test_npz_missing_an_input_name(project: Project) -> None:
    project.write_npz("data/bad.npz", image=calib_images())
    project.write_spec(project.entry(calibration={"data": "data/bad.npz"}))
    result, out = project.run()
    assert_one_problem(result)
    assert_no_internal_traceback(out)
    assert_reported(project, out, "models[0].calibration.data", "bad.npz", "no array for model input(s) input",
                    "image")


def test_wrong_sample_shape(project: Project) -> None:
    project.write_npz("data/bad.npz", input=calib_images()[:, :, :8, :8])
    project.write_spec(project.entry(evaluation={"data": "data/bad.npz"}))
    result, out = project.run()
    assert_one_problem(result)
    assert_no_internal_traceback(out)
    assert_reported(project, out, "models[0].evaluation.data", "bad.npz", "shape [3, 8, 8]",
                    "does not fit the model input input")


def test_integer_data_for_float_input(project: Project) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (4, 3, 16, 16)).astype(np.uint8)
    project.write_npz("data/bad.npz", input=pixels)
    project.write_spec(project.entry(calibration={"data": "data/bad.npz"}))
    result, out = project.run()
    assert_one_problem(result)
    assert_no_internal_traceback(out)
    assert_reported(project, out, "models[0].calibration.data", "bad.npz", "'input'", "dtype uint8", "float32")


def test_nan_in_data(project: Project) -> None:
    images = calib_images()
    images[3, 1, 2, 2] = np.nan
    project.write_npz("data/bad.npz", input=images)
    project.write_spec(project.entry(calibration={"data": "data/bad.npz"}))
    result, out = project.run()
    assert_one_problem(result)
    assert_no_internal_traceback(out)
    assert_reported(project, out, "models[0].calibration.data", "bad.npz", "NaN", "sample 3")


# --------------------------------------------------------------------------------------------------------
# one broken model does not stop the others
# --------------------------------------------------------------------------------------------------------


def _break_with_nan(project: Project) -> tuple[dict, str, tuple[str, ...]]:
    images = calib_images()
    images[0, 0, 0, 0] = np.nan
    project.write_npz("data/nan.npz", input=images)
    return project.entry("second", calibration={"data": "data/nan.npz"}), "models[1].calibration.data", ("NaN",)


def _break_with_missing_model(project: Project) -> tuple[dict, str, tuple[str, ...]]:
    return project.entry("second", model="models/nope.onnx"), "models[1].model", ("file not found",)


@pytest.mark.parametrize("breaker", [
    pytest.param(_break_with_nan, id="bad-data"),
    pytest.param(_break_with_missing_model, id="missing-model"),
])
def test_second_model_broken_first_still_runs(project: Project, breaker) -> None:
    second, key, problem = breaker(project)
    project.write_spec(project.entry("first"), second)
    result, out = project.run()
    assert_no_internal_traceback(out)
    assert_reported(project, out, key, *problem)
    outcomes = result.parseoutcomes()
    assert outcomes.get("errors", 0) + outcomes.get("failed", 0) == 1, outcomes
    first = re.findall(rf"^{re.escape(SPEC)}::first::(\S+) (PASSED|FAILED|SKIPPED|ERROR)", out, re.M)
    assert ("convert", "PASSED") in first, out
    assert sum(status == "PASSED" for _, status in first) >= 5, first
    assert not [item for item, status in first if status in ("FAILED", "ERROR")], first
    assert outcomes.get("passed", 0) == sum(status == "PASSED" for _, status in first)
    assert not re.search(rf"^{re.escape(SPEC)}::second::\S+ PASSED", out, re.M)
