"""The shipped JSON Schema of the spec: valid draft 2020-12, accepts every example spec, rejects wrong ones."""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml

import pytest_quantacc

jsonschema = pytest.importorskip("jsonschema")

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_PATH = Path(pytest_quantacc.__file__).parent / "spec" / "schema.json"
EXAMPLES = sorted(p for p in (ROOT / "example_project").rglob("*.yaml") if "quantacc:" in p.read_text())


@pytest.fixture(scope="module")
def validator():
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _errors(validator, spec) -> list[str]:
    return sorted(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(spec))


def test_examples_found():
    assert {p.name for p in EXAMPLES} >= {"quantacc.yaml", "quantacc_dumps.yaml", "quantacc_outlier.yaml",
                                          "quantacc_pipeline.yaml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(ROOT)))
def test_example_specs_validate(validator, path):
    assert _errors(validator, yaml.safe_load(path.read_text())) == []


GOOD = {"quantacc": 1, "models": [{"name": "m", "model": "m.onnx", "calibration": {"data": "c.npz"}}]}


def _bad(path: str, value, delete: bool = False) -> dict:
    spec = copy.deepcopy(GOOD)
    *parents, last = path.split(".")
    node = spec["models"][0]
    for p in parents:
        node = node.setdefault(p, {})
    if delete:
        del node[last]
    else:
        node[last] = value
    return spec


@pytest.mark.parametrize("spec, where", [
    (_bad("quantization.methd", "minmax"), "models/0/quantization"),
    (_bad("quantization.method", "kl"), "models/0/quantization/method"),
    (_bad("quantization.activations", "int4"), "models/0/quantization/activations"),
    (_bad("quantization.per_channel", "yes"), "models/0/quantization/per_channel"),
    (_bad("thresholds.cos", 1.5), "models/0/thresholds/cos"),
    (_bad("modes", ["float"]), "models/0/modes"),
    (_bad("modes", ["float", "fixed", "fixed"]), "models/0/modes"),
    (_bad("name", "a/b"), "models/0/name"),
    (_bad("calibration", None, delete=True), "models/0"),
    (_bad("known_bad", [{"layer": "conv1"}]), "models/0/known_bad/0"),
    (_bad("dumps", {"fixed": {"path": "d", "command": ["x"]}}), "models/0/dumps/fixed"),
    (_bad("dumps", {"fixed": {"path": "d", "timeout": 5}}), "models/0/dumps/fixed"),
    (_bad("dumps", {"offline": {"path": "d"}, "fixed": {"path": "d"}}), "models/0/dumps"),
    (_bad("dumps", {"board": {"path": "d"}}), "models/0/dumps"),
    (_bad("preprocess", {"std": [1, 2, 3], "scale": 0.5}), "models/0/preprocess"),
    (_bad("modes", ["float", "original"]), "models/0"),
    (_bad("accuracy", {"metric": "top1"}), "models/0/accuracy"),
    ({**GOOD, "quantacc": 2}, "quantacc"),
    ({**GOOD, "model": "x.onnx"}, ""),
])
def test_wrong_specs_are_rejected(validator, spec, where):
    errors = _errors(validator, spec)
    assert errors and any(e.split(": ")[0] == where for e in errors), errors


def test_defaults_may_carry_what_entries_need(validator):
    spec = {"quantacc": 1, "defaults": {"calibration": {"data": "c.npz"}, "thresholds": {"cos": 0.98}},
            "models": [{"name": "a", "model": "a.onnx"}, {"name": "b", "model": "b.onnx"}]}
    assert _errors(validator, spec) == []
    del spec["defaults"]["calibration"]
    assert _errors(validator, spec) == ["models/0: 'calibration' is a required property",
                                        "models/1: 'calibration' is a required property"]  # each entry, at once


def test_every_key_the_contract_documents_is_in_the_schema():
    """The YAML examples of docs/CONTRACT.md sections 2, 8 and 10 name every key; each must be a schema key."""
    text = (ROOT / "docs" / "CONTRACT.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    documented = {m for b in blocks for m in re.findall(r"^\s*(?:- )?([a-z_]+):", b, re.M)}
    schema_keys = set()

    def walk(node):
        if isinstance(node, dict):
            schema_keys.update(node.get("properties", {}))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(json.loads(SCHEMA_PATH.read_text()))
    keyed_by_user = {"conv5"}  # an example node name under overrides, not a key of the format
    assert documented - keyed_by_user - schema_keys == set()
    assert len(documented) >= 60  # the extraction found the blocks


QUANTIZED = {"quantacc": 1, "models": [{"name": "q", "model": "f.onnx", "quantized": "q.onnx",
                                        "evaluation": {"data": "e.npz"}}]}


def test_quantized_entries(validator):
    assert _errors(validator, QUANTIZED) == []  # no calibration needed
    for extra, where in (({"quantization": {"per_channel": True}}, "models/0"), ({"evaluation": None}, "models/0")):
        spec = copy.deepcopy(QUANTIZED)
        spec["models"][0].update(extra)
        if extra.get("evaluation", 0) is None:
            del spec["models"][0]["evaluation"]
        assert any(e.split(": ")[0] == where for e in _errors(validator, spec)), extra


def test_extra_options_are_the_table_of_convert_ort_options(validator):
    from pytest_quantacc.convert.ort_options import OPTIONS

    props = json.loads(SCHEMA_PATH.read_text())["$defs"]["quantization"]["properties"]["extra_options"]["properties"]
    assert list(props) == [o.name for o in OPTIONS]
    assert _errors(validator, _bad("quantization.extra_options", {"ActivationSymmetric": True})) == []
    errors = _errors(validator, _bad("quantization.extra_options", {"ActivationSymetric": True}))
    assert [e.split(": ")[0] for e in errors] == ["models/0/quantization/extra_options"]
    errors = _errors(validator, _bad("quantization", {"format": "qoperator", "method": "distribution"}))
    assert errors == []
    spec = _bad("quantization", {"format": "qoperator"})
    spec["models"][0]["modes"] = ["float", "fixed"]
    assert _errors(validator, spec)


def test_quantacc_schema_option_prints_the_shipped_schema(pytester):
    result = pytester.runpytest("--quantacc-schema")
    assert result.ret == 0
    assert json.loads(result.stdout.str()) == json.loads(SCHEMA_PATH.read_text())


def test_spec_errors_give_the_line(tmp_path):
    from pytest_quantacc.errors import QuantaccInputError
    from pytest_quantacc.spec.parse import load_spec

    text = """quantacc: 1
defaults:
  thresholds: {cos: 0.99}
models:
  - name: a
    model: m.onnx
    calibration: {data: c.npz}
    quantization:
      method: kl
  - name: b
    model: m.onnx
    calibration:
      data: c.npz
    thresholds:
      coss: 0.9
  - name: c
    model: m.onnx
    calibration: {data: c.npz}
    quantization:
      extra_options: {extra.Sigmoid.nnapi: 1}
      format: qlinear
"""
    (tmp_path / "m.onnx").write_bytes(b"")
    (tmp_path / "c.npz").write_bytes(b"")
    path = tmp_path / "quantacc.yaml"
    path.write_text(text)
    broken = {b.name: b.error for b in load_spec(path).broken}
    assert (broken["a"].key, broken["a"].line) == ("models[0].quantization.method", 9)
    assert (broken["b"].key, broken["b"].line) == ("models[1].thresholds.coss", 15)
    assert (broken["c"].key, broken["c"].line) == ("models[2].quantization.format", 21)
    assert broken["a"].message.endswith("(line 9)")
    path.write_text(text.replace("quantacc: 1", "quantacc: 2"))
    with pytest.raises(QuantaccInputError) as info:
        load_spec(path)
    assert info.value.line == 1


def test_board_dumps(validator):
    assert _errors(validator, _bad("dumps", {"offline": {"path": "board"}})) == []
    spec = _bad("dumps", {"offline": {"path": "board"}})
    spec["models"][0]["modes"] = ["float", "fixed"]
    assert _errors(validator, spec)
