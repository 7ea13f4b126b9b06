"""Hostile input (issue "Hostile input", classes 1-9): whatever the user's files and options hold, a run ends in
a located message (spec file, key path, what is wrong), never a hang, a raw traceback, an interrupted session,
a leaked process or a silent wrong answer.

Every case runs pytest on a spec that holds the hostile model entry *and* a healthy one (``ok``): the healthy
model's items must pass, which is how "the session goes on" is checked. The catalogue's rows (``CATALOGUE``,
grouped by class) share one spec, one row per model entry, and one pytest run in a child process of its own
(a new session, killed as a group on timeout, under an address-space limit): each row is still its own test,
asserting its own located message, and starting pytest with ONNX Runtime once instead of once per row keeps
the file fast. Cases of their own shape run through pytester in-process, or, when they need read-only folders
(root must lose the capabilities that ignore them) or a memory measurement, in a child process.

The models are tiny numpy-built ONNX graphs (built once per module); no model is exported from a framework.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# pytester's in-process runs drop every module first imported during the run; import the heavy ones here
import hypothesis  # noqa: F401  (its pytest plugin loads in the inner runs)
import numpy as np
import onnx
import onnxruntime  # noqa: F401
import pytest
import yaml
import zoo
from onnx import TensorProto, helper, numpy_helper

import pytest_quantacc.engine.run  # noqa: F401
import pytest_quantacc.plugin.nodes  # noqa: F401

SPEC = "spec.yaml"
N_CALIB, N_EVAL = 16, 8
HANG_TIMEOUT = 20.0  # seconds a child run may take before it counts as hung (and is killed as a group)
ANSWER_WITHIN = 15.0  # seconds a hang-prone case must answer in (ONNX Runtime's import and two tiny conversions
#                      included)
BATCH_TIMEOUT = 90.0  # seconds the whole catalogue's run may take before it counts as hung
BATCH_WITHIN = 40.0  # seconds it must answer in: every row, hang-prone ones included, and the healthy model
MEMORY_LIMIT = 3 << 30  # address-space limit of child runs that could otherwise grow without bound
WIDE_SAMPLE = (64, 64, 64)  # 1 MiB of float32 per sample: the 1 GiB member holds 1024 of them


# --------------------------------------------------------------------------------------------------------
# models, built with onnx.helper and numpy
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Built:
    """A model file with its calibration and evaluation data (and, for mlp, the first layer's weights)."""

    model: Path
    calib: Path
    eval: Path
    extra: dict = field(default_factory=dict)


def _save_model(nodes, inputs, outputs, inits, path: Path) -> Path:
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def build_mlp(dest: Path) -> Built:
    """input [batch, 8] -> fc1 (MatMul) -> relu1 -> fc2 (MatMul) -> out [batch, 4]: the healthy model."""
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((8, 8)) / np.sqrt(8)).astype(np.float32)
    w2 = (rng.standard_normal((8, 4)) / np.sqrt(8)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["input", "w1"], ["fc1_out"], name="fc1"),
             helper.make_node("Relu", ["fc1_out"], ["relu1_out"], name="relu1"),
             helper.make_node("MatMul", ["relu1_out", "w2"], ["out"], name="fc2")]
    model = _save_model(nodes, [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 8])],
                        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 4])],
                        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")], dest / "mlp.onnx")
    x = rng.standard_normal((N_CALIB + N_EVAL, 8)).astype(np.float32)
    np.savez(dest / "mlp_calib.npz", input=x[:N_CALIB])
    np.savez(dest / "mlp_eval.npz", input=x[N_CALIB:])
    np.save(dest / "w1.npy", w1)
    return Built(model, dest / "mlp_calib.npz", dest / "mlp_eval.npz", {"w1": dest / "w1.npy", "eval_x": x[N_CALIB:]})


def build_gather(dest: Path) -> Built:
    """ids int64 [batch, 4] -> embed (Gather from a 10-row table) -> fc (MatMul): the evaluation data holds an
    index beyond the table, which ONNX Runtime rejects only when it runs."""
    rng = np.random.default_rng(1)
    table = rng.standard_normal((10, 8)).astype(np.float32)
    w = rng.standard_normal((8, 4)).astype(np.float32)
    nodes = [helper.make_node("Gather", ["table", "ids"], ["emb"], name="embed", axis=0),
             helper.make_node("MatMul", ["emb", "w"], ["out"], name="fc")]
    model = _save_model(nodes, [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 4])],
                        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 4, 4])],
                        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(w, "w")],
                        dest / "gather.onnx")
    ids = rng.integers(0, 10, (N_CALIB + N_EVAL, 4)).astype(np.int64)
    np.savez(dest / "gather_calib.npz", ids=ids[:N_CALIB])
    bad = ids[N_CALIB:].copy()
    bad[3, 2] = 50
    np.savez(dest / "gather_eval.npz", ids=bad)
    return Built(model, dest / "gather_calib.npz", dest / "gather_eval.npz")


def build_log(dest: Path) -> Built:
    """input [batch, 8] -> fc1 (MatMul) -> log (Log) -> fc2: finite data, NaN inside (log of negative values)."""
    rng = np.random.default_rng(2)
    w1 = rng.standard_normal((8, 8)).astype(np.float32)
    w2 = rng.standard_normal((8, 4)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["input", "w1"], ["fc1_out"], name="fc1"),
             helper.make_node("Log", ["fc1_out"], ["log_out"], name="log"),
             helper.make_node("MatMul", ["log_out", "w2"], ["out"], name="fc2")]
    model = _save_model(nodes, [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 8])],
                        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 4])],
                        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")], dest / "log.onnx")
    x = rng.standard_normal((N_CALIB + N_EVAL, 8)).astype(np.float32)
    np.savez(dest / "log_calib.npz", input=x[:N_CALIB])
    np.savez(dest / "log_eval.npz", input=x[N_CALIB:])
    return Built(model, dest / "log_calib.npz", dest / "log_eval.npz")


def build_scalar(dest: Path) -> Built:
    """input [batch, 8] and a rank-0 input gain [] -> fc1 -> scaled (Mul by gain) -> fc2."""
    rng = np.random.default_rng(3)
    w1 = (rng.standard_normal((8, 8)) / np.sqrt(8)).astype(np.float32)
    w2 = (rng.standard_normal((8, 4)) / np.sqrt(8)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["input", "w1"], ["fc1_out"], name="fc1"),
             helper.make_node("Mul", ["fc1_out", "gain"], ["scaled"], name="scale"),
             helper.make_node("MatMul", ["scaled", "w2"], ["out"], name="fc2")]
    model = _save_model(nodes, [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 8]),
                                helper.make_tensor_value_info("gain", TensorProto.FLOAT, [])],
                        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4])],
                        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")], dest / "scalar.onnx")
    x = rng.standard_normal((N_CALIB, 1, 8)).astype(np.float32)
    gain = rng.uniform(0.5, 2.0, N_CALIB).astype(np.float32)
    np.savez(dest / "scalar_plain.npz", input=x, gain=gain)
    np.savez_compressed(dest / "scalar_compressed.npz", input=x, gain=gain)
    return Built(model, dest / "scalar_plain.npz", dest / "scalar_compressed.npz")


