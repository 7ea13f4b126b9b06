"""pytest nodes for specs: a file per spec, a collector per model, an item per check.

Only translation happens here: each item turns its part of the model's results into a pytest outcome, a
failure message and JUnit properties.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
import pytest

from ..engine.results import REGRESSED, SKIPPED, BaselineCheck, Evaluated, LayerResult, ModelResult
from ..errors import QuantaccInputError
from ..graph.match import Layer, float_layers
from ..report.failures import FailureText, agreement_text, layer_failure, outputs_failure, regression_text
from ..report.junit import junit_properties
from ..spec.model import ModelSpec
from ..spec.parse import load_spec
from ..store.baseline import baseline_path
from ..store.cache import cached_float
from .keys import RUN_KEY
from .session import QuantaccRun


class QuantaccFailure(Exception):
    """An assertion about quantization accuracy failed; its text is the whole report (no traceback)."""

    def __init__(self, text: FailureText | str) -> None:
        self.text = text if isinstance(text, FailureText) else FailureText.of(text)
        super().__init__(self.text.render())


@dataclass(frozen=True)
class Headline:
    """The crash entry of a failure: what ``--tb=line``, ``-rf`` and JUnit's ``message`` attribute read."""

    path: str
    lineno: int | None
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass(frozen=True)
class FailureRepr:
    """A failure as pytest prints it: ``text`` in the session's ``--tb`` style under the item's header.

    With ``--tb=line`` pytest prints the crash line and then the text, so the text is empty there.
    """

    text: str
    reprcrash: Headline

    def toterminal(self, tw) -> None:
        for line in self.text.splitlines():
            tw.line(line)

    def __str__(self) -> str:
        return self.text or str(self.reprcrash)


def failure_repr(item: pytest.Item, text: FailureText) -> FailureRepr:
    """``text`` in the session's ``--tb`` style, located at the item (its spec file)."""
    style = item.config.getoption("tbstyle", "auto")
    return FailureRepr("" if style == "line" else text.render(style), Headline(item.location[0], None, text.headline))


def received_failure(report: pytest.TestReport, headline: str) -> FailureRepr:
    """A failure an xdist worker sent as text, with its headline (the controller's terminal and JUnit read it)."""
    text = report.longrepr if isinstance(report.longrepr, str) else str(report.longrepr)
    crash = Headline(report.location[0], None, headline)
    return FailureRepr("" if text == str(crash) else text, crash)


def locate_skip(item: ModelItem, report: pytest.TestReport) -> None:
    """Point a skip at the spec file and name the item, instead of the line of this module that skipped it.

    pytest locates a skip where ``pytest.skip`` was called; for ``-rs`` and JUnit that is the plugin's
    source, which tells the user nothing. The spec file and ``model::item`` are where to look.
    """
    if not report.skipped or hasattr(report, "wasxfail") or not isinstance(report.longrepr, tuple):
        return
    reason = str(report.longrepr[2]).removeprefix("Skipped: ")
    report.longrepr = (str(item.path), None, f"Skipped: {item.mspec.name}::{item.name}: {reason}")


