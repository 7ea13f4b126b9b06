"""pytest hooks: options, which files are specs, header, summary and the JSON report.

Kept free of heavy imports: this module is loaded by every pytest run in an environment where the plugin
is installed, and onnx/onnxruntime are imported only once ``--quantacc`` asks for them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

RUN_KEY = pytest.StashKey[object]()
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
    group.addoption("--quantacc-remedies", metavar="N", type=int, default=None,
                    help="when a layer fails, try at most N remedies (re-conversions) and report the smallest "
                         "that makes every layer pass (default 8; 0 turns remedies off)")
    group.addoption("--quantacc-fix", action="store_true", default=False,
                    help="write <spec stem>.fix.yaml beside each spec with a verified remedy: the spec with the "
                         "remedy applied (the spec itself is never modified)")
    group.addoption("--quantacc-html", metavar="PATH", default=None,
                    help="write a self-contained HTML report (per-layer tables and charts) to PATH")
    parser.addini("quantacc_patterns", type="args", default=_PATTERNS,
                  help="file name globs of spec files collected under directories with --quantacc")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("quantacc"):
        from .collect import QuantaccRun

        config.stash[RUN_KEY] = QuantaccRun.from_config(config)
        from .outputs import DiagnosisOutputs

        config.pluginmanager.register(DiagnosisOutputs(config), "quantacc-diagnosis-outputs")


def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    run = parent.config.stash.get(RUN_KEY, None)
    if run is None or not run.wants(file_path):
        return None
    from .collect import SpecFile

    return SpecFile.from_parent(parent, path=file_path)


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    run = config.stash.get(RUN_KEY, None)
    if run is None:
        return None
    import onnxruntime

    return [f"quantacc: onnxruntime {onnxruntime.__version__}, models written under {run.base}"]


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    run = config.stash.get(RUN_KEY, None)
    if run is None or not run.results:
        return
    from .report import model_summary

    terminalreporter.section("quantacc summary")
    for result in run.results.values():
        terminalreporter.write_line(model_summary(result))


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    run = config.stash.get(RUN_KEY, None)
    path = config.getoption("quantacc_report")
    if run is None or not path or hasattr(config, "workerinput"):
        return
    from .report import write_json

    write_json(config.invocation_params.dir / path, list(run.results.values()), config.rootpath)