def build_wide(dest: Path) -> Built:
    """input [batch, 64, 64, 64] -> conv (1x1, 4 channels) -> relu: 1 MiB per sample, for the memory case."""
    rng = np.random.default_rng(4)
    w = (rng.standard_normal((4, 64, 1, 1)) / 8).astype(np.float32)
    nodes = [helper.make_node("Conv", ["input", "w"], ["conv_out"], name="conv"),
             helper.make_node("Relu", ["conv_out"], ["out"], name="relu")]
    model = _save_model(nodes, [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *WIDE_SAMPLE])],
                        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 4, 64, 64])],
                        [numpy_helper.from_array(w, "w")], dest / "wide.onnx")
    return Built(model, model, model)


def write_inflating_npz(path: Path, samples: int) -> None:
    """A compressed .npz whose one member 'input' holds ``samples`` x 1 MiB of float32, streamed (never held):
    a short periodic pattern, so deflate shrinks 1 GiB to about a megabyte."""
    header = {"descr": "<f4", "fortran_order": False, "shape": (samples, *WIDE_SAMPLE)}
    pattern = np.tile(np.linspace(-1, 1, 64, dtype=np.float32), 64 * 64).tobytes()  # one sample
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        with zf.open("input.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_2_0(f, header)
            for _ in range(samples):
                f.write(pattern)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Built]:
    dest = tmp_path_factory.mktemp("hostile-models")
    return {"mlp": build_mlp(dest), "gather": build_gather(dest), "log": build_log(dest),
            "scalar": build_scalar(dest), "wide": build_wide(dest)}


# --------------------------------------------------------------------------------------------------------
# the user's project and the ways of running pytest on it
# --------------------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    ret: int | None  # None: killed after HANG_TIMEOUT
    out: str
    seconds: float
    maxrss_kib: int | None = None


