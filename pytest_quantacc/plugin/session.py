"""Per-session state: where artifacts go, and each model's results, computed on first request.

The engine computes a model's results once (``QuantaccRun.evaluate``), through the cache; items, the
summary and the output files read them from here. Under pytest-xdist the controller receives the results
workers computed.
"""

from __future__ import annotations

import fnmatch
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from ..convert.workdir import workdir_for
from ..engine.passes import default_budget, parse_size
from ..engine.progress import Progress
from ..engine.results import BaselineCheck, Evaluated, ModelResult
from ..errors import unexpected
from ..remedy.search import DEFAULT_ATTEMPTS, deepen
from ..remedy.sensitivity import DEFAULT_SAMPLES
from ..spec.model import ModelSpec
from ..spec.parse import load_spec
from ..store.baseline import check_baseline
from ..store.cache import evaluate_cached, locked, restore

_WRITTEN_SUFFIXES = (".fix.yaml",)


def output_path(config: pytest.Config, name: str) -> Path | None:
    """Where to write the report ``name`` (quantacc_report, quantacc_html): the option, relative to the current
    folder, else the ini key, relative to the ini file's folder (as a committed setting means it)."""
    option = config.getoption(name)
    if option:
        return config.invocation_params.dir / option
    ini = config.getini(name)
    if not ini:
        return None
    return (config.inipath.parent if config.inipath is not None else config.rootpath) / ini


class ProgressLines:
    """The engine's phases as lines of pytest's terminal output: ``model: converting ... 10.9 s``.

    A phase's line is written when it starts and completed when it ends, so a long conversion or remedy shows
    what is running. Written with output capturing suspended (the phases run inside an item's ``runtest``),
    as pytest's own live logging does; plain lines, so logs of non-terminal runs read the same. The lines
    interrupt the line of progress letters of the item that asked for the model; :meth:`done` writes that
    line's prefix again (the spec file, or the item's location with ``-v``), so its letter lands after it.
    """

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.open: str | None = None  # the phase whose line waits for its duration
        self.prefix: object = None  # the reporter's line prefix the first phase line interrupted
        self.started = False

    def _reporter(self):
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        capture = self.config.pluginmanager.get_plugin("capturemanager")
        return (reporter, capture) if reporter is not None and capture is not None else (None, None)

    def for_model(self, name: str) -> Progress:
        def tell(label: str, seconds: float | None) -> None:
            reporter, capture = self._reporter()
            if reporter is None:
                return
            key = f"{name}: {label}"
            with capture.global_and_fixture_disabled():
                if seconds is not None and self.open == key:
                    reporter.write(f" {seconds:.1f} s", flush=True)  # completes the open line
                    self.open = None
                    return
                if not self.started:
                    self.started, self.prefix = True, reporter.currentfspath
                    reporter.ensure_newline()
                else:
                    reporter.write("\n")  # each line is ended by the next one, or by done()
                reporter.write(f"{key} ..." + ("" if seconds is None else f" {seconds:.1f} s"), flush=True)
                self.open = key if seconds is None else None
        return tell

    def done(self) -> None:
        """End the last phase line and restore the interrupted line's prefix."""
        if not self.started:
            return
        self.started, self.open = False, None
        reporter, capture = self._reporter()
        if reporter is None:
            return
        with capture.global_and_fixture_disabled():
            if isinstance(self.prefix, Path):
                reporter.write_fspath_result(str(self.prefix.relative_to(self.config.rootpath)), "")
            elif isinstance(self.prefix, str):
                reporter.write_ensure_prefix(self.prefix)
            else:
                reporter.write("\n")
            reporter.flush()