class SpecFile(pytest.File):
    """A quantacc spec: one collector per model entry.

    It carries the ``quantacc`` marker, so every item under it does (``-m quantacc`` in a mixed suite).
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_marker("quantacc")

    def collect(self):
        try:
            spec = load_spec(self.path)
        except QuantaccInputError as exc:
            return [InputErrorItem.from_parent(self, name="spec", message=exc.message)]
        nodes = [(m.index, ModelNode.from_parent(self, name=m.name, mspec=m)) for m in spec.models]
        nodes += [(b.index, BrokenModel.from_parent(self, name=b.name, message=b.error.message)) for b in spec.broken]
        return [n for _, n in sorted(nodes, key=lambda x: x[0])]


class InputErrorItem(pytest.Item):
    """A failed test carrying an input problem (contract section 6).

    A collection error would be the obvious shape, but pytest interrupts the whole session on one; a failed
    item keeps every other spec and model running.
    """

    def __init__(self, *, message: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.message = message

    def runtest(self) -> None:
        raise QuantaccFailure(self.message)

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, QuantaccFailure):
            return failure_repr(self, excinfo.value.text)
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        return self.path, None, self.name


class BrokenModel(pytest.Collector):
    """A model entry that failed validation: one failing ``convert`` item for it, the others still run."""

    def __init__(self, *, message: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.message = message

    def collect(self):
        return [InputErrorItem.from_parent(self, name="convert", message=self.message)]


class ModelNode(pytest.Collector):
    """One model of a spec: convert, then float vs fixed per layer, float vs offline per output, fixed vs offline."""

    def __init__(self, *, mspec: ModelSpec, **kwargs) -> None:
        super().__init__(**kwargs)
        self.mspec = mspec

    def collect(self):
        run: QuantaccRun = self.config.stash[RUN_KEY]
        m = self.mspec
        try:
            float_path = cached_float(m, run.base)
        except QuantaccInputError as exc:
            return [InputErrorItem.from_parent(self, name="convert", message=exc.message)]
        graph = onnx.load(str(float_path), load_external_data=False)
        items = [ModelItem.from_parent(self, name="convert", mspec=m, kind="convert")]
        modes = set(m.modes)
        if {"original", "float"} <= modes:
            items.append(ModelItem.from_parent(self, name="original-vs-float", mspec=m, kind="original"))
        if {"float", "fixed"} <= modes:
            layers = float_layers(graph)
            multi = {n for n, _, _ in layers if sum(1 for x, _, _ in layers if x == n) > 1}
            for node, op, tensor in layers:
                label = Layer(node, op, tensor, 0).label + (f":{tensor}" if node in multi else "")
                item = self._bracketed(f"float-vs-fixed[{label}]", mspec=m, kind="layer", tensor=tensor)
                kb = m.known_bad_for(node)
                if kb is not None:
                    item.add_marker(pytest.mark.xfail(reason=kb.reason, strict=kb.strict))
                items.append(item)
        board = any(d.mode == "offline" for d in m.dumps)
        if {"float", "offline"} <= modes and board:  # the board dumps every layer: one item per float tensor
            for _, _, tensor in float_layers(graph):
                items.append(ModelItem.from_parent(self, name=f"float-vs-board[{tensor}]", mspec=m, kind="board",
                                                   tensor=tensor))
            items.append(ModelItem.from_parent(self, name="offline-vs-board", mspec=m, kind="agreement"))
        elif {"float", "offline"} <= modes:
            for out in graph.graph.output:
                items.append(self._bracketed(f"float-vs-offline[{out.name}]", mspec=m, kind="output",
                                             tensor=out.name))
        if {"fixed", "offline"} <= modes:
            items.append(ModelItem.from_parent(self, name="fixed-vs-offline", mspec=m, kind="agreement"))
        if m.accuracy is not None:
            items.append(ModelItem.from_parent(self, name="accuracy", mspec=m, kind="accuracy"))
        if not run.baseline_update and (m.baseline.required or baseline_path(m.spec_path).is_file()):
            items.append(ModelItem.from_parent(self, name="baseline", mspec=m, kind="baseline"))
        return items

    def _bracketed(self, name: str, **kwargs) -> ModelItem:
        """An item whose name carries a ``[...]`` part, with its node id given as a string.

        pytest >= 9.2 keeps node ids structured: a child's id is its parent's plus the whole name, but ids read
        back from ``.pytest_cache`` (``--lf``, ``--ff``, ``--sw``) are parsed, with the bracket split off as
        parameters, so the two never compare equal (pytest-dev/pytest#15045). Passing the string makes pytest
        parse the live id the same way; pytest 8 stores the string as is, the id it builds by default.
        """
        return ModelItem.from_parent(self, name=name, nodeid=f"{self.nodeid}::{name}", **kwargs)


class ModelItem(pytest.Item):
    """One check of one model; ``kind`` is convert, layer, output or agreement."""

    def __init__(self, *, mspec: ModelSpec, kind: str, tensor: str | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.mspec, self.kind, self.tensor = mspec, kind, tensor

    def runtest(self) -> None:
        result: ModelResult = self.config.stash[RUN_KEY].result(self.mspec)
        if self.kind == "convert":
            self._convert(result)
            return
        if result.error is not None:
            pytest.skip(f"conversion failed (see {self.mspec.name}::convert)")
        if self.kind == "original":
            self._original(result)
            return
        if result.quantized_layers == 0:
            pytest.skip(f"nothing was quantized (see {self.mspec.name}::convert)")
        if result.outputs_only is not None and self.kind in ("layer", "agreement"):
            pytest.skip(result.outputs_only)
        if self.kind == "agreement":
            self._agreement(result)
            return
        if self.kind == "accuracy":
            self._accuracy(self.config.stash[RUN_KEY].evaluate(self.mspec))
            return
        if self.kind == "baseline":
            self._baseline(self.config.stash[RUN_KEY].baseline_check(self.mspec))
            return
        reference, target = ("float", "fixed") if self.kind == "layer" else ("float", "offline")
        comparison = result.comparison(reference, target)
        r = comparison.get(self.tensor) if comparison else None
        if r is None:
            raise QuantaccFailure(f"{self.mspec.name}: tensor {self.tensor} was not evaluated "
                                  f"(the float model changed since collection?)")
        self.user_properties.extend(junit_properties(r))
        if r.status == SKIPPED:
            pytest.skip(r.reason)
        if r.inherited_from is not None:
            pytest.xfail(r.reason)
        if r.breaks:
            render = layer_failure if self.kind in ("layer", "board") else outputs_failure
            raise QuantaccFailure(render(result, comparison, r))
        self._against_baseline(reference, target, r)

    def _against_baseline(self, reference: str, target: str, r: LayerResult) -> None:
        check = self.config.stash[RUN_KEY].baseline_check(self.mspec)
        d = check.delta(reference, target, r.layer.tensor) if check is not None else None
        if d is None:
            return
        self.user_properties += [("quantacc.baseline_cos", d.baseline["cos"]),
                                 ("quantacc.baseline_rmse", d.baseline["rmse"]), ("quantacc.baseline", d.verdict)]
        if d.verdict == REGRESSED:
            raise QuantaccFailure(regression_text(self.mspec, check, d))

    def _accuracy(self, ev: Evaluated) -> None:
        if ev.accuracy_error is not None:
            raise QuantaccFailure(ev.accuracy_error.message)
        a = ev.accuracy
        self.user_properties += [("quantacc.metric", a.metric), ("quantacc.output", a.output),
                                 ("quantacc.float_accuracy", round(a.float_value, 6)),
                                 ("quantacc.offline_accuracy", round(a.offline_value, 6)),
                                 ("quantacc.accuracy_drop", round(a.drop, 6))]
        if not a.passed:
            raise QuantaccFailure(
                f"{self.mspec.name}: task accuracy ({a.metric} on output {a.output}, {a.samples} samples): float "
                f"{a.float_value:.4f}, deployable (offline) {a.offline_value:.4f}: drop {a.drop:.4f} > max_drop "
                f"{a.max_drop}\nThe per-layer items of this model show where the accuracy is lost (start at the "
                f"first diverging layer).")

    def _baseline(self, check: BaselineCheck) -> None:
        if check.error is not None:
            raise QuantaccFailure(check.error)
        if not check.found:
            message = (f"{self.mspec.name}: no baseline recorded in {check.path}; record one locally with "
                       f"--quantacc-baseline-update and commit it")
            if self.mspec.baseline.required:
                raise QuantaccFailure(f"{message} (the spec sets {self.mspec.key}.baseline.required: true)")
            pytest.skip(message)
        self.user_properties += [("quantacc.baseline_regressed", len(check.regressed)),
                                 ("quantacc.baseline_improved", len(check.improved)),
                                 ("quantacc.baseline_stale", len(check.stale))]

    def _convert(self, result: ModelResult) -> None:
        if result.error is not None:
            raise QuantaccFailure(result.error.message)
        self.user_properties += [("quantacc.quantized_layers", result.quantized_layers),
                                 ("quantacc.samples", result.samples), ("quantacc.passes", result.passes)]
        self.user_properties += [(f"quantacc.seconds_{k}", round(v, 3)) for k, v in result.seconds.items()]
        self.user_properties.append(("quantacc.cache", self.config.stash[RUN_KEY].evaluate(self.mspec).cache))
        if result.quantized_layers == 0:
            raise QuantaccFailure(
                f"{self.mspec.spec_path}: {self.mspec.key}.quantization: ONNX Runtime's quantizer quantized no "
                f"tensor of {self.mspec.model.name}; a model with zero quantized layers cannot be checked. Look for "
                f"ops it does not quantize, everything excluded, or computation hidden inside If/Loop subgraphs.")

    def _original(self, result: ModelResult) -> None:
        """The user's model on the user's preprocessing agrees with the folded float model (pipeline.py)."""
        from ..report.failures import pipeline_text

        p = result.pipeline
        self.user_properties += [(f"quantacc.original_cos[{name}]", round(s["cos"], 8)) for name, s in p.outputs]
        if not p.passed:
            raise QuantaccFailure(pipeline_text(self.mspec.name, p))

    def _agreement(self, result: ModelResult) -> None:
        a = result.agreement
        w = a.worst
        if w is None:
            pytest.skip("no quantized tensor is exposed by both the fixed and the offline model")
        self.user_properties += [("quantacc.tensor", w.tensor), ("quantacc.max_steps", w.max_steps),
                                 ("quantacc.mismatch_rate", round(w.mismatch_rate, 6))]
        if not a.passed:
            raise QuantaccFailure(agreement_text(result))

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, QuantaccFailure):
            return failure_repr(self, excinfo.value.text)
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        return self.path, None, f"{self.mspec.name}::{self.name}"