def _drop_dac_capabilities() -> None:
    """preexec_fn: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set before exec, so a child
    running as root sees read-only folders as read-only (the tests may run as root in CI containers)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


class Project:
    """The user's folder (pytester's directory, or a folder shared by a batch of cases): models/, data/, a
    spec with the hostile entries and ``ok``."""

    def __init__(self, pytester: pytest.Pytester | None, work: Path, built: dict[str, Built],
                 path: Path | None = None) -> None:
        self.pytester = pytester
        self.path = path if path is not None else pytester.path
        self.work = work
        self.built = built
        for sub in ("models", "data"):
            (self.path / sub).mkdir(exist_ok=True)
        mlp = built["mlp"]
        for src, rel in ((mlp.model, "models/mlp.onnx"), (mlp.calib, "data/calib.npz"), (mlp.eval, "data/eval.npz")):
            shutil.copy(src, self.path / rel)

    def unique(self, rel: str) -> str:
        """``rel``, or ``rel`` with a number added when a case of the same batch already wrote it."""
        stem, dot, ext = rel.rpartition(".") if "." in Path(rel).name else (rel, "", "")
        candidate, n = rel, 1
        while (self.path / candidate).exists():
            n += 1
            candidate = f"{stem}_{n}{dot}{ext}"
        return candidate

    @property
    def spec(self) -> Path:
        return self.path / SPEC

    def entry(self, name: str = "bad", **extra) -> dict:
        e = {"name": name, "model": "models/mlp.onnx", "calibration": {"data": "data/calib.npz"},
             "evaluation": {"data": "data/eval.npz"}, "quantization": {"reduce_range": True},
             "modes": ["float", "fixed"], "thresholds": {"cos": 0.98, "rmse": 0.3}}  # 8-wide layers, 7-bit weights
        e.update(extra)
        return e

    def write_spec(self, *entries: dict | str) -> None:
        """Entries are dicts, or YAML text of one list item (for what safe_dump cannot write: big integers,
        anchors); the healthy ``ok`` entry always comes last."""
        text = "quantacc: 1\nmodels:\n"
        for e in (*entries, self.entry("ok")):
            if isinstance(e, str):
                text += e
            else:
                item = yaml.safe_dump([e], sort_keys=False, width=1 << 20)
                text += "".join(f"  {line}\n" for line in item.splitlines())
        self.spec.write_text(text)

    def args(self, *extra: str, workdir: bool = True, cache: bool = False) -> list[str]:
        return ["--quantacc", SPEC, "-v", "-p", "no:randomly", *(["--quantacc-workdir", str(self.work)] * workdir),
                *([] if cache else ["-p", "no:cacheprovider"]), *extra]

    def run(self, *extra: str) -> Outcome:
        """In-process run (fast; for cases that cannot hang or grow)."""
        t0 = time.perf_counter()
        r = self.pytester.runpytest(*self.args(*extra))
        return Outcome(int(r.ret), r.stdout.str() + "\n" + r.stderr.str(), time.perf_counter() - t0)

    def run_child(self, *args: str, memory_limit: bool = False, read_only_aware: bool = False,
                  measure: bool = False, timeout: float = HANG_TIMEOUT) -> Outcome:
        """pytest in a child process of a new session; killed as a group after ``timeout``."""
        cmd = [sys.executable, "-m", "pytest", *args]
        if measure:  # a fresh parent whose only child is the run: RUSAGE_CHILDREN is the run's own peak
            cmd = [sys.executable, "-c", "import resource, subprocess, sys; r = subprocess.call(sys.argv[1:]); "
                   "print('MAXRSS_KIB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r)", *cmd]

        def pre() -> None:
            if memory_limit:
                _limit_memory()
            if read_only_aware:
                _drop_dac_capabilities()

        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=self.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=pre,
                                # a user's local run: CI set (as in .ci/run) refuses --quantacc-baseline-update
                                env={**{k: v for k, v in os.environ.items() if k != "CI"},
                                     "PYTHONFAULTHANDLER": "1"})
        try:
            out, _ = proc.communicate(timeout=timeout)
            ret = proc.returncode
        except subprocess.TimeoutExpired:
            # SIGABRT first: faulthandler prints where the run hangs, which is what the failure should show
            os.kill(proc.pid, signal.SIGABRT)
            try:
                out, _ = proc.communicate(timeout=3)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                out, _ = proc.communicate()
            ret = None
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # anything the run left behind in its session
            except ProcessLookupError:
                pass
        text = out.decode(errors="replace")
        rss = re.search(r"^MAXRSS_KIB (\d+)", text, re.M)
        return Outcome(ret, text, time.perf_counter() - t0, int(rss.group(1)) if rss else None)

    def make_read_only(self, folder: Path) -> None:
        for p in [folder, *folder.rglob("*")]:
            if p.is_dir() and not p.is_symlink():
                p.chmod(0o555)

    def restore_writable(self) -> None:
        for p in [self.path, *self.path.rglob("*")]:
            if p.is_dir() and not p.is_symlink():
                p.chmod(0o755)


@pytest.fixture
def project(pytester: pytest.Pytester, tmp_path: Path, built: dict[str, Built]):
    p = Project(pytester, tmp_path / "work", built)
    yield p
    p.restore_writable()


# --------------------------------------------------------------------------------------------------------
# what a handled case looks like
# --------------------------------------------------------------------------------------------------------


def assert_answered(o: Outcome, within: float | None = None) -> None:
    assert o.ret is not None, f"hung: killed after {o.seconds:.1f} s (exit code None)\n{o.out[-6000:]}"
    if within is not None:
        assert o.seconds < within, f"took {o.seconds:.1f} s (must answer within {within} s; exit code {o.ret})"


def assert_clean(o: Outcome) -> None:
    """No raw traceback, no internal error, no interrupted session, output of a sane size."""
    first = max(0, min((i for i in (o.out.find("Traceback"), o.out.find("INTERNALERROR"), o.out.find("\nE   "))
                        if i >= 0), default=0))
    said = f"(exit code {o.ret}, {o.seconds:.1f} s)\n{o.out[first:first + 3000]}\n...\n{o.out[-3000:]}"
    assert "INTERNALERROR" not in o.out, said
    assert "Traceback" not in o.out, said
    assert "Interrupted" not in o.out, said
    assert not re.search(r"pytest_quantacc[/\\][\w/\\]+\.py:\d+", o.out), said
    assert len(o.out) < 200_000, f"{len(o.out)} characters of output (exit code {o.ret}, {o.seconds:.1f} s)"


def assert_ok_passed(o: Outcome) -> None:
    """The healthy model ran: its convert item and at least one layer passed, nothing of it failed."""
    ok = re.findall(rf"^{re.escape(SPEC)}::ok::(\S+) (PASSED|FAILED|SKIPPED|ERROR|XFAIL)", o.out, re.M)
    assert ("convert", "PASSED") in ok, o.out[-5000:]
    assert sum(s == "PASSED" for _, s in ok) >= 2, ok
    assert not [i for i, s in ok if s in ("FAILED", "ERROR")], ok


def assert_located(project: Project, o: Outcome, key: str, *phrases: str) -> str:
    """One line names the spec file and the key path; the phrases follow on that line (or the next ones)."""
    located = f"{project.spec}: {key}"
    assert located in o.out, f"{located!r} not in output:\n{o.out[-5000:]}"
    at = o.out.index(located)
    message = o.out[at:at + 3000]
    for words in phrases:
        assert words in message, f"{words!r} not in {message[:1500]!r}"
    return message


def assert_handled(project: Project, o: Outcome, key: str, *phrases: str, within: float | None = None) -> None:
    assert_answered(o, within)
    assert_clean(o)
    assert o.ret == pytest.ExitCode.TESTS_FAILED, f"exit code {o.ret}\n{o.out[-5000:]}"
    assert_located(project, o, key, *phrases)
    assert_ok_passed(o)


# --------------------------------------------------------------------------------------------------------
# setups: each writes what the case needs into the project and returns the hostile model entry
# --------------------------------------------------------------------------------------------------------


def _fifo(project: Project, rel: str) -> str:
    os.mkfifo(project.path / rel)
    return rel


def _symlink(project: Project, rel: str, target: str) -> str:
    (project.path / rel).symlink_to(target)
    return rel


def _big_int() -> str:
    return "1" + "0" * 400  # an integer YAML reads exactly, far beyond float range (1e400)


_BOMBS = itertools.count()


def _bomb(levels: int, width: int = 9) -> str:
    """A "billion laughs" flow sequence: width ** levels leaves from a few hundred characters of YAML (anchors
    named apart per bomb: several share the catalogue's spec, and YAML refuses a duplicate anchor)."""
    b = next(_BOMBS)
    text = f"&b{b}l0 [" + ", ".join(["lol"] * width) + "]"
    for k in range(1, levels):
        text = f"&b{b}l{k} [{text}" + f", *b{b}l{k - 1}" * (width - 1) + "]"
    return text


def _map_bomb(levels: int, width: int = 8) -> str:
    """The mapping form of ``_bomb``: each level a mapping whose values are the level below, width times."""
    b = next(_BOMBS)
    text = f"&m{b}l0 {{" + ", ".join(f"k{i}: 1" for i in range(width)) + "}"
    for k in range(1, levels):
        text = f"&m{b}l{k} {{z: {text}, " + ", ".join(f"k{i}: *m{b}l{k - 1}" for i in range(width)) + "}"
    return text


def _sparse(project: Project, rel: str, size: int) -> str:
    """A file of ``size`` bytes that takes no disk space (a hole): sizes beyond a read bound cost nothing."""
    with open(project.path / rel, "wb") as f:
        f.truncate(size)
    return rel


def _dump_files(project: Project, folder: str, nan: bool = False) -> str:
    """Float dumps of relu1_out per evaluation sample (npz format), computed with numpy from the model's
    weights; one value NaN when asked."""
    mlp = project.built["mlp"]
    w1 = np.load(mlp.extra["w1"])
    folder = project.unique(folder)
    out = project.path / folder
    out.mkdir(parents=True)
    for i, x in enumerate(mlp.extra["eval_x"]):
        y = np.maximum(x[None] @ w1, 0).astype(np.float32)
        if nan and i == 2:
            y[0, 3] = np.nan
        np.savez(out / f"sample_{i:04d}.npz", relu1_out=y)
    return folder


def _fifo_in_dumps(project: Project) -> str:
    """A dump folder whose fourth sample's .npz is a FIFO (np.load would wait for a writer forever)."""
    folder = _dump_files(project, "dumps")
    (project.path / folder / "sample_0003.npz").unlink()
    os.mkfifo(project.path / folder / "sample_0003.npz")
    return folder


SIMULATOR = '''
"""A vendor simulator stand-in: writes relu1_out dumps for each sample in {inputs}; misbehaves on request."""
import pathlib, subprocess, sys, time
import numpy as np

mode, inputs, out, pidfile = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3]), sys.argv[4]
w1 = np.load(pathlib.Path(__file__).parent / "w1.npy")
sleeper = [sys.executable, "-c", "import time; time.sleep(40)"]
if mode == "grandchild":  # a child that outlives the timeout unless its whole process group is killed
    child = subprocess.Popen(sleeper, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pathlib.Path(pidfile).write_text(str(child.pid))
    time.sleep(40)
for i, f in enumerate(sorted(inputs.glob("*.npz"))):
    x = np.load(f)["input"]
    np.savez(out / f"sample_{i:04d}.npz", relu1_out=np.maximum(x @ w1, 0).astype(np.float32))
if mode == "stdout-open":  # finished; a helper it started keeps the inherited stdout and stderr open
    child = subprocess.Popen(sleeper)
    pathlib.Path(pidfile).write_text(str(child.pid))
print("dumped", flush=True)
'''


def _command_entry(project: Project, command, timeout: float = 60) -> dict:
    (project.path / "sim.py").write_text(SIMULATOR)
    shutil.copy(project.built["mlp"].extra["w1"], project.path / "w1.npy")
    return project.entry(evaluation={"data": "data/eval.npz"},
                         dumps={"fixed": {"command": command, "format": "npz", "timeout": timeout}})


def _metric(project: Project, body: str, labels: np.ndarray | None = None, name: str = "metric.py") -> dict:
    name, label_file = project.unique(name), project.unique("data/labels.npy")
    (project.path / name).write_text(f"import numpy as np\n\ndef score(outputs, labels):\n{body}\n")
    np.save(project.path / label_file, np.zeros(N_EVAL, np.int64) if labels is None else labels)
    return project.entry(evaluation={"data": "data/eval.npz", "labels": label_file},
                         accuracy={"max_drop": 0.5, "metric": f"{name}:score"}, modes=["float", "fixed", "offline"])


def _unsupported_zip_version(project: Project) -> dict:
    """The calibration .npz with its central directory's "version needed to extract" set to 9.9."""
    data = bytearray((project.path / "data/calib.npz").read_bytes())
    at = data.index(b"PK\x01\x02")
    data[at + 6:at + 8] = (99).to_bytes(2, "little")
    (project.path / "data/v99.npz").write_bytes(bytes(data))
    return project.entry(calibration={"data": "data/v99.npz"})


def _npz_folder_with_subfolder(project: Project) -> dict:
    folder = project.path / "data/samples"
    folder.mkdir()
    x = np.load(project.path / "data/calib.npz")["input"]
    for i in range(4):
        np.savez(folder / f"s{i}.npz", input=x[i:i + 1])
    (folder / "x.npz").mkdir()
    return project.entry(calibration={"data": "data/samples"})


def _copy_built(project: Project, which: str) -> Built:
    b = project.built[which]
    for src, rel in ((b.model, f"models/{which}.onnx"), (b.calib, f"data/{which}_calib.npz"),
                     (b.eval, f"data/{which}_eval.npz")):
        if not (project.path / rel).exists():
            shutil.copy(src, project.path / rel)
    return b


def _gather(project: Project) -> dict:
    _copy_built(project, "gather")
    return project.entry(model="models/gather.onnx", calibration={"data": "data/gather_calib.npz"},
                         evaluation={"data": "data/gather_eval.npz"})


def _log_nan(project: Project) -> dict:
    _copy_built(project, "log")
    return project.entry(model="models/log.onnx", calibration={"data": "data/log_calib.npz"},
                         evaluation={"data": "data/log_eval.npz"})


@dataclass(frozen=True)
class Case:
    """One catalogue row: class of the issue, id, setup (returns the hostile entry), key path, phrases."""

    cls: int
    cid: str
    setup: Callable[[Project], dict | str]
    key: str
    phrases: tuple[str, ...] = ()
    child: bool = False  # could hang or grow without bound before the fix (the batch runs in a child process)
    memory_limit: bool = False  # could grow without bound (the batch runs under MEMORY_LIMIT)


def case(cls: int, cid: str, setup, key: str, *phrases: str, child: bool = False, memory_limit: bool = False):
    return pytest.param(Case(cls, f"c{cls}-{cid}", setup, key, phrases, child, memory_limit), id=f"c{cls}-{cid}")


CATALOGUE = [
    # 1. files are read before their type is checked
    case(1, "model-is-a-directory", lambda p: p.entry(model="models"), "models[0].model", "directory"),
    case(1, "model-is-dev-zero", lambda p: p.entry(model="/dev/zero"), "models[0].model", "/dev/zero", child=True),
    case(1, "model-is-a-fifo", lambda p: p.entry(model=_fifo(p, "models/pipe.onnx")), "models[0].model",
         "pipe.onnx", child=True),
    case(1, "model-symlink-to-fifo",
         lambda p: p.entry(model=_fifo(p, "models/p2") and _symlink(p, "models/link.onnx", "p2")),
         "models[0].model", "link.onnx", child=True),
    case(1, "model-symlink-to-dev-zero", lambda p: p.entry(model=_symlink(p, "models/zero.onnx", "/dev/zero")),
         "models[0].model", "zero.onnx", child=True),
    case(1, "calibration-is-dev-zero-npz", lambda p: p.entry(
        calibration={"data": _symlink(p, "data/zero.npz", "/dev/zero")}), "models[0].calibration.data", "zero.npz",
         child=True, memory_limit=True),
    case(1, "evaluation-is-a-fifo", lambda p: p.entry(evaluation={"data": _fifo(p, "data/pipe.npz")}),
         "models[0].evaluation.data", "pipe.npz", child=True),
    case(1, "data-folder-with-subfolder-x.npz", _npz_folder_with_subfolder, "models[0].calibration.data", "x.npz"),
    case(1, "calibration-npz-is-a-directory", lambda p: (p.path / "data/dir.npz").mkdir() or p.entry(
        calibration={"data": "data/dir.npz"}), "models[0].calibration.data", "dir.npz"),
    case(1, "dequantize-file-is-dev-zero", lambda p: p.entry(dumps={"fixed": {
        "path": _dump_files(p, "dumps"), "format": "npz", "dequantize": {"file": "/dev/zero"}}}),
         "models[0].dumps.fixed.dequantize.file", "/dev/zero", child=True, memory_limit=True),
    case(1, "labels-are-a-directory", lambda p: p.entry(evaluation={"data": "data/eval.npz", "labels": "data"},
                                                       accuracy={"max_drop": 0.5}, modes=["float", "fixed", "offline"]),
         "models[0].evaluation.labels", "directory"),
    case(1, "metric-module-is-a-directory", lambda p: (p.path / "mdir.py").mkdir() or _metric(
        p, "    return 1.0", name="other.py") | {"accuracy": {"max_drop": 0.5, "metric": "mdir.py:score"}},
         "models[0].accuracy.metric", "mdir.py"),
    case(1, "labels-are-a-fifo", lambda p: p.entry(evaluation={"data": "data/eval.npz", "labels": _fifo(
        p, "data/labels.fifo")}, accuracy={"max_drop": 0.5}, modes=["float", "fixed", "offline"]),
         "models[0].evaluation.labels", "FIFO", child=True),
    case(1, "dequantize-file-of-100-mb", lambda p: p.entry(dumps={"fixed": {
        "path": _dump_files(p, "dumps"), "format": "npz", "dequantize": {"file": _sparse(p, "q.json", 100 << 20)}}}),
         "models[0].dumps.fixed.dequantize.file", "q.json", "bytes"),
    case(1, "hook-is-a-directory", lambda p: (p.path / "hdir.py").mkdir() or p.entry(
        preprocess={"input": "float32", "layout": "NCHW", "hook": "hdir.py:f"}), "models[0].preprocess.hook",
         "hdir.py", "directory"),
    case(1, "dumps-path-is-a-file", lambda p: p.entry(dumps={"fixed": {"path": "data/eval.npz", "format": "npz"}}),
         "models[0].dumps.fixed.path", "eval.npz", "not a folder"),
    case(1, "dump-file-is-a-fifo", lambda p: p.entry(dumps={"fixed": {"path": _fifo_in_dumps(p), "format": "npz"}}),
         "models[0].dumps.fixed", "sample_0003.npz", "not a regular file", child=True),
    # 2. error messages embed repr() of the offending value
    case(2, "alias-bomb-6-levels-as-method", lambda p: "  - name: bad\n    model: models/mlp.onnx\n"
         "    calibration: {data: data/calib.npz}\n    quantization: {method: " + _bomb(6) + "}\n",
         "models[0].quantization.method", "not one of"),
    case(2, "alias-bomb-6-levels-as-mode", lambda p: "  - name: bad\n    model: models/mlp.onnx\n"
         "    calibration: {data: data/calib.npz}\n    modes: [float, " + _bomb(6) + "]\n",
         "models[0].modes[1]", "not one of"),
    case(2, "alias-bomb-9-levels-as-activations", lambda p: "  - name: bad\n    model: models/mlp.onnx\n"
         "    calibration: {data: data/calib.npz}\n    quantization: {activations: " + _bomb(9) + "}\n",
         "models[0].quantization.activations", child=True, memory_limit=True),
    case(2, "alias-bomb-7-levels-as-cos", lambda p: "  - name: bad\n    model: models/mlp.onnx\n"
         "    calibration: {data: data/calib.npz}\n    thresholds: {cos: " + _bomb(7) + "}\n",
         "models[0].thresholds.cos", "expected a number"),
    case(2, "alias-bomb-9-levels-as-extra-options", lambda p: "  - name: bad\n    model: models/mlp.onnx\n"
         "    calibration: {data: data/calib.npz}\n    quantization: {extra_options: " + _map_bomb(9) + "}\n",
         "models[0].quantization.extra_options", "more than 10,000 values", child=True),
    case(2, "megabyte-string-as-method", lambda p: p.entry(quantization={"method": "x" * (1 << 20)}),
         "models[0].quantization.method", "not one of"),
    case(2, "megabyte-key", lambda p: p.entry(**{"k" * (1 << 20): 1}), "models[0].kkkk", "unknown key"),
    # 3. exceptions other than the input error during loading or collection interrupt the session
    case(3, "model-symlink-loop", lambda p: p.entry(model=_symlink(p, "models/loop.onnx", "loop.onnx")),
         "models[0].model", "loop.onnx"),
    case(3, "calibration-symlink-loop", lambda p: p.entry(calibration={"data": _symlink(p, "data/a.npz", "b.npz")})
         if _symlink(p, "data/b.npz", "a.npz") else None, "models[0].calibration.data", "a.npz"),
    case(3, "rmse-big-integer", lambda p: "  - name: bad\n    model: models/mlp.onnx\n"
         f"    calibration: {{data: data/calib.npz}}\n    thresholds: {{rmse: {_big_int()}}}\n",
         "models[0].thresholds.rmse"),
    case(3, "baseline-tolerance-big-integer", lambda p: "  - name: bad\n    model: models/mlp.onnx\n"
         f"    calibration: {{data: data/calib.npz}}\n    baseline: {{tolerance: {{rmse: {_big_int()}}}}}\n",
         "models[0].baseline.tolerance.rmse"),
    case(3, "max-drop-big-integer", lambda p: "  - name: bad\n    model: models/mlp.onnx\n"
         "    calibration: {data: data/calib.npz}\n    evaluation: {data: data/eval.npz, labels: data/eval.npz}\n"
         f"    accuracy: {{max_drop: {_big_int()}}}\n", "models[0].accuracy.max_drop"),
    case(3, "dequantize-scale-big-integer", lambda p: "  - name: bad\n    model: models/mlp.onnx\n"
         f"    calibration: {{data: data/calib.npz}}\n    dumps: {{fixed: {{path: {_dump_files(p, 'dumps')}, "
         f"format: npz, dequantize: {{scale: {_big_int()}}}}}}}\n", "models[0].dumps.fixed.dequantize.scale"),
    case(3, "preprocess-mean-big-integer", lambda p: "  - name: bad\n    model: models/mlp.onnx\n"
         f"    calibration: {{data: data/calib.npz}}\n    preprocess: {{input: uint8, mean: {_big_int()}}}\n",
         "models[0].preprocess"),
    case(3, "name-with-nul", lambda p: p.entry(name="bad\0name"), "models[0].name"),
    case(3, "name-300-characters", lambda p: p.entry(name="b" * 300), "models[0].name"),
    case(3, "name-with-newline", lambda p: p.entry(name="bad\nname"), "models[0].name", "control characters"),
    case(3, "name-with-backslash", lambda p: p.entry(name="..\\up"), "models[0].name", "may not contain"),
    case(3, "name-of-60-four-byte-characters", lambda p: p.entry(name="\U0001F600" * 60), "models[0].name", "bytes"),
    # 4. unexpected errors during evaluation
    case(4, "ort-gather-index-out-of-range", _gather, "models[0].evaluation.data", "Gather"),
    case(4, "metric-raises-systemexit", lambda p: _metric(p, "    raise SystemExit(3)"), "models[0].accuracy.metric",
         "SystemExit"),
    case(4, "metric-raises-keyerror", lambda p: _metric(p, "    raise KeyError('logits')"),
         "models[0].accuracy.metric", "KeyError"),
    case(4, "metric-returns-a-string", lambda p: _metric(p, "    return 'high'"), "models[0].accuracy.metric"),
    case(4, "names-template-missing-group", lambda p: p.entry(dumps={"fixed": {
        "path": _dump_files(p, "dumps"), "format": "npz", "names": {"re:(.+)": "\\5"}}}), "models[0].dumps.fixed.names",
         "\\5"),
    case(4, "zip-unsupported-version", _unsupported_zip_version, "models[0].calibration.data", "v99.npz"),
    # 5. the command backend
    case(5, "placeholder-format-spec-d", lambda p: _command_entry(p, ["{python}", "sim.py", "{model:d}"]),
         "models[0].dumps.fixed.command", "{model:d}"),
    case(5, "placeholder-huge-width", lambda p: _command_entry(p, ["{python}", "sim.py", "{out:>3000000000}"]),
         "models[0].dumps.fixed.command", "{out:>3000000000}", child=True, memory_limit=True),
    case(5, "placeholder-attribute-access", lambda p: _command_entry(p, ["{python}", "{model.__class__}"]),
         "models[0].dumps.fixed.command", "{model.__class__}"),
    case(5, "timeout-big-integer", lambda p: "  - name: bad\n    model: models/mlp.onnx\n"
         "    calibration: {data: data/calib.npz}\n    dumps: {fixed: {command: [\"{python}\", sim.py], "
         f"timeout: {_big_int()}}}}}\n", "models[0].dumps.fixed.timeout"),
    case(5, "placeholder-conversion", lambda p: _command_entry(p, ["{python}", "sim.py", "{model!r}"]),
         "models[0].dumps.fixed.command", "{model!r}"),
    case(5, "placeholder-index", lambda p: _command_entry(p, ["{python}", "sim.py", "{model[0]}"]),
         "models[0].dumps.fixed.command", "model[0]"),
    # 6. wrong or silent answers
    case(6, "nan-in-a-float-dump", lambda p: p.entry(dumps={"fixed": {"path": _dump_files(p, "dumps", nan=True),
                                                                     "format": "npz"}}),
         "models[0].dumps.fixed", "NaN", "sample_0002"),
    case(6, "string-labels", lambda p: _metric(p, "    return 1.0", labels=np.array(["cat"] * N_EVAL)) | {
        "accuracy": {"max_drop": 0.5}}, "models[0].evaluation.labels", "labels", "integer"),
    case(6, "layers-glob-matches-no-layer", lambda p: p.entry(layers={"relu_1": {"cos": 0.9}}),
         "models[0].layers", "relu_1", "did you mean 'relu1'"),
    case(6, "known-bad-matches-no-layer", lambda p: p.entry(known_bad=[{"layer": "fc_2", "reason": "outlier"}]),
         "models[0].known_bad[0].layer", "fc_2", "did you mean 'fc2'"),
    case(6, "nan-inside-the-model", _log_nan, "models[0].quantization", "log_out", "NaN"),
]


@dataclass(frozen=True)
class Batch:
    """One pytest session over a spec holding every catalogue entry (model i is catalogue row i) and ``ok``."""

    project: Project
    outcome: Outcome
    index: dict[str, int]


def _named(entry: dict | str, name: str) -> dict | str:
    """The entry named after its case (entries whose name is the hostile part keep it)."""
    if isinstance(entry, str):
        return entry.replace("  - name: bad\n", f"  - name: {name}\n", 1)
    return {**entry, "name": name} if entry.get("name") == "bad" else entry


@pytest.fixture(scope="module")
def batch(tmp_path_factory, built: dict[str, Built]):
    """Every catalogue entry in one spec, run once in a child process of its own session, under the memory
    limit and killed as a group on timeout: one pytest start instead of one per case (a fresh pytest with
    ONNX Runtime costs seconds), and a stronger check that the session goes on: every hostile entry at once,
    and the healthy model still passes."""
    root = tmp_path_factory.mktemp("catalogue")
    (root / "project").mkdir()
    project = Project(None, root / "work", built, path=root / "project")
    rows = [param.values[0] for param in CATALOGUE]
    project.write_spec(*(_named(c.setup(project), c.cid) for c in rows))
    outcome = project.run_child(*project.args(), memory_limit=any(c.memory_limit for c in rows),
                                timeout=BATCH_TIMEOUT)
    yield Batch(project, outcome, {c.cid: i for i, c in enumerate(rows)})
    project.restore_writable()


@pytest.mark.parametrize("c", CATALOGUE)
def test_catalogue(batch: Batch, c: Case) -> None:
    key = c.key.replace("models[0]", f"models[{batch.index[c.cid]}]", 1)
    assert_handled(batch.project, batch.outcome, key, *c.phrases, within=BATCH_WITHIN if c.child else None)


# --------------------------------------------------------------------------------------------------------
# cases of their own shape
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["..", "."])
def test_dot_model_names_stay_in_the_spec_folder(project: Project, name: str) -> None:
    """Class 3: '..' as a model name put artifacts into the work folder's root (shared across specs). Either the
    name is refused at models[0].name, or its artifacts live under the spec's own work folder."""
    project.write_spec(project.entry(name))
    o = project.run()
    assert_answered(o)
    assert_clean(o)
    assert_ok_passed(o)
    # every model's artifacts sit at <work>/<spec folder>/<model folder>/: nothing in the root or a spec folder
    misplaced = [str(p.relative_to(project.work)) for p in project.work.rglob("*.onnx")
                 if len(p.relative_to(project.work).parts) != 3 or p.parent.name in ("..", ".")]
    assert not misplaced, misplaced
    if o.ret != pytest.ExitCode.OK:
        assert_located(project, o, "models[0].name")


