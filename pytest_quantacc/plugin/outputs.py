"""Files the diagnosis produces at the end of a run: the HTML report and the verified fix specs.

Registered as its own plugin object by ``plugin.pytest_configure`` when ``--quantacc`` is given, so these
hooks stay apart from the contract's JSON report hook. Nothing is written on xdist workers (their results
are partial); the controller writes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ..engine.judge import model_verdict
from ..engine.results import ModelResult, Status
from ..files import write_text
from .keys import RUN_KEY






def _fixes(results: list[ModelResult]) -> dict[Path, dict[int, dict]]:
    """Verified remedies by spec file and model index."""
    out: dict[Path, dict[int, dict]] = {}
    for r in results:
        fx = r.comparison("float", "fixed")
        d = fx.diagnosis if fx is not None else None
        if d is not None and d.remedy is not None:
            out.setdefault(r.spec.spec_path, {})[r.spec.index] = d.remedy
    return out


class DiagnosisOutputs:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.written: list[str] = []

    def _judged(self) -> list[tuple[ModelResult, Status]]:
        """Every evaluated model in the summary's order, with its verdict including the CI gates."""
        run = self.config.stash.get(RUN_KEY, None)
        if run is None:
            return []
        return [(ev.result, model_verdict(ev, run.baseline_check(ev.result.spec))) for ev in run.ordered()]

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if hasattr(self.config, "workerinput"):
            return
        judged = self._judged()
        results = [r for r, _ in judged]
        html_path = self.config.getoption("quantacc_html")
        if html_path and results:
            from ..report.html import page

            dest = self.config.invocation_params.dir / html_path
            dest.parent.mkdir(parents=True, exist_ok=True)
            write_text(dest, page(results, verdicts=[v for _, v in judged]))
            self.written.append(f"HTML report: {dest}")
        if self.config.getoption("quantacc_fix"):
            from ..remedy.fixfile import write_fix

            for spec_path, patches in _fixes(results).items():
                self.written.append(f"verified fix: {write_fix(spec_path, patches)}")

    def pytest_terminal_summary(self, terminalreporter) -> None:
        for line in self.written:
            terminalreporter.write_line(f"quantacc: {line}")

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call):
        """With pytest-html installed, a failing layer item carries its model's section of the HTML report."""
        outcome = yield
        report = outcome.get_result()
        if call.when != "call" or not report.failed or getattr(item, "kind", None) != "layer" \
                or not self.config.pluginmanager.hasplugin("html"):
            return
        mspec = getattr(item, "mspec", None)
        from .keys import RUN_KEY

        run = self.config.stash.get(RUN_KEY, None)
        result = run.results.get((mspec.spec_path, mspec.name)) if run is not None and mspec is not None else None
        if result is None:
            return
        from pytest_html import extras

        from ..report.html import fragment

        report.extras = [*getattr(report, "extras", []), extras.html(fragment(result))]
