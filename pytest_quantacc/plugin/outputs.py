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
from .session import output_path


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
        dest = output_path(self.config, "quantacc_html")
        if dest is not None and results:
            from ..report.html import page

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
        """With ``--html`` (pytest-html), the model's section once per model and one row on other failures.

        The section goes on the root-cause item (the first diverging layer) or, for a model without one, on
        its convert item; every other failing or xfailed layer gets one table row. A copy of the section
        per failing layer made a 300-layer model's pytest-html report 78 MB, and building the fragments when
        no report was asked for took most of a warm run.
        """
        outcome = yield
        report = outcome.get_result()
        kind = getattr(item, "kind", None)
        if call.when != "call" or kind not in ("convert", "layer", "output") \
                or not self.config.getoption("htmlpath", None):
            return
        run = self.config.stash.get(RUN_KEY, None)
        mspec = item.mspec
        result = run.results.get((mspec.spec_path, mspec.name)) if run is not None else None
        if result is None:
            return
        from pytest_html import extras

        from ..report.html import fragment, one_row

        fx = result.comparison("float", "fixed")
        first = fx.first_diverging if fx is not None else None
        if (kind == "convert" and first is None) or (kind == "layer" and first is not None
                                                     and first.layer.tensor == item.tensor):
            verdict = model_verdict(run.evaluated[(mspec.spec_path, mspec.name)], run.baseline_check(mspec))
            html = fragment(result, verdict)
        elif kind != "convert" and (report.failed or hasattr(report, "wasxfail")):
            comparison = fx if kind == "layer" else result.comparison("float", "offline")
            r = comparison.get(item.tensor) if comparison is not None else None
            if r is None:
                return
            html = one_row(r, comparison)
        else:
            return
        report.extras = [*getattr(report, "extras", []), extras.html(html)]