def test_name_with_slash_is_refused(project: Project) -> None:
    """Class 3 (guard): a name with '/' is refused already; it must stay so."""
    project.write_spec(project.entry("../escape"))
    assert_handled(project, project.run(), "models[0].name", "may not contain")


def test_ort_failure_is_reported_once(project: Project) -> None:
    """Class 4: a run-time failure of ONNX Runtime is computed once and reported once (not per item)."""
    project.write_spec(_gather(project))
    o = project.run()
    assert_handled(project, o, "models[0]")
    failures = o.out.split("quantacc summary")[0]  # the summary line of the model quotes it once more
    assert failures.count(f"{project.spec}: models[0]") == 1, failures.count(f"{project.spec}: models[0]")
    assert len(re.findall(rf"^{re.escape(SPEC)}::bad::\S+ FAILED", o.out, re.M)) == 1


def _pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in state


def _kill(pid_file: Path) -> None:
    if pid_file.is_file():
        try:
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def test_command_timeout_kills_the_simulators_children(project: Project, tmp_path: Path) -> None:
    """Class 5: on timeout the whole process group goes, not only the direct child."""
    pid_file = tmp_path / "grandchild.pid"
    project.write_spec(_command_entry(project, ["{python}", "sim.py", "grandchild", "{inputs}", "{out}",
                                                str(pid_file)], timeout=2))
    try:
        o = project.run()
        assert_handled(project, o, "models[0].dumps.fixed.command", "timed out")
        assert pid_file.is_file(), "the simulator did not start its child"
        time.sleep(0.3)
        assert not _pid_alive(int(pid_file.read_text())), "the simulator's child outlived the timeout"
    finally:
        _kill(pid_file)


