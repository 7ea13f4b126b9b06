"""The ``quantacc`` fixture and marker: the YAML gate for tests written in Python.

``quantacc.check(model, calibration=..., evaluation=..., ...)`` writes what it is given as a spec entry (a model
file, ``.npz`` data, a YAML spec with the same keys) and hands that to the same parser, engine and cache as a
``--quantacc`` run, so a typo fails with the same message, a layer fails with the same text, and the results go
to the same JSON/HTML reports when ``--quantacc`` is given. The files live in a folder per test under the
session's work folder (not in ``tmp_path``): the spec's path keys the model's work folder, so a re-run with
unchanged model and data re-judges stored metrics instead of converting again.

Imported by every pytest run (the hooks register it), so everything beyond pytest is imported inside ``check``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest

from ..engine.results import FAILED, SKIPPED, XFAILED, XPASSED
from .keys import RUN_KEY

MARKER = "quantacc"
MARKER_HELP = ("quantacc(**defaults): defaults for the quantacc fixture's check() in this test (thresholds, "
               "quantization, known_bad, layers, modes, offline, ...); keyword arguments of check() win")
CHECK_KEYS = ("calibration", "evaluation", "quantization", "thresholds", "known_bad", "layers", "modes", "offline",
              "quantized", "name", "calibration_limit", "evaluation_limit")
FIXTURE_RUN = pytest.StashKey[object]()  # the session state of a run without --quantacc (results not reported)


class QuantaccCheckFailed(Exception):
    """A quantacc.check() failed; the text is the failure report of the spec items (no traceback)."""


def _deep_merge(base: Any, over: Any) -> Any:
    if isinstance(base, Mapping) and isinstance(over, Mapping):
        return {**base, **{k: _deep_merge(base[k], v) if k in base else v for k, v in over.items()}}
    return over


def _slug(text: str, n: int = 60) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:n] or "test"


class Quantacc:
    """What a test gets from the ``quantacc`` fixture; ``check`` is the one method."""

    def __init__(self, request: pytest.FixtureRequest, record_property) -> None:
        self._request = request
        self._record = record_property
        self._count = 0
        node = request.node
        self.defaults: dict = {}
        for mark in reversed(list(node.iter_markers(MARKER))):  # the closest marker (the function's) wins
            if mark.args:
                raise pytest.UsageError(f"{node.nodeid}: @pytest.mark.quantacc takes keyword arguments only "
                                        f"(defaults for quantacc.check), got {mark.args!r}")
            self.defaults = _deep_merge(self.defaults, dict(mark.kwargs))

    def check(self, model, *, calibration=None, evaluation=None, quantization: Mapping | None = None,
              thresholds: Mapping | None = None, known_bad: Iterable = (), **more):
        """Quantize ``model`` and gate it layer by layer, as a spec entry with these keys would.

        ``model``: a path or an ``onnx.ModelProto``; ``calibration`` / ``evaluation``: a ``.npz`` path, a dict of
        arrays (axis 0 indexes samples) or an iterable of per-sample dicts; ``known_bad``: ``{layer, reason}``
        mappings or layer names. Other keys of a spec entry (``layers``, ``modes``, ``offline``, ``quantized``,
        ``name``, ``calibration_limit``, ``evaluation_limit``) are keyword arguments too; ``@pytest.mark.quantacc``
        gives defaults. Returns the :class:`~pytest_quantacc.engine.results.Evaluated` result; fails the test with
        the spec items' failure text when a layer (not a known_bad one), an output or the offline gate fails.
        """
        given = {"calibration": calibration, "evaluation": evaluation, "quantization": quantization,
                 "thresholds": thresholds, "known_bad": list(known_bad) or None, **more}
        unknown = sorted(set(given) - set(CHECK_KEYS)) + sorted(set(self.defaults) - set(CHECK_KEYS))
        if unknown:
            raise TypeError(f"quantacc.check: unknown keyword {unknown[0]!r}; known: {', '.join(CHECK_KEYS)}")
        args = _deep_merge(self.defaults, {k: v for k, v in given.items() if v is not None})
        self._count += 1
        mspec = self._spec(model, args)
        run = self._run()
        ev = run.evaluate(mspec)
        self._properties(ev)
        node = self._request.node
        node.quantacc_keys = [*getattr(node, "quantacc_keys", []), (mspec.spec_path, mspec.name)]
        text = failure_text(ev)
        if text:
            raise QuantaccCheckFailed(text)
        return ev

    # -------------------------------------------------------------------------------------------- helpers

    def _run(self):
        config = self._request.config
        run = config.stash.get(RUN_KEY, None)
        if run is None:  # no --quantacc: the same engine and cache, results only for this test
            run = config.stash.get(FIXTURE_RUN, None)
            if run is None:
                from .session import QuantaccRun

                run = config.stash[FIXTURE_RUN] = QuantaccRun.from_config(config)
        return run

    def _folder(self, name: str) -> Path:
        node = self._request.node
        digest = hashlib.sha256(node.nodeid.encode()).hexdigest()[:8]
        return self._run().base / "fixture" / f"{_slug(node.name)}-{digest}" / name

    def _spec(self, model, args: dict):
        from ..errors import QuantaccInputError
        from ..spec.parse import load_spec
        from .datafiles import write_model, write_samples, write_spec_file

        default = _slug(self._request.node.name) + ("" if self._count == 1 else f"-{self._count}")
        name = str(args.pop("name", None) or default)
        folder = self._folder(_slug(name))
        entry: dict[str, Any] = {"name": name, "model": write_model(model, folder / "model.onnx")}
        for key in ("calibration", "evaluation"):
            data, limit = args.pop(key, None), args.pop(f"{key}_limit", None)
            if data is not None:
                entry[key] = {"data": write_samples(data, folder / f"{key}.npz", key)}
                if limit is not None:
                    entry[key]["limit"] = limit
        if "quantized" in args:
            entry["quantized"] = write_model(args.pop("quantized"), folder / "quantized.onnx")
        if "known_bad" in args:
            args["known_bad"] = [kb if isinstance(kb, Mapping) else {"layer": str(kb), "reason": "known_bad in the "
                                 "test"} for kb in args["known_bad"]]
        entry.update(args)
        path = write_spec_file(entry, folder / "quantacc.yaml")
        try:
            spec = load_spec(path)
        except QuantaccInputError as exc:
            raise QuantaccCheckFailed(exc.message) from None
        if spec.broken:
            raise QuantaccCheckFailed(spec.broken[0].error.message)
        return spec.models[0]

    def _properties(self, ev) -> None:
        """The JUnit properties of the spec items: the convert item's, then each compared layer's."""
        from ..report.junit import junit_properties

        r = ev.result
        record = self._record
        record("quantacc.model", r.spec.name)
        record("quantacc.quantized_layers", r.quantized_layers)
        record("quantacc.samples", r.samples)
        record("quantacc.passes", r.passes)
        record("quantacc.cache", ev.cache)
        for c in r.comparisons:
            for lay in c.layers:
                if lay.status != SKIPPED:
                    record("quantacc.comparison", f"{c.reference}-vs-{c.target}")
                    for key, value in junit_properties(lay):
                        record(key, value)
        xfailed = [lay.layer.name for c in r.comparisons for lay in c.layers if lay.status == XFAILED]
        if xfailed:
            record("quantacc.known_bad_failing", ", ".join(dict.fromkeys(xfailed)))


def failure_text(ev) -> str:
    """What fails the test: the spec items' failure texts of every failing check, joined (empty: passed)."""
    from ..report.failures import agreement_text, layer_failure, outputs_failure

    r = ev.result
    if r.error is not None:
        return r.error.message
    if r.quantized_layers == 0:
        return (f"{r.spec.name}: ONNX Runtime's quantizer quantized no tensor of {r.spec.model.name}; a model with "
                "zero quantized layers cannot be checked")
    texts = []
    for c in r.comparisons:
        render = layer_failure if (c.reference, c.target) == ("float", "fixed") else outputs_failure
        failing = [lay for lay in c.layers if lay.status == FAILED or (
            lay.status == XPASSED and lay.known_bad is not None and lay.known_bad.strict)]
        if failing:
            first = failing[0]
            text = render(r, c, first).render() if first.status == FAILED else (
                f"{r.spec.name}: {c.reference} vs {c.target}: known_bad layer {first.layer.name} passes "
                f"(strict: remove it from known_bad)")
            more = [lay.layer.name for lay in failing[1:]]
            texts.append(text + (f"\nalso failing in {c.reference} vs {c.target}: {', '.join(more)}" if more else ""))
    if r.agreement is not None and not r.agreement.passed:
        texts.append(agreement_text(r).render())
    if ev.accuracy_error is not None:
        texts.append(ev.accuracy_error.message)
    elif ev.accuracy is not None and not ev.accuracy.passed:
        a = ev.accuracy
        texts.append(f"{r.spec.name}: task accuracy ({a.metric} on output {a.output}): float {a.float_value:.4f}, "
                     f"offline {a.offline_value:.4f}: drop {a.drop:.4f} > max_drop {a.max_drop}")
    return "\n\n".join(texts)


@pytest.fixture
def quantacc(request: pytest.FixtureRequest, record_property) -> Quantacc:
    """Gate the quantization accuracy of a model built in the test: ``quantacc.check(model, ...)``."""
    return Quantacc(request, record_property)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test using the fixture carries the marker too, so ``-m quantacc`` selects every accuracy gate (the spec
    items carry it as well); a bare marker adds no defaults."""
    for item in items:
        if MARKER in getattr(item, "fixturenames", ()) and item.get_closest_marker(MARKER) is None:
            item.add_marker(MARKER)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    """A failed check shows its text, like the spec items, instead of a traceback into the plugin."""
    report = yield
    if call.excinfo is not None and call.excinfo.errisinstance(QuantaccCheckFailed):
        report.longrepr = str(call.excinfo.value)
    return report
