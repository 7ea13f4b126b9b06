"""pytest hooks (the ``pytest11`` entry point): options, which files are specs, header, summary, JSON report.

Kept free of heavy imports: this module is loaded by every pytest run in an environment where the plugin
is installed, and onnx/onnxruntime are imported only once ``--quantacc`` asks for them. Each hook only
wires pytest to the session state (:mod:`.session`) and the report modules.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from .keys import RUN_KEY

_PATTERNS = ["quantacc*.yaml", "quantacc*.yml", "*.quantacc.yaml"]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("quantacc", "quantization accuracy (pytest-quantacc)")
    group.addoption("--quantacc", action="store_true", default=False,
                    help="collect quantacc spec files: YAML files given as arguments, and under given directories "
                         "files matching the quantacc_patterns ini option")
    group.addoption("--quantacc-report", metavar="PATH", default=None,
                    help="write the JSON report (per-layer metrics of every model) to PATH")
    group.addoption("--quantacc-workdir", metavar="DIR", default=None,
                    help="where converted models are written (default: inside pytest's cache directory)")
    group.addoption("--quantacc-threads", metavar="N", type=int, default=0,
                    help="ONNX Runtime intra-op threads per session (default 0: ONNX Runtime decides)")
    group.addoption("--quantacc-memory-budget", metavar="SIZE", default=None,
                    help="memory the compared tensors of one sample may take (e.g. 4GB, 512MiB); a model that needs "
                         "more is evaluated in several passes over its graph (default: a quarter of the available "
                         "memory; ini: quantacc_memory_budget)")
    group.addoption("--quantacc-remedies", metavar="N", type=int, default=None,
                    help="when a layer fails, try at most N remedies (re-conversions) and report the smallest "
                         "that makes every layer pass (default 8; 0 turns remedies off)")
    group.addoption("--quantacc-remedy-time", metavar="SECONDS", type=float, default=None,
                    help="bound the remedy search of a failing model to about SECONDS (no new sensitivity run, set "
                         "evaluation or re-conversion starts after it; the summary says what was cut; ini: "
                         "quantacc_remedy_time; default: no bound)")
    group.addoption("--quantacc-remedy-samples", metavar="N", type=int, default=None,
                    help="evaluation samples the sensitivity ranking and set search use (default 4; the remedy "
                         "found is verified on all of them; ini: quantacc_remedy_samples)")
    group.addoption("--quantacc-fix", action="store_true", default=False,
                    help="write <spec stem>.fix.yaml beside each spec with a verified remedy: the spec with the "
                         "remedy applied (the spec itself is never modified)")
    group.addoption("--quantacc-html", metavar="PATH", default=None,
                    help="write a self-contained HTML report (per-layer tables and charts) to PATH")
    group.addoption("--quantacc-no-cache", action="store_true", default=False,
                    help="convert and evaluate every model afresh: ignore and do not store cached results")
    group.addoption("--quantacc-clear-cache", action="store_true", default=False,
                    help="delete the cached conversions and results of every model before the run")
    group.addoption("--quantacc-schema", action="store_true", default=False,
                    help="print the JSON Schema of the spec format (for editors and pre-commit) and exit")
    group.addoption("--quantacc-baseline-update", action="store_true", default=False,
                    help="record each model's per-layer metrics as its baseline (<spec>.baseline.json); refused "
                         "when the CI environment variable is set")
    parser.addini("quantacc_baseline_tolerance_cos", default="0.001",
                  help="a layer fails when its cos drops more than this below its baseline (spec: baseline.tolerance)")
    parser.addini("quantacc_baseline_tolerance_rmse", default="0.01",
                  help="a layer fails when its rmse rises more than this above its baseline")
    parser.addini("quantacc_memory_budget", default="",
                  help="default for --quantacc-memory-budget (e.g. 4GB)")
    parser.addini("quantacc_remedy_time", default="",
                  help="default for --quantacc-remedy-time (seconds)")
    parser.addini("quantacc_remedy_samples", default="",
                  help="default for --quantacc-remedy-samples")
    parser.addini("quantacc_patterns", type="args", default=_PATTERNS,
                  help="file name globs of spec files collected under directories with --quantacc")
    parser.addini("quantacc_report", default="",
                  help="default for --quantacc-report: where the JSON report is written")
    parser.addini("quantacc_html", default="",
                  help="default for --quantacc-html: where the self-contained HTML report is written")
    parser.addini("quantacc_remedies", default="",
                  help="default for --quantacc-remedies: remedy attempts for a failing model (0 turns them off)")


# The spec items' part of the quantacc marker's description (registered once, with the fixture's part).
SPEC_ITEMS_MARKER = ("Every item collected from a spec with --quantacc carries it too: -m quantacc / -m 'not quantacc' "
                     "select or deselect the accuracy gates in a mixed suite.")


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> int | None:
    """``--quantacc-schema`` prints the spec's JSON Schema and ends the run (exit 0).

    On an xdist worker, ignore ``--cache-clear``: the controller already cleared the cache, and a worker
    starting late would otherwise delete the model folders another worker is writing."""
    if config.getoption("quantacc_schema", False):
        from importlib.resources import files

        sys.stdout.write(files("pytest_quantacc.spec").joinpath("schema.json").read_text(encoding="utf-8"))
        sys.stdout.flush()
        return 0
    if hasattr(config, "workerinput") and config.getoption("quantacc", False):
        config.option.cacheclear = False
    return None


def pytest_configure(config: pytest.Config) -> None:
    from . import fixture

    # One registration for both uses of the name (fixture.MARKER_HELP: the fixture's defaults).
    config.addinivalue_line("markers", f"{fixture.MARKER}: {fixture.MARKER_HELP}. {SPEC_ITEMS_MARKER}")
    config.pluginmanager.register(fixture, "quantacc-fixture")  # the quantacc fixture, always available
    if config.getoption("quantacc"):
        from .session import QuantaccRun

        config.stash[RUN_KEY] = run = QuantaccRun.from_config(config)
        from .outputs import DiagnosisOutputs

        config.pluginmanager.register(DiagnosisOutputs(config), "quantacc-diagnosis-outputs")
        worker = hasattr(config, "workerinput")
        if run.baseline_update and not worker:
            from ..store.baseline import in_ci

            if in_ci():
                raise pytest.UsageError("--quantacc-baseline-update: refusing to write baselines in CI (the CI "
                                        "environment variable is set); record them locally and commit them")
        if config.getoption("quantacc_clear_cache") and not worker:
            from ..store.cache import clear

            clear(run.base)
        if not worker:
            config.pluginmanager.register(_ResultReceiver(run), "quantacc-result-receiver")


class _ResultReceiver:
    """Collects the results xdist workers attach to their reports, so the controller can summarize them."""

    def __init__(self, run) -> None:
        self.run = run

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        data = getattr(report, "quantacc_payload", None)
        if data is not None:
            self.run.receive(data)
        for data in getattr(report, "quantacc_payloads", ()):  # a test's quantacc.check() results
            self.run.receive(data)
        headline = getattr(report, "quantacc_headline", None)
        if headline is not None and isinstance(report.longrepr, str):
            # Before the terminal and JUnit read it: --tb=line and JUnit's message get the one line again.
            from .nodes import received_failure

            report.longrepr = received_failure(report, headline)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    """Locate skips at the spec, keep the failure's headline, and on an xdist worker attach the model's
    serialized result to its first report (the controller reports)."""
    report = yield
    run = item.config.stash.get(RUN_KEY, None)
    if run is None or call.when != "call":
        return report
    from .nodes import ModelItem, locate_skip

    if isinstance(item, ModelItem):
        locate_skip(item, report)
    if not hasattr(item.config, "workerinput"):
        return report
    from ..store.cache import payload

    crash = getattr(report.longrepr, "reprcrash", None)
    if isinstance(item, ModelItem):
        if report.failed and crash is not None:
            # xdist sends a failure that is not a traceback as its text: the headline travels beside it.
            report.quantacc_headline = crash.message
        key = (item.mspec.spec_path, item.mspec.name)
        if key in run.evaluated and key not in run.sent:
            run.sent.add(key)
            report.quantacc_payload = payload(run.evaluated[key])
    keys = [k for k in getattr(item, "quantacc_keys", ()) if k in run.evaluated and k not in run.sent]
    if keys:
        run.sent.update(keys)
        report.quantacc_payloads = [payload(run.evaluated[k]) for k in keys]
    return report


def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    run = parent.config.stash.get(RUN_KEY, None)
    if run is None or not run.wants(file_path):
        return None
    from .nodes import SpecFile

    return SpecFile.from_parent(parent, path=file_path)


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    run = config.stash.get(RUN_KEY, None)
    if run is None:
        return None
    import onnxruntime

    return [f"quantacc: onnxruntime {onnxruntime.__version__}, models written under {run.base}",
            *([run.note] if run.note else [])]


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    run = config.stash.get(RUN_KEY, None)
    if run is None:
        return
    for line in run.output_errors:
        terminalreporter.write_line(line, red=True)
    if not run.results:
        return
    from ..report.summary import extra_lines, summary_head

    terminalreporter.section("quantacc summary")
    for ev in run.ordered():
        check = run.baseline_check(ev.result.spec)
        terminalreporter.write_line(summary_head(ev, check))
        for line in extra_lines(ev, check):
            terminalreporter.write_line(line)
    if run.baseline_update:
        for path in run.written_baselines:
            terminalreporter.write_line(f"baseline written: {path}")
    if run.temporary:
        terminalreporter.write_line(f"quantacc: the converted models in {run.base} are removed at the end of the "
                                    f"session (no cache directory); pass --quantacc-workdir DIR to keep them")


def pytest_unconfigure(config: pytest.Config) -> None:
    """Remove this process's temporary work folder (runs without a cache directory): one per run otherwise
    accumulates, several GB each for a large model."""
    run = config.stash.get(RUN_KEY, None)
    if run is not None and run.temporary:
        import shutil

        shutil.rmtree(run.base, ignore_errors=True)


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    run = config.stash.get(RUN_KEY, None)
    if run is not None:
        from ..engine.dump_backend import end_commands

        end_commands()  # helpers the dump commands left running (on xdist workers too)
    if run is None or hasattr(config, "workerinput"):
        return
    if run.baseline_update:
        from ..store.baseline import baseline_path, write

        by_spec: dict[Path, list] = {}
        for ev in run.ordered():
            if ev.result.error is None:
                by_spec.setdefault(ev.result.spec.spec_path, []).append(ev.result)
        written = [run.output("--quantacc-baseline-update", baseline_path(spec), lambda s=spec, r=results: write(s, r))
                   for spec, results in by_spec.items()]
        run.written_baselines = [p for p in written if p is not None]
    from .session import output_path

    path = output_path(config, "quantacc_report")
    if path is not None:
        from ..report.jsonreport import write_report

        run.output("--quantacc-report", path, lambda: write_report(path, run, config.rootpath))
    if run.output_errors and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED  # an output the user asked for is missing