def test_command_child_holding_stdout_does_not_turn_success_into_timeout(project: Project, tmp_path: Path) -> None:
    """Class 5: the command exited 0 after writing its dumps; a helper it left running holds the pipes."""
    pid_file = tmp_path / "helper.pid"
    project.write_spec(_command_entry(project, ["{python}", "sim.py", "stdout-open", "{inputs}", "{out}",
                                                str(pid_file)], timeout=12))
    try:
        o = project.run()  # in-process: were the pipes waited on again, the 12 s timeout would end it
        assert_answered(o, within=ANSWER_WITHIN)
        assert_clean(o)
        assert "timed out" not in o.out, o.out[-3000:]
        assert re.search(rf"^{re.escape(SPEC)}::bad::convert PASSED", o.out, re.M), o.out[-3000:]
        assert_ok_passed(o)
        assert pid_file.is_file(), "the simulator did not start its helper"
        time.sleep(0.3)
        assert not _pid_alive(int(pid_file.read_text())), "the helper outlived the session"
    finally:
        _kill(pid_file)


def test_command_is_never_given_to_a_shell(project: Project) -> None:
    """Class 5 (guard): shell syntax in the command string, the arguments and the model's file name stays inert."""
    weird = project.path / "models" / "$(touch PWNED_MODEL) `touch PWNED_TICK`.onnx"
    shutil.copy(project.path / "models/mlp.onnx", weird)
    entry = _command_entry(project, "{python} sim.py plain {inputs} {out} x ; touch PWNED_SEMI && "
                                    "$(touch PWNED_SUBST) | touch PWNED_PIPE {model}")
    entry["model"] = str(weird.relative_to(project.path))
    project.write_spec(entry)
    o = project.run()
    assert_answered(o)
    assert_clean(o)
    assert not list(project.path.rglob("PWNED*")) and not list(Path.cwd().glob("PWNED*")), \
        list(project.path.rglob("PWNED*"))
    assert_ok_passed(o)


