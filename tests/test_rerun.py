"""pytest's re-run loop on quantacc items: ``--lf``, ``--ff``, ``--sw``, ``-k`` and a node id on the command line.

An engineer fixes one layer and re-runs only what failed; that loop must select exactly the failed items. It
rests on node ids surviving a round trip through ``.pytest_cache`` (pytest >= 9.2 re-parses cached ids into
structured ids, pytest-dev/pytest#15045: plugin/nodes.py gives bracketed items their id as a string so the live
id is parsed the same way), so every check here uses the ids pytest itself reported in a first, failing run, never
hard-coded names. ``.ci/run`` runs this file under the oldest supported pytest (8.4) as well as the newest.

The spec is the example's outlier CNN without its ``known_bad`` entry: relu3 (fc1's output) is the planted
fault, so float-vs-fixed fails at relu3, fc2 and softmax and float-vs-offline fails at both outputs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import EXAMPLE


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """One quantacc work folder for the module: the model is converted and evaluated once, not per run."""
    return tmp_path_factory.mktemp("rerun-work")


@pytest.fixture
def failing(pytester, workdir):
    """A project whose spec fails at the planted layer, after one full run that filled ``.pytest_cache``."""
    for sub in ("models", "data"):
        shutil.copytree(EXAMPLE / sub, pytester.path / sub)
    text = (EXAMPLE / "quantacc_outlier.yaml").read_text()
    (pytester.path / "spec.yaml").write_text(text[:text.index("    known_bad:")])
    first = Run(pytester, workdir)
    assert len(first.ran) == 14 and len(first.failed) == 5
    layer_item(first.failed, "float-vs-fixed", "relu3")  # the planted fault is among the failures
    return first


class Run:
    """One in-process pytest run; ``ran`` is the node ids in execution order, ``failed`` those that failed."""

    def __init__(self, pytester, workdir: Path, *args: str, target: str = "spec.yaml") -> None:
        self.pytester, self.workdir = pytester, workdir
        # --rootdir: the shared work folder outside the project would otherwise widen the rootdir to a common
        # ancestor, and node ids would start with the project folder's name.
        self.result = pytester.runpytest("--quantacc", target, "--quantacc-workdir", str(workdir),
                                         "--rootdir", str(pytester.path), "-p", "no:randomly", "--tb=no", *args)
        reports = self.result.reprec.getreports("pytest_runtest_logreport")
        self.ran = [str(r.nodeid) for r in reports if r.when == "setup"]
        self.failed = [str(r.nodeid) for r in reports if r.failed]

    def again(self, *args: str, target: str = "spec.yaml") -> Run:
        return Run(self.pytester, self.workdir, *args, target=target)


def layer_item(ids: list[str], kind: str, layer: str) -> str:
    """The one id of ``kind`` (float-vs-fixed, float-vs-offline) that names ``layer``."""
    (found,) = [n for n in ids if kind in n and layer in n.split("::")[-1]]
    return found


def test_last_failed_reruns_exactly_the_failed_items(failing):
    lf = failing.again("--lf")
    assert sorted(lf.ran) == sorted(failing.failed)
    assert sorted(lf.failed) == sorted(failing.failed)


def test_failed_first_runs_the_failed_items_first(failing):
    ff = failing.again("--ff")
    n = len(failing.failed)
    assert sorted(ff.ran[:n]) == sorted(failing.failed)
    assert sorted(ff.ran) == sorted(failing.ran)


def test_stepwise_stops_at_the_first_failure_and_resumes_there(failing):
    sw = failing.again("--sw")
    first = layer_item(failing.ran, "float-vs-fixed", "relu3")
    assert sw.failed == [first] and sw.ran[-1] == first
    assert sw.ran == failing.ran[:failing.ran.index(first) + 1]
    # Resuming skips the items that passed before it; --sw-skip steps over it to the next failure.
    resumed = failing.again("--sw-skip")
    assert resumed.ran == [first, layer_item(failing.ran, "float-vs-fixed", "fc2")]


def test_keyword_selects_by_layer_name(failing):
    k = failing.again("-k", "relu3 or softmax")
    assert k.ran == [layer_item(failing.ran, "float-vs-fixed", "relu3"),
                     layer_item(failing.ran, "float-vs-fixed", "softmax")]


def test_node_id_on_the_command_line_runs_that_item(failing):
    one = layer_item(failing.failed, "float-vs-fixed", "fc2")
    run = failing.again(target=one)
    assert run.ran == [one] and run.failed == [one]
