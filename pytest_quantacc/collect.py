"""pytest nodes for specs: a file per spec, a collector per model, an item per check.

Only translation happens here: the engine computes a model's results once (``QuantaccRun.result``) and
each item turns its part into a pytest outcome, a failure message and JUnit properties.
"""

from __future__ import annotations

import fnmatch
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import pytest

from . import report
from .convert import prepare_float
from .errors import QuantaccInputError
from .evaluate import SKIPPED, ModelResult, evaluate_model
from .match import Layer, float_layers
from .remedy import DEFAULT_ATTEMPTS, deepen
from .plugin import RUN_KEY
from .spec import ModelSpec, load_spec

_WRITTEN_SUFFIXES = (".fix.yaml",)


class QuantaccFailure(Exception):
    """An assertion about quantization accuracy failed; its text is the whole report (no traceback)."""


@dataclass
class QuantaccRun:
    """Per-session state: where artifacts go, and each model's results, computed on first request."""

    base: Path
    threads: int
    patterns: tuple[str, ...]
    explicit: frozenset[Path]
    results: dict[tuple[Path, str], ModelResult] = field(default_factory=dict)
    remedies: int = DEFAULT_ATTEMPTS  # remedy attempts for a failing model (0: none)

    @classmethod
    def from_config(cls, config: pytest.Config) -> QuantaccRun:
        workdir = config.getoption("quantacc_workdir")
        if workdir:
            base = Path(workdir).resolve()
        elif getattr(config, "cache", None) is not None:
            base = Path(config.cache.mkdir("quantacc"))
        else:
            base = Path(tempfile.mkdtemp(prefix="quantacc-"))
        here = config.invocation_params.dir
        explicit = frozenset((here / a.split("::")[0]).resolve() for a in config.args)
        remedies = config.getoption("quantacc_remedies", None)
        return cls(base, config.getoption("quantacc_threads"), tuple(config.getini("quantacc_patterns")), explicit,
                   remedies=DEFAULT_ATTEMPTS if remedies is None else max(0, remedies))

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
        key = (mspec.spec_path, mspec.name)
        if key not in self.results:
            self.results[key] = deepen(evaluate_model(mspec, self.base, self.threads), self.threads, self.remedies)
        return self.results[key]


class SpecFile(pytest.File):
    """A quantacc spec: one collector per model entry."""

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
        return str(excinfo.value) if isinstance(excinfo.value, QuantaccFailure) else super().repr_failure(excinfo, style)

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
            float_path = prepare_float(m, run.base)
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
                item = ModelItem.from_parent(self, name=f"float-vs-fixed[{label}]", mspec=m, kind="layer",
                                             tensor=tensor)
                kb = m.known_bad_for(node)
                if kb is not None:
                    item.add_marker(pytest.mark.xfail(reason=kb.reason, strict=kb.strict))
                items.append(item)
        if {"float", "offline"} <= modes:
            for out in graph.graph.output:
                items.append(ModelItem.from_parent(self, name=f"float-vs-offline[{out.name}]", mspec=m,
                                                   kind="output", tensor=out.name))
        if {"fixed", "offline"} <= modes:
            items.append(ModelItem.from_parent(self, name="fixed-vs-offline", mspec=m, kind="agreement"))
        return items


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
        if self.kind == "agreement":
            self._agreement(result)
            return
        reference, target = ("float", "fixed") if self.kind == "layer" else ("float", "offline")
        comparison = result.comparison(reference, target)
        r = comparison.get(self.tensor) if comparison else None
        if r is None:
            raise QuantaccFailure(f"{self.mspec.name}: tensor {self.tensor} was not evaluated "
                                  f"(the float model changed since collection?)")
        self.user_properties.extend(report.junit_properties(r))
        if r.status == SKIPPED:
            pytest.skip(r.reason)
        if r.inherited_from is not None:
            pytest.xfail(r.reason)
        if r.breaks:
            render = report.layer_failure if self.kind == "layer" else report.outputs_failure
            raise QuantaccFailure(render(result, comparison, r))

    def _convert(self, result: ModelResult) -> None:
        if result.error is not None:
            raise QuantaccFailure(result.error.message)
        self.user_properties += [("quantacc.quantized_layers", result.quantized_layers),
                                 ("quantacc.samples", result.samples)]
        self.user_properties += [(f"quantacc.seconds_{k}", round(v, 3)) for k, v in result.seconds.items()]
        if result.quantized_layers == 0:
            raise QuantaccFailure(
                f"{self.mspec.spec_path}: {self.mspec.key}.quantization: ONNX Runtime's quantizer quantized no "
                f"tensor of {self.mspec.model.name}; a model with zero quantized layers cannot be checked. Look for "
                f"ops it does not quantize, everything excluded, or computation hidden inside If/Loop subgraphs.")

    def _original(self, result: ModelResult) -> None:
        """The user's model on the user's preprocessing agrees with the folded float model (pipeline.py)."""
        from .pipeline import pipeline_text

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
            raise QuantaccFailure(report.agreement_text(result))

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, QuantaccFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        return self.path, None, f"{self.mspec.name}::{self.name}"