def test_rank0_input_in_compressed_npz_works_like_uncompressed(project: Project) -> None:
    """Class 6: a scalar input read from a compressed .npz gives the same outcome as from an uncompressed one."""
    b = _copy_built(project, "scalar")
    shutil.copy(b.calib, project.path / "data/scalar_plain.npz")
    shutil.copy(b.eval, project.path / "data/scalar_compressed.npz")
    plain = project.entry("plain", model="models/scalar.onnx", calibration={"data": "data/scalar_plain.npz"},
                          evaluation={"data": "data/scalar_plain.npz"})
    packed = project.entry("packed", model="models/scalar.onnx", calibration={"data": "data/scalar_compressed.npz"},
                           evaluation={"data": "data/scalar_compressed.npz"})
    project.write_spec(plain, packed)
    o = project.run()
    assert_answered(o)
    assert_clean(o)
    assert_ok_passed(o)
    outcomes = {m: re.findall(rf"^{re.escape(SPEC)}::{m}::(\S+) (PASSED|FAILED|SKIPPED|ERROR)", o.out, re.M)
                for m in ("plain", "packed")}
    assert ("convert", "PASSED") in outcomes["plain"], o.out[-4000:]
    assert outcomes["packed"] == outcomes["plain"], outcomes


def test_threads_minus_one_is_a_usage_error(project: Project) -> None:
    """Class 6: --quantacc-threads -1 is refused, naming the option."""
    project.write_spec()
    o = project.run("--quantacc-threads", "-1")
    assert o.ret == pytest.ExitCode.USAGE_ERROR, f"exit code {o.ret}\n{o.out[-3000:]}"
    assert "--quantacc-threads" in o.out
    assert_clean(o)