@dataclass
class QuantaccRun:
    """Per-session state: where artifacts go, and each model's results, computed on first request."""

    base: Path
    threads: int
    patterns: tuple[str, ...]
    explicit: frozenset[Path]
    results: dict[tuple[Path, str], ModelResult] = field(default_factory=dict)
    remedies: int = DEFAULT_ATTEMPTS  # remedy attempts for a failing model (0: none)
    use_cache: bool = True
    baseline_update: bool = False
    tolerance_cos: float = 0.001
    tolerance_rmse: float = 0.01
    evaluated: dict[tuple[Path, str], Evaluated] = field(default_factory=dict)
    checks: dict[tuple[Path, str], BaselineCheck] = field(default_factory=dict)
    sent: set[tuple[Path, str]] = field(default_factory=set)  # results this xdist worker sent the controller
    written_baselines: list[Path] = field(default_factory=list)
    memory_budget: int | None = None  # bytes; None: chunking.default_budget() (computed where it is used)
    note: str | None = None  # one line for the header: why artifacts went elsewhere than asked (read-only cache)
    output_errors: list[str] = field(default_factory=list)  # outputs that could not be written, one line each
    remedy_samples: int = DEFAULT_SAMPLES  # evaluation samples the remedy search ranks on
    remedy_time: float | None = None  # seconds the remedy search of one model may take (None: no bound)
    progress: ProgressLines | None = None  # None: quiet (-q, xdist workers)
    temporary: bool = False  # ``base`` is a temp folder of this process (no cache directory): removed at the end

    @classmethod
    def from_config(cls, config: pytest.Config) -> QuantaccRun:
        workdir = config.getoption("quantacc_workdir")
        note = None
        if workdir:
            base = Path(workdir).resolve()
            try:
                base.mkdir(parents=True, exist_ok=True)
                tempfile.TemporaryFile(dir=base).close()
            except OSError as exc:
                raise pytest.UsageError(f"--quantacc-workdir {workdir}: cannot write there "
                                        f"({exc.strerror or exc})") from None
        elif getattr(config, "cache", None) is not None:
            try:
                base = Path(config.cache.mkdir("quantacc"))
                tempfile.TemporaryFile(dir=base).close()  # writable? (pytest only warns about its own cache)
            except OSError as exc:
                base = Path(tempfile.mkdtemp(prefix="quantacc-"))
                note = (f"quantacc: pytest's cache folder cannot be written ({exc.strerror or exc}); models are "
                        f"written under the temporary folder {base} (not reused by later runs; see --quantacc-workdir)")
        else:
            base = Path(tempfile.mkdtemp(prefix="quantacc-"))  # removed at the end (hooks.pytest_unconfigure)
        threads = config.getoption("quantacc_threads")
        if threads < 0:
            raise pytest.UsageError(f"--quantacc-threads: expected 0 (ONNX Runtime decides) or a positive number of "
                                    f"threads, got {threads}")
        here = config.invocation_params.dir
        explicit = frozenset((here / a.split("::")[0]).resolve() for a in config.args)
        remedies = config.getoption("quantacc_remedies", None)
        if remedies is None and config.getini("quantacc_remedies"):
            try:
                remedies = int(config.getini("quantacc_remedies"))
            except ValueError:
                raise pytest.UsageError(f"quantacc_remedies: not a whole number: "
                                        f"{config.getini('quantacc_remedies')!r}") from None
        budget = config.getoption("quantacc_memory_budget") or config.getini("quantacc_memory_budget") or None
        if budget is not None:
            try:
                budget = parse_size(budget)
            except ValueError as exc:
                raise pytest.UsageError(f"--quantacc-memory-budget / quantacc_memory_budget: {exc}") from None
        else:
            # The default share of memory is per machine: pytest-xdist workers evaluate at the same time.
            workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
            budget = default_budget()
            budget = budget // workers if budget and workers > 1 else None
        remedy_time, remedy_samples = _remedy_settings(config)
        return cls(base, threads, tuple(config.getini("quantacc_patterns")), explicit,
                   remedies=DEFAULT_ATTEMPTS if remedies is None else max(0, remedies),
                   use_cache=not config.getoption("quantacc_no_cache"),
                   baseline_update=config.getoption("quantacc_baseline_update"),
                   tolerance_cos=float(config.getini("quantacc_baseline_tolerance_cos")),
                   tolerance_rmse=float(config.getini("quantacc_baseline_tolerance_rmse")),
                   memory_budget=budget, note=note, remedy_samples=remedy_samples, remedy_time=remedy_time,
                   progress=None if config.get_verbosity() < 0 or hasattr(config, "workerinput") else
                   ProgressLines(config),
                   temporary=note is not None or (not workdir and getattr(config, "cache", None) is None))

    def output(self, option: str, dest: Path, write) -> Path | None:
        """``write()`` one output file the user asked for with ``option``; on failure one line (the option, the
        file, the reason) is remembered for the summary instead of a traceback at session end."""
        try:
            return write()
        except OSError as exc:
            why = exc.strerror or str(exc)
        except Exception as exc:  # a bug in a report writer must not hide the run's outcome either
            why = f"{type(exc).__name__}: {str(exc)[:300]}"
        self.output_errors.append(f"quantacc: ERROR: {option}: cannot write {dest}: {why}")
        return None

    def wants(self, path: Path) -> bool:
        """A YAML file named on the command line, or one under a given directory that matches the patterns."""
        if path.suffix not in (".yaml", ".yml"):
            return False
        if path.resolve() in self.explicit:
            return True
        # Files the plugin writes next to a spec (--quantacc-fix) are not specs of their own in a directory run.
        if path.name.endswith(_WRITTEN_SUFFIXES):
            return False
        return any(fnmatch.fnmatch(path.name, p) for p in self.patterns)

    def result(self, mspec: ModelSpec) -> ModelResult:
        return self.evaluate(mspec).result

    def evaluate(self, mspec: ModelSpec) -> Evaluated:
        """The model's result through the cache: computed once per session (and once across processes)."""
        key = (mspec.spec_path, mspec.name)
        if key not in self.evaluated:
            progress = self.progress.for_model(mspec.name) if self.progress is not None else None
            try:
                evaluated = evaluate_cached(mspec, self.base, self.threads, self.use_cache,
                                            self.memory_budget, progress)
                # Diagnosis statistics and remedy search are not cached: they run only for failing models. They
                # read the model folder and write attempts into it, so under its lock: another xdist worker may
                # be rebuilding the folder (always, with --quantacc-no-cache).
                with locked(workdir_for(self.base, mspec)):
                    evaluated = replace(evaluated, result=deepen(evaluated.result, self.threads, self.remedies,
                                                                self.memory_budget, evaluated.prepared, progress,
                                                                samples=self.remedy_samples,
                                                                remedy_time=self.remedy_time,
                                                                use_cache=self.use_cache,
                                                                accuracy=evaluated.accuracy))
            except (Exception, SystemExit) as exc:  # user code (hooks, metrics) may raise anything but Ctrl-C
                # Remembered like a result: every item of the model reports it, none of them re-runs it.
                evaluated = Evaluated(ModelResult(mspec, error=unexpected(mspec.spec_path, mspec.key, exc)))
            if self.progress is not None:
                self.progress.done()
            self.evaluated[key] = evaluated
            self.results[key] = evaluated.result
        return self.evaluated[key]

    def receive(self, payload: dict) -> None:
        """Take a result an xdist worker computed (the controller reports what the workers measured)."""
        key = (Path(payload["result"]["spec"]), payload["result"]["name"])
        if key in self.evaluated and self.evaluated[key].cache != "reused":
            return  # two workers shared the model: keep the one that did the work
        mspec = next(m for m in load_spec(key[0]).models if m.name == key[1])
        self.evaluated[key] = restore(payload, mspec)
        self.results[key] = self.evaluated[key].result

    def ordered(self) -> list[Evaluated]:
        """Results by spec path and model position: the same order in serial and xdist runs."""
        return [self.evaluated[k] for k in sorted(self.evaluated, key=lambda k: (str(k[0]), self.evaluated[k]
                                                                                .result.spec.index))]

    def baseline_check(self, mspec: ModelSpec) -> BaselineCheck | None:
        """The model against its recorded baseline; None while recording one (``--quantacc-baseline-update``)."""
        if self.baseline_update:
            return None
        key = (mspec.spec_path, mspec.name)
        if key not in self.checks:
            self.checks[key] = check_baseline(mspec, self.result(mspec), self.tolerance_cos, self.tolerance_rmse)
        return self.checks[key]


def _remedy_settings(config: pytest.Config) -> tuple[float | None, int]:
    """--quantacc-remedy-time / quantacc_remedy_time and --quantacc-remedy-samples / quantacc_remedy_samples."""
    raw_time = config.getoption("quantacc_remedy_time")
    raw_time = raw_time if raw_time is not None else (config.getini("quantacc_remedy_time") or None)
    raw_samples = config.getoption("quantacc_remedy_samples")
    raw_samples = raw_samples if raw_samples is not None else (config.getini("quantacc_remedy_samples") or None)
    try:
        seconds = None if raw_time is None else float(raw_time)
        samples = DEFAULT_SAMPLES if raw_samples is None else int(raw_samples)
    except ValueError as exc:
        raise pytest.UsageError(f"--quantacc-remedy-time / --quantacc-remedy-samples: {exc}") from None
    if (seconds is not None and seconds < 0) or samples < 1:
        raise pytest.UsageError("--quantacc-remedy-time must be >= 0 and --quantacc-remedy-samples >= 1")
    return seconds, samples
