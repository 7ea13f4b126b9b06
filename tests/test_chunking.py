"""Evaluation in several passes under a memory budget: same numbers as one pass, on real ONNX Runtime runs."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import onnx
import pytest

from conftest import write_spec, zoo_entry
from pytest_quantacc import evaluate_model, load_spec
from pytest_quantacc.engine.passes import parse_size, plan, tensor_bytes
from pytest_quantacc.engine.runner import Runner
from pytest_quantacc.graph.structure import input_infos, prune
from pytest_quantacc.samples import load_samples


@pytest.mark.parametrize("text, expected", [("4GB", 4 * 1000 ** 3), ("512MiB", 512 << 20), ("2g", 2 << 30),
                                            ("1.5 KiB", 1536), ("123", 123)])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "lots", "-1GB", "0", "4 parsecs"])
def test_parse_size_refuses_what_is_not_a_size(text):
    with pytest.raises(ValueError, match="not a memory size"):
        parse_size(text)


def test_plan_cuts_in_order_within_the_budget():
    costs = {"a": 40, "b": 30, "c": 50, "d": 10, "e": 300, "f": 20}
    p = plan(list(costs), costs.get, budget=200, in_flight=2)  # 100 bytes per pass
    assert p.passes == (("a", "b"), ("c", "d"), ("e",), ("f",))
    assert [i for chunk in p.passes for i in chunk] == list(costs)
    assert all(sum(costs[i] for i in chunk) <= 100 for chunk in p.passes if len(chunk) > 1)
    assert p.per_sample == 450 and not p.estimated
    assert plan(list(costs), costs.get, budget=900, in_flight=2).passes == (tuple(costs),)
    assert plan(list(costs), costs.get, budget=None, in_flight=2).count == 1


def test_plan_counts_unknown_sizes_as_the_largest_known():
    costs = {"a": 10, "b": None, "c": 60}
    p = plan(list(costs), costs.get, budget=140, in_flight=2)  # 70 per pass; b counts 60
    assert p.passes == (("a", "b"), ("c",)) and p.estimated and p.per_sample == 130


def test_tensor_bytes_match_what_onnx_runtime_returns(zoo_models):
    zm = zoo_models["transformer_block"]  # symbolic batch and sequence axes
    model = onnx.load(str(zm.model))
    samples = load_samples(zm.eval, None, input_infos(model), zm.model, "evaluation.data")
    sample = next(iter(samples))
    sizes = tensor_bytes(model, {k: v.shape for k, v in sample.items()})
    names = [t for n in model.graph.node for t in n.output]
    got = Runner(model, names, optimize=False).run(sample)
    checked = [t for t in names if t in sizes]
    assert len(checked) >= 0.9 * len(names)
    for t in checked:
        assert sizes[t] == got[t].nbytes, t


def test_pruned_graph_computes_the_same_values_with_fewer_nodes(zoo_models):
    zm = zoo_models["multi_io_model"]
    model = onnx.load(str(zm.model))
    samples = load_samples(zm.eval, None, input_infos(model), zm.model, "evaluation.data")
    names = [t for n in model.graph.node for t in n.output]
    early = names[: len(names) // 3]
    small = prune(model, early)
    assert len(small.graph.node) < len(model.graph.node)
    assert [o.name for o in small.graph.output] == early
    full, part = Runner(model, names, optimize=False), Runner(small, [], optimize=False)
    for sample in samples:
        a, b = full.run(sample), part.run(sample)
        for t in early:
            np.testing.assert_array_equal(a[t], b[t])


def _dump(result):
    """Every number of a result that must not depend on how the graph was split."""
    out = {}
    for c in result.comparisons:
        for r in c.layers:
            out[(c.reference, c.target, r.layer.tensor)] = (r.status, r.summary and asdict(r.summary),
                                                            r.own and asdict(r.own))
    if result.agreement is not None:
        out["agreement"] = [asdict(a) for a in result.agreement.tensors]
    return out


@pytest.mark.parametrize("name, modes", [("healthy_cnn", ["float", "fixed", "offline"]),
                                         ("outlier_channel_cnn", ["float", "fixed", "offline"]),
                                         ("transformer_block", ["float", "fixed", "offline"]),
                                         ("multi_io_model", ["float", "fixed"])])
@pytest.mark.parametrize("threads", [0, 1])
def test_many_passes_give_the_numbers_of_one(tmp_path, zoo_models, name, modes, threads):
    zm = zoo_models[name]
    spec = load_spec(write_spec(tmp_path / "s.yaml", [zoo_entry(name, zm, modes=modes)]))
    one = evaluate_model(spec.models[0], tmp_path / "work", threads=threads, memory_budget=1 << 40)
    many = evaluate_model(spec.models[0], tmp_path / "work", threads=threads, memory_budget=1)
    assert one.error is None and many.error is None
    assert one.passes == 1 and one.memory is None
    compared = sum(1 for r in many.comparisons[0].layers if r.status != "skipped")
    assert many.passes >= compared > 3  # a budget of one byte: a pass per layer
    assert f"{many.passes} passes over the graph" in many.memory
    assert _dump(many) == _dump(one)
    if name == "outlier_channel_cnn":  # the planted fault: found, with its own-error pass run in passes too
        fx = many.comparison("float", "fixed")
        assert fx.first_diverging is not None and fx.first_diverging.own is not None


def test_budget_option_reaches_the_report(pytester, zoo_models):
    zm = zoo_models["healthy_cnn"]
    spec = write_spec(pytester.path / "quantacc.yaml", [zoo_entry("healthy", zm)])
    res = pytester.runpytest("--quantacc", str(spec), "--quantacc-memory-budget", "1KB", "--quantacc-report",
                             "r.json", "--junitxml", "j.xml", "-p", "no:cacheprovider")
    assert res.ret == pytest.ExitCode.OK
    res.stdout.fnmatch_lines(["*memory: * passes over the graph*over the memory budget of 1000 B*"])
    passes = json.loads((pytester.path / "r.json").read_text())["models"][0]["passes"]
    assert passes > 1
    assert f'<property name="quantacc.passes" value="{passes}"' in (pytester.path / "j.xml").read_text()


def test_bad_budget_is_a_usage_error(pytester, zoo_models):
    zm = zoo_models["healthy_cnn"]
    spec = write_spec(pytester.path / "quantacc.yaml", [zoo_entry("healthy", zm)])
    res = pytester.runpytest("--quantacc", str(spec), "--quantacc-memory-budget", "plenty")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines(["*--quantacc-memory-budget*'plenty' is not a memory size*"])


def test_remedy_search_in_passes_finds_the_same_remedy(tmp_path, zoo_models):
    from pytest_quantacc.remedy.search import deepen

    zm = zoo_models["weight_outlier_cnn"]
    spec = load_spec(write_spec(tmp_path / "s.yaml", [zoo_entry("w", zm)]))
    found = []
    for budget in (1 << 40, 1):
        result = evaluate_model(spec.models[0], tmp_path / f"work{budget}", memory_budget=budget)
        d = deepen(result, attempts=4, memory_budget=budget).comparison("float", "fixed").diagnosis
        found.append((d.remedy, d.remedy_result, [a.as_json()["label"] for a in d.attempts]) if d.remedy else None)
    assert found[0] is not None and found[0] == found[1]


def test_vendor_dumps_in_passes_give_the_numbers_of_one(tmp_path):
    from conftest import EXAMPLE

    spec = load_spec(EXAMPLE / "quantacc_dumps.yaml")
    assert spec.models
    for mspec in spec.models:
        one = evaluate_model(mspec, tmp_path / "work", memory_budget=1 << 40)
        many = evaluate_model(mspec, tmp_path / "work", memory_budget=1)
        assert one.error is None and many.error is None, (one.error, many.error)
        assert one.passes == 1 and many.passes > 3
        assert _dump(many) == _dump(one) and any(r.summary for r in many.comparisons[0].layers)


def test_default_budget_is_shared_by_xdist_workers(pytester, zoo_models, monkeypatch):
    """Each worker gets its share of the default: with (absurdly) many workers, one worker's share is a few
    bytes and a model needs many passes, where a single process needs one."""
    zm = zoo_models["healthy_cnn"]
    spec = write_spec(pytester.path / "quantacc.yaml", [zoo_entry("healthy", zm)])
    alone = pytester.runpytest("--quantacc", str(spec), "-p", "no:cacheprovider")
    assert alone.ret == pytest.ExitCode.OK
    assert "passes over the graph" not in alone.stdout.str()
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", str(1 << 40))
    shared = pytester.runpytest("--quantacc", str(spec), "-p", "no:cacheprovider")
    assert shared.ret == pytest.ExitCode.OK
    shared.stdout.fnmatch_lines(["*memory: * passes over the graph*"])