def test_read_only_root(project: Project) -> None:
    """Class 7: --quantacc with the default cache in a read-only root: pytest's own cache warning, no error; the
    models run in a temporary work folder (one header line says so) and a plain test file runs as well."""
    (project.path / "test_plain.py").write_text("def test_plain():\n    assert True\n")
    project.write_spec()
    project.make_read_only(project.path)
    o = project.run_child(*project.args("test_plain.py", workdir=False, cache=True), read_only_aware=True)
    assert_answered(o)
    assert_clean(o)
    assert o.ret == pytest.ExitCode.OK, f"exit code {o.ret}\n{o.out[-4000:]}"
    assert re.search(r"^test_plain.py::test_plain PASSED", o.out, re.M), o.out[-3000:]
    assert o.out.count("cache folder cannot be written") == 1, o.out[-3000:]
    assert_ok_passed(o)


def test_outputs_into_read_only_folders(project: Project) -> None:
    """Class 7: outputs that cannot be written (read-only folders) are one line each, naming the option and the
    path, and the run fails (exit 1); the models' own items still ran and passed."""
    project.write_spec()
    (project.path / "ro").mkdir()
    options = {"--quantacc-baseline-update": [], "--quantacc-report": ["ro/report.json"],
               "--quantacc-html": ["ro/report.html"]}
    project.make_read_only(project.path)
    o = project.run_child(*project.args(*[a for k, v in options.items() for a in (k, *v)]), read_only_aware=True)
    assert_answered(o)
    assert_clean(o)
    assert o.ret == pytest.ExitCode.TESTS_FAILED, f"exit code {o.ret}\n{o.out[-4000:]}"
    for option, value in options.items():
        line = next((x for x in o.out.splitlines() if x.startswith(f"quantacc: ERROR: {option}: cannot write")), "")
        assert (value[0] if value else "spec.baseline.json") in line and "ermission denied" in line, o.out[-3000:]
    assert_ok_passed(o)


def test_workdir_read_only_is_a_usage_error(project: Project) -> None:
    """Class 7: --quantacc-workdir into a read-only folder: a usage error naming the option, nothing runs."""
    project.write_spec()
    (project.path / "ro").mkdir()
    project.make_read_only(project.path / "ro")
    o = project.run_child(*project.args("--quantacc-workdir", "ro/work", workdir=False), read_only_aware=True)
    assert_answered(o)
    assert_clean(o)
    assert o.ret == pytest.ExitCode.USAGE_ERROR, f"exit code {o.ret}\n{o.out[-3000:]}"
    assert "--quantacc-workdir ro/work: cannot write there" in o.out, o.out[-3000:]


def test_html_report_pointing_at_a_directory(project: Project) -> None:
    """Class 7: --quantacc-html <a directory>: a message naming the option, no traceback."""
    project.write_spec()
    (project.path / "html").mkdir()
    o = project.run("--quantacc-html", "html")
    assert_answered(o)
    assert_clean(o)
    assert o.ret == pytest.ExitCode.TESTS_FAILED, f"exit code {o.ret}\n{o.out[-4000:]}"
    assert "--quantacc-html" in o.out
    assert_ok_passed(o)


def test_fix_into_read_only_folder(project: Project) -> None:
    """Class 7: --quantacc-fix when the spec's folder is read-only: the verified patch cannot be written; one
    message says so (the model with a planted weight outlier gets a verified per-channel remedy)."""
    planted = zoo.weight_outlier_cnn(project.path / "zoo")
    shutil.copy(planted.model, project.path / "models/outlier.onnx")
    shutil.copy(planted.calib, project.path / "data/outlier.npz")
    shutil.rmtree(project.path / "zoo")
    project.write_spec(project.entry(model="models/outlier.onnx", calibration={"data": "data/outlier.npz"},
                                     evaluation={"data": "data/outlier.npz"}, thresholds={"cos": 0.99, "rmse": 0.1}))
    project.make_read_only(project.path)
    o = project.run_child(*project.args("--quantacc-fix", "--quantacc-remedies", "3"), read_only_aware=True)
    assert_answered(o)
    assert_clean(o)
    assert o.ret == pytest.ExitCode.TESTS_FAILED, f"exit code {o.ret}\n{o.out[-4000:]}"
    assert "fix.yaml" in o.out, o.out[-3000:]
    assert_ok_passed(o)


def test_inflating_member_memory_follows_samples_read(project: Project) -> None:
    """Class 8: a ~1 MB compressed .npz whose member inflates to 1 GiB, with limit 8: peak memory follows the
    8 samples read (bounded well below the member's size), and the run answers in seconds."""
    shutil.copy(project.built["wide"].model, project.path / "models/wide.onnx")
    write_inflating_npz(project.path / "data/huge.npz", 1024)
    assert (project.path / "data/huge.npz").stat().st_size < 8 << 20
    project.write_spec(project.entry(model="models/wide.onnx", calibration={"data": "data/huge.npz", "limit": 8},
                                     evaluation={"data": "data/huge.npz", "limit": 8}))
    o = project.run_child(*project.args(), measure=True, timeout=60)
    assert_answered(o, within=30)
    assert_clean(o)
    assert o.maxrss_kib is not None, o.out[-2000:]
    assert o.maxrss_kib < 600 * 1024, f"peak RSS {o.maxrss_kib / 1024:.0f} MiB"
    assert re.search(rf"^{re.escape(SPEC)}::bad::convert PASSED", o.out, re.M), o.out[-3000:]
    assert_ok_passed(o)


