"""The GitHub Actions recipe works when copied into a model repository.

GitHub cannot be run here, so the recipe is checked three ways: against the workflow JSON schema (when
check-jsonschema is installed; it ships the schema, no network), for the points that made the copied recipe
fail (package not on PyPI, pip cache without a requirements file, JUnit check without permission, LFS models,
hidden cache folder dropped from the artifact, side files, no HTML report, a cache key that never saves), and
by running its pytest command line on the example project, so the flags and the paths it uploads are real.
"""

from __future__ import annotations

import glob
import importlib.util
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import EXAMPLE

RECIPE = EXAMPLE / "ci" / "github-workflow.yml"
INSTALLED_AS = ".github/workflows/quantacc.yml"  # where the recipe's header says to copy it


@pytest.fixture(scope="module")
def workflow() -> dict:
    return yaml.safe_load(RECIPE.read_text())


@pytest.fixture(scope="module")
def job(workflow) -> dict:
    (only,) = workflow["jobs"].values()
    return only


def step(job: dict, action: str) -> dict:
    """The one step that uses ``action`` (owner/name, any version)."""
    (found,) = [s for s in job["steps"] if s.get("uses", "").split("@")[0] == action]
    return found


def gate_command(job: dict) -> list[str]:
    (run,) = [s["run"] for s in job["steps"] if "pytest --quantacc" in s.get("run", "")]
    return shlex.split(run)


def test_installs_from_a_git_url_or_a_path(workflow, job):
    (install,) = [s for s in job["steps"] if "pip install" in s.get("run", "")]
    line = install["run"]
    for name, value in workflow.get("env", {}).items():
        line = line.replace(f"${name}", value).replace(f"${{{name}}}", value)
    requirement = shlex.split(line)[-1]
    assert "@ git+https://" in requirement or requirement.startswith(("./", "../", "/")), requirement


def test_pip_cache_has_a_file_to_key_on(job):
    setup = step(job, "actions/setup-python")["with"]
    if setup.get("cache") == "pip":
        assert setup.get("cache-dependency-path") == INSTALLED_AS
        assert INSTALLED_AS in RECIPE.read_text().splitlines()[1]


def test_junit_check_may_write_checks(job):
    step(job, "mikepenz/action-junit-report")
    assert job["permissions"]["checks"] == "write"


def test_checkout_fetches_lfs_models(job):
    assert step(job, "actions/checkout")["with"]["lfs"] is True


def test_artifact_keeps_hidden_cache_folder_and_side_files(job):
    upload = step(job, "actions/upload-artifact")
    paths = upload["with"]["path"].split()
    assert upload["with"]["include-hidden-files"] is True
    assert any(p.startswith(".pytest_cache/") and p.endswith("*.onnx") for p in paths)
    assert any(p.startswith(".pytest_cache/") and p.endswith("*.onnx.data") for p in paths)
    html = next(a.split("=", 1)[1] for a in gate_command(job) if a.startswith("--quantacc-html="))
    assert any(html.startswith(p) for p in paths)


def test_cache_key_saves_every_run(job):
    cache = step(job, "actions/cache")["with"]
    assert "github.run_id" in cache["key"]
    restore = cache["restore-keys"].splitlines()
    assert restore and all(cache["key"].startswith(r) for r in restore)


@pytest.mark.skipif(importlib.util.find_spec("check_jsonschema") is None, reason="check-jsonschema not installed")
def test_matches_the_github_workflow_schema(tmp_path, workflow):
    def check(path: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema",
                               "vendor.github-workflows", str(path)], capture_output=True, text=True)

    ok = check(RECIPE)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # The check is live: a permission value outside the schema's enum is rejected.
    (job,) = workflow["jobs"].values()
    broken = {**workflow, "jobs": {"quantacc": {**job, "permissions": {"checks": "writable"}}}}
    (tmp_path / "broken.yml").write_text(yaml.safe_dump(broken))
    assert check(tmp_path / "broken.yml").returncode != 0


def test_gate_command_line_runs_and_writes_what_is_uploaded(pytester, job):
    """The recipe's pytest line on a copy of the example's healthy spec: reports and cached models exist where
    the upload and cache steps look for them."""
    project = pytester.path / "example_project"
    for sub in ("models", "data"):
        shutil.copytree(EXAMPLE / sub, project / sub)
    shutil.copy(EXAMPLE / "quantacc.yaml", project / "quantacc.yaml")
    args = gate_command(job)
    assert args[:3] == ["pytest", "--quantacc", "example_project/"]
    result = pytester.runpytest_subprocess(*args[1:])
    assert result.ret == 0, result.stdout.str()
    upload = step(job, "actions/upload-artifact")["with"]["path"].split()
    for pattern in upload:
        if not pattern.endswith(".onnx.data"):  # the example's models keep their weights inside the file
            assert glob.glob(str(pytester.path / pattern), recursive=True), pattern
    assert (pytester.path / step(job, "actions/cache")["with"]["path"]).is_dir()