def test_user_modules_are_imported_without_bytecode(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    """Class 9: importing the user's metric module writes no __pycache__ into the user's folder, also where
    Python writes bytecode by default (this environment may set PYTHONDONTWRITEBYTECODE, hiding the bug)."""
    monkeypatch.delenv("PYTHONDONTWRITEBYTECODE", raising=False)
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    project.write_spec(_metric(project, "    return float(np.mean(outputs.argmax(-1) == labels))"))
    o = project.run()
    assert_answered(o)
    assert_clean(o)
    assert re.search(rf"^{re.escape(SPEC)}::bad::accuracy PASSED", o.out, re.M), o.out[-3000:]
    assert not list(project.path.rglob("__pycache__")), list(project.path.rglob("__pycache__"))


# --------------------------------------------------------------------------------------------------------
# class 7 (interrupted runs) and the spec file itself
# --------------------------------------------------------------------------------------------------------


LEFTOVERS = (".q.dead1", ".opt.dead2", ".command-fixed.dead3")  # temporary folders of a killed run


def _kill_aftermath(project: Project, marker: bool) -> Path:
    """What a run killed after rewriting ``fixed.onnx`` but before sealing leaves in the ``ok`` model's folder:
    a fixed.onnx that differs from the sealed one, temporary folders and files, and (``marker``) the marker
    that says the folder was open."""
    workdir = next(project.work.glob("*/ok"))
    (workdir / "fixed.onnx").write_bytes((workdir / "fixed.onnx").read_bytes() + b"\0")
    for name in LEFTOVERS:
        (workdir / name).mkdir()
        (workdir / name / "partial.onnx").write_bytes(b"half")
    (workdir / "float-inferred.onnx").write_bytes(b"half")
    (workdir / ".manifest.json.x1.tmp").write_text("{")
    if marker:
        (workdir / "unsealed").touch()
    return workdir


@pytest.mark.parametrize("killed", [True, False], ids=["killed-before-seal", "modified-after-seal"])
def test_interrupted_run_is_rebuilt_quietly(project: Project, killed: bool) -> None:
    """Class 7: a folder whose previous run was killed before sealing is rebuilt without a word, and what that
    run left (quantizer and preparation temp folders, float-inferred.onnx, temporary files) is removed; a file
    changed after its seal is still reported (the control: the same damage without the marker)."""
    project.write_spec()
    first = project.run()
    assert first.ret == pytest.ExitCode.OK, first.out[-3000:]
    workdir = _kill_aftermath(project, marker=killed)
    o = project.run()
    if killed:
        assert_clean(o)
        assert "failed the checksum" not in o.out, o.out[-3000:]
    else:  # the warning's summary names its source line, which assert_clean would take for a traceback
        assert "Traceback" not in o.out and "INTERNALERROR" not in o.out, o.out[-3000:]
        assert "fixed.onnx in" in o.out and "failed the checksum" in o.out, o.out[-3000:]
    assert o.ret == pytest.ExitCode.OK, o.out[-3000:]
    assert_ok_passed(o)
    left = sorted(p.name for p in workdir.iterdir() if p.name.startswith(".") or "inferred" in p.name)
    assert left == [], left
    assert not (workdir / "unsealed").exists()


@pytest.mark.parametrize("what", ["too-large", "integer-beyond-str-limit", "alias-bomb-as-models",
                                  "alias-bomb-as-defaults"])
def test_hostile_spec_file(project: Project, what: str) -> None:
    """Class 1/2/3, for the spec file itself: one failed ``spec`` item at the spec file, no traceback."""
    if what == "too-large":
        _sparse(project, SPEC, 17 << 20)
        phrase = "bytes"
    elif what == "integer-beyond-str-limit":
        project.spec.write_text("quantacc: 1\nmodels:\n  - name: a\n    thresholds: {rmse: 1" + "0" * 5000 + "}\n")
        phrase = "not valid YAML"
    elif what == "alias-bomb-as-models":
        project.spec.write_text(f"quantacc: 1\nmodels: {_bomb(9)}\n")
        phrase = "expected a mapping"
    else:  # merged into every entry: the merge must not walk the expansion
        project.spec.write_text(f"quantacc: 1\ndefaults: {{quantization: {_map_bomb(9)}}}\nmodels:\n"
                                f"  - {{name: a, quantization: {_map_bomb(9)}}}\n")
        phrase = "more than 100,000 values"
    o = project.run()
    assert_answered(o, within=10)
    assert_clean(o)
    assert o.ret == pytest.ExitCode.TESTS_FAILED, f"exit code {o.ret}\n{o.out[-3000:]}"
    assert f"{project.spec}: " in o.out and phrase in o.out, o.out[-3000:]


# --------------------------------------------------------------------------------------------------------
# the guards themselves, without pytest around them
# --------------------------------------------------------------------------------------------------------


def test_hash_file_opens_only_regular_files(tmp_path: Path) -> None:
    """Class 1: the cache's hashing refuses a FIFO (no writer: an open would block), a folder and /dev/zero (an
    endless read) before reading a byte, and still hashes a regular file."""
    import hashlib

    from pytest_quantacc.convert.workdir import NotRegularFile, hash_file

    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "dir").mkdir()
    t0 = time.perf_counter()
    for odd in (tmp_path / "pipe", tmp_path / "dir", Path("/dev/zero")):
        with pytest.raises(NotRegularFile):
            hash_file(odd)
    assert time.perf_counter() - t0 < 1.0
    (tmp_path / "f").write_bytes(b"abc")
    assert hash_file(tmp_path / "f") == hashlib.sha256(b"abc").hexdigest()


def test_placeholders_are_substituted_literally() -> None:
    """Class 4: a value is inserted as it is (a path holding braces stays a path); doubled braces are braces."""
    from pytest_quantacc.spec.dumps import substitute

    fields = {"out": "/w/{model}:x", "model": "m.onnx"}
    assert substitute("--out={out}/{{n}}", fields) == "--out=/w/{model}:x/{n}"
    assert substitute("{model}{out}", fields) == "m.onnx/w/{model}:x"


def test_shown_is_bounded_for_any_value() -> None:
    """Class 2: the one repr every message uses stays short, and fast, for values no repr could print whole."""
    from pytest_quantacc.spec.node import SHOWN_CHARS, shown

    leaf: list = ["lol"] * 9
    for _ in range(30):  # 9 ** 30 leaves through shared references, like a YAML alias bomb
        leaf = [leaf] * 9
    cyclic: list = []
    cyclic.append(cyclic)
    t0 = time.perf_counter()
    values = [leaf, cyclic, "x" * 10_000_000, 10 ** 5000, {"k" * 1000: leaf}, b"\0" * 10_000_000]
    texts = [shown(v) for v in values]
    assert time.perf_counter() - t0 < 0.5
    assert all(len(text) <= SHOWN_CHARS + 3 for text in texts), [len(text) for text in texts]
    assert texts[2].startswith("'xxxx") and texts[3] == "<int>"


def test_unexpected_collection_error_is_one_failed_item(project: Project) -> None:
    """Class 3: an exception nobody anticipated while collecting a model (here the model's work folder is a
    file, so creating it fails) is one failed ``convert`` item naming the spec and the model entry; the other
    models are collected and run."""
    from pytest_quantacc import load_spec
    from pytest_quantacc.convert.workdir import workdir_for

    project.write_spec(project.entry())
    blocked = workdir_for(project.work, load_spec(project.spec).models[0])
    blocked.parent.mkdir(parents=True)
    blocked.write_text("not a folder")
    o = project.run()
    assert_handled(project, o, "models[0]", "collection failed: FileExistsError")
    assert re.search(rf"^{re.escape(SPEC)}::bad::convert FAILED", o.out, re.M), o.out[-3000:]
