"""Unit tests of ``load_spec`` (contract section 2): no pytest plugin, no ONNX Runtime involved.

``load_spec`` only checks that referenced files exist, so the files here are empty placeholders.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pytest_quantacc.errors import QuantaccInputError
from pytest_quantacc.spec.model import (
    KnownBad,
    LayerRule,
    ModelSpec,
    OfflineGate,
    Override,
    Quantization,
    Spec,
    Thresholds,
)
from pytest_quantacc.spec.parse import load_spec

FULL_SPEC = """\
quantacc: 1
defaults:
  thresholds: {cos: 0.99, rmse: 0.1}
models:
  - name: digits_cnn
    model: models/digits_cnn.onnx
    calibration:
      data: data/calib.npz
      limit: 64
    evaluation:
      data: data/eval.npz
      limit: 16
    quantization:
      method: percentile
      percentile: 99.9
      per_channel: true
      reduce_range: true
      activations: int16
      weights: uint8
      exclude_nodes: [conv1, fc]
      exclude_op_types: [Softmax]
      overrides:
        conv5: {activations: int16}
        fc: {weights: int16}
    modes: [float, fixed, offline]
    thresholds: {cos: 0.995, rmse: 0.05}
    layers:
      "head/*": {cos: 0.98}
      "conv?": {rmse: 0.2}
    known_bad:
      - layer: conv5
        reason: one output channel carries a 400x outlier; int16 fix pending
        strict: true
      - layer: "relu*"
        reason: relus are hopeless
    offline: {tolerance_steps: 3, max_mismatch_rate: 0.05}
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project folder with the files FULL_SPEC and the small specs below refer to."""
    for rel in ("models/digits_cnn.onnx", "models/other.onnx", "data/calib.npz", "data/eval.npz"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    return tmp_path


def write(folder: Path, text: str, name: str = "quantacc.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def model_entry(name: str, **extra: object) -> dict:
    entry = {"name": name, "model": "models/digits_cnn.onnx", "calibration": {"data": "data/calib.npz"}}
    entry.update(extra)
    return entry


def model_with(name: str, fragment: dict) -> dict:
    return {**model_entry(name), **fragment}


def spec_text(*models: dict, defaults: dict | None = None) -> str:
    doc: dict = {"quantacc": 1}
    if defaults is not None:
        doc["defaults"] = defaults
    doc["models"] = list(models)
    return yaml.safe_dump(doc, sort_keys=False)


def load_one(project: Path, text: str) -> ModelSpec:
    spec = load_spec(write(project, text))
    assert not spec.broken, [b.error.message for b in spec.broken]
    assert len(spec.models) == 1
    return spec.models[0]


def load_error(project: Path, text: str) -> QuantaccInputError:
    """The one error of a spec with one model, whether it is spec-wide (raised) or per model (broken)."""
    path = write(project, text)
    try:
        spec = load_spec(path)
    except QuantaccInputError as exc:
        return exc
    assert not spec.models
    assert len(spec.broken) == 1
    return spec.broken[0].error


# --------------------------------------------------------------------------------------------------------
# a valid spec
# --------------------------------------------------------------------------------------------------------


def test_full_spec_loads_into_the_expected_values(project: Path) -> None:
    path = write(project, FULL_SPEC)
    spec = load_spec(path)
    assert isinstance(spec, Spec)
    assert spec.path == path
    assert spec.broken == ()
    (m,) = spec.models
    assert m.name == "digits_cnn"
    assert m.index == 0
    assert m.key == "models[0]"
    assert m.spec_path == path
    assert m.model == (project / "models/digits_cnn.onnx").resolve()
    assert m.calibration.path == (project / "data/calib.npz").resolve()
    assert m.calibration.limit == 64
    assert m.calibration.key == "models[0].calibration.data"
    assert m.evaluation.path == (project / "data/eval.npz").resolve()
    assert m.evaluation.limit == 16
    assert m.evaluation.key == "models[0].evaluation.data"
    assert m.quantization == Quantization(
        method="percentile",
        percentile=99.9,
        per_channel=True,
        reduce_range=True,
        activations="int16",
        weights="uint8",
        exclude_nodes=("conv1", "fc"),
        exclude_op_types=("Softmax",),
        overrides=(Override("conv5", activations="int16"), Override("fc", weights="int16")),
    )
    assert m.modes == ("float", "fixed", "offline")
    assert m.thresholds == Thresholds(cos=0.995, rmse=0.05)
    # a layer rule that sets one threshold keeps the model's other threshold
    assert m.layers == (
        LayerRule("head/*", Thresholds(cos=0.98, rmse=0.05)),
        LayerRule("conv?", Thresholds(cos=0.995, rmse=0.2)),
    )
    assert m.known_bad == (
        KnownBad("conv5", "one output channel carries a 400x outlier; int16 fix pending", strict=True),
        KnownBad("relu*", "relus are hopeless", strict=False),
    )
    assert m.offline == OfflineGate(tolerance_steps=3, max_mismatch_rate=0.05)
    assert isinstance(m.quantization.percentile, float)


def test_minimal_spec_gets_the_documented_defaults(project: Path) -> None:
    m = load_one(project, spec_text(model_entry("a")))
    assert m.quantization == Quantization()
    assert m.quantization.method == "minmax"
    assert m.quantization.activations == "uint8" and m.quantization.weights == "int8"
    assert m.quantization.per_channel is False and m.quantization.reduce_range is False
    assert m.modes == ("float", "fixed", "offline")
    assert m.thresholds == Thresholds(cos=0.99, rmse=0.1)
    assert m.layers == () and m.known_bad == ()
    assert m.offline == OfflineGate()
    assert m.calibration.limit is None


def test_evaluation_defaults_to_calibration(project: Path) -> None:
    m = load_one(project, spec_text(model_entry("a", calibration={"data": "data/calib.npz", "limit": 8})))
    assert m.evaluation == m.calibration
    assert m.evaluation.path == (project / "data/calib.npz").resolve()
    assert m.evaluation.limit == 8


def test_paths_resolve_relative_to_the_spec_file_not_the_cwd(project: Path, monkeypatch) -> None:
    sub = project / "specs" / "deep"
    sub.mkdir(parents=True)
    elsewhere = project / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    text = spec_text({
        "name": "a",
        "model": "../../models/other.onnx",
        "calibration": {"data": "../../data/calib.npz"},
        "evaluation": {"data": "../../data/eval.npz"},
    })
    m = load_spec(write(sub, text)).models[0]
    assert m.model == (project / "models/other.onnx").resolve()
    assert m.model.is_absolute()
    assert m.calibration.path == (project / "data/calib.npz").resolve()
    assert m.evaluation.path == (project / "data/eval.npz").resolve()


def test_paths_are_checked_relative_to_the_spec_file(project: Path, monkeypatch) -> None:
    """A path valid from the cwd but not from the spec's folder is 'not found'."""
    sub = project / "specs"
    sub.mkdir()
    monkeypatch.chdir(project)
    exc = load_error(sub, spec_text(model_entry("a")))
    assert exc.key in ("models[0].model", "models[0].calibration.data")
    assert "file not found" in exc.problem
    assert str(sub) in exc.problem  # the path it looked for is under the spec's folder


# --------------------------------------------------------------------------------------------------------
# defaults
# --------------------------------------------------------------------------------------------------------


def test_defaults_deep_merge_keeps_the_other_threshold(project: Path) -> None:
    text = spec_text(
        model_entry("a", thresholds={"cos": 0.9}),
        model_entry("b", model="models/other.onnx"),
        defaults={"thresholds": {"cos": 0.97, "rmse": 0.2}, "quantization": {"method": "entropy", "per_channel": True}},
    )
    spec = load_spec(write(project, text))
    assert spec.broken == ()
    a, b = spec.models
    assert a.thresholds == Thresholds(cos=0.9, rmse=0.2)  # cos overridden, rmse from defaults
    assert b.thresholds == Thresholds(cos=0.97, rmse=0.2)
    assert a.quantization.method == b.quantization.method == "entropy"
    assert a.quantization.per_channel and b.quantization.per_channel


def test_defaults_nested_override_keeps_sibling_keys(project: Path) -> None:
    text = spec_text(
        model_entry("a", quantization={"activations": "int8"}, calibration={"limit": 4}),
        defaults={"quantization": {"method": "percentile", "percentile": 99.0},
                  "calibration": {"data": "data/eval.npz"}},
    )
    m = load_one(project, text)
    assert m.quantization.method == "percentile"
    assert m.quantization.percentile == 99.0
    assert m.quantization.activations == "int8"
    # calibration.data comes from defaults, the model's limit merges in beside it
    assert m.calibration.path == (project / "data/eval.npz").resolve()
    assert m.calibration.limit == 4


def test_defaults_can_supply_required_keys(project: Path) -> None:
    text = spec_text({"name": "a"}, {"name": "b"},
                     defaults={"model": "models/digits_cnn.onnx", "calibration": {"data": "data/calib.npz"}})
    spec = load_spec(write(project, text))
    assert [m.name for m in spec.models] == ["a", "b"]
    assert all(m.model == (project / "models/digits_cnn.onnx").resolve() for m in spec.models)


def test_empty_defaults_is_fine(project: Path) -> None:
    m = load_one(project, "quantacc: 1\ndefaults:\nmodels:\n"
                          "  - {name: a, model: models/digits_cnn.onnx, calibration: {data: data/calib.npz}}\n")
    assert m.thresholds == Thresholds()


# --------------------------------------------------------------------------------------------------------
# thresholds_for / known_bad_for
# --------------------------------------------------------------------------------------------------------


def test_thresholds_for_first_matching_rule_wins(project: Path) -> None:
    layers = {
        "head/fc": {"cos": 0.5},
        "head/*": {"cos": 0.6},
        "*": {"rmse": 0.7},
        "head/never": {"cos": 0.1},  # shadowed by head/* which comes first
    }
    m = load_one(project, spec_text(model_entry("a", thresholds={"cos": 0.95, "rmse": 0.05}, layers=layers)))
    assert m.thresholds_for("head/fc") == Thresholds(cos=0.5, rmse=0.05)
    assert m.thresholds_for("head/proj") == Thresholds(cos=0.6, rmse=0.05)
    assert m.thresholds_for("head/never") == Thresholds(cos=0.6, rmse=0.05)
    assert m.thresholds_for("conv1") == Thresholds(cos=0.95, rmse=0.7)


def test_thresholds_for_falls_back_to_model_thresholds(project: Path) -> None:
    m = load_one(project, spec_text(model_entry("a", thresholds={"rmse": 0.3}, layers={"conv[12]": {"cos": 0.9}})))
    assert m.thresholds_for("conv1") == Thresholds(cos=0.9, rmse=0.3)
    assert m.thresholds_for("conv2") == Thresholds(cos=0.9, rmse=0.3)
    assert m.thresholds_for("conv3") == Thresholds(cos=0.99, rmse=0.3)
    # globs are case sensitive and match the whole name
    assert m.thresholds_for("CONV1") == Thresholds(cos=0.99, rmse=0.3)
    assert m.thresholds_for("xconv1") == Thresholds(cos=0.99, rmse=0.3)


def test_known_bad_for(project: Path) -> None:
    known_bad = [
        {"layer": "conv5", "reason": "outlier", "strict": True},
        {"layer": "block*/relu", "reason": "glob"},
        {"layer": "conv*", "reason": "later rule"},
    ]
    m = load_one(project, spec_text(model_entry("a", known_bad=known_bad)))
    assert m.known_bad_for("conv5") == KnownBad("conv5", "outlier", True)
    assert m.known_bad_for("block3/relu") == KnownBad("block*/relu", "glob", False)
    assert m.known_bad_for("conv1") == KnownBad("conv*", "later rule", False)
    assert m.known_bad_for("relu1") is None
    assert m.known_bad_for("block3/relu2") is None


# --------------------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------------------


def test_duplicate_model_names(project: Path) -> None:
    text = spec_text(model_entry("a"), model_entry("b"), model_entry("a", model="models/other.onnx"))
    path = write(project, text)
    spec = load_spec(path)
    assert [m.name for m in spec.models] == ["a", "b"]
    (broken,) = spec.broken
    assert broken.index == 2
    assert broken.name == "models[2]"  # not "a": that id is taken by the valid model
    assert broken.error.spec == str(path)
    assert broken.error.key == "models[2].name"
    assert "duplicate model name 'a'" in broken.error.problem
    assert "models[0]" in broken.error.problem


def test_per_model_errors_are_isolated(project: Path) -> None:
    text = spec_text(
        model_entry("good1"),
        model_entry("typo", thresholdz={"cos": 0.9}),
        model_entry("good2", model="models/other.onnx"),
        model_entry("bad_method", quantization={"method": "kmeans"}),
        "not a mapping",
        model_entry("missing_file", model="models/nope.onnx"),
    )
    path = write(project, text)
    spec = load_spec(path)
    assert [(m.name, m.index) for m in spec.models] == [("good1", 0), ("good2", 2)]
    broken = {b.index: b for b in spec.broken}
    assert sorted(broken) == [1, 3, 4, 5]
    assert broken[1].name == "typo"
    assert broken[1].error.key == "models[1].thresholdz"
    assert "did you mean 'thresholds'" in broken[1].error.problem
    assert broken[3].error.key == "models[3].quantization.method"
    assert "'kmeans' is not one of minmax, entropy, percentile" in broken[3].error.problem
    assert broken[4].name == "models[4]"
    assert broken[4].error.key == "models[4]"
    assert broken[5].error.key == "models[5].model"
    assert "file not found" in broken[5].error.problem
    for b in spec.broken:
        assert b.error.message.startswith(f"{path}: models[{b.index}]")


CASES = [
    # (spec fragment for model "a", key path, words in the problem)
    ({"thresholds": {"cos": 1.5}}, "models[0].thresholds.cos", "1.5 is out of range [-1.0, 1.0]"),
    ({"thresholds": {"rmse": -0.1}}, "models[0].thresholds.rmse", "out of range"),
    ({"thresholds": {"cos": "high"}}, "models[0].thresholds.cos", "expected a number"),
    ({"thresholds": {"cos": True}}, "models[0].thresholds.cos", "expected a number"),
    ({"thresholds": {"cos": float("nan")}}, "models[0].thresholds.cos", "expected a number"),
    ({"thresholds": {"cos": 0.9, "rsme": 0.1}}, "models[0].thresholds.rsme", "did you mean 'rmse'"),
    ({"quantization": {"method": "minmaxx"}}, "models[0].quantization.method", "did you mean 'minmax'"),
    ({"quantization": {"activations": "int4"}}, "models[0].quantization.activations", "is not one of"),
    ({"quantization": {"weights": "float"}}, "models[0].quantization.weights", "is not one of"),
    ({"quantization": {"percentile": 20}}, "models[0].quantization.percentile", "out of range"),
    ({"quantization": {"per_channel": "yes"}}, "models[0].quantization.per_channel", "expected true or false"),
    ({"quantization": {"exclude_nodes": "conv1"}}, "models[0].quantization.exclude_nodes", "expected a list"),
    ({"quantization": {"overrides": {"conv1": {"activations": "int3"}}}},
     "models[0].quantization.overrides.conv1.activations", "is not one of"),
    ({"quantization": {"overrides": ["conv1"]}}, "models[0].quantization.overrides", "expected a mapping"),
    ({"modes": ["float"]}, "models[0].modes", "at least two"),
    ({"modes": ["float", "float"]}, "models[0].modes", "at least two"),
    ({"modes": ["float", "fixd"]}, "models[0].modes[1]", "did you mean 'fixed'"),
    ({"calibration": {"data": "data/calib.npz", "limit": 0}}, "models[0].calibration.limit", "below the minimum 1"),
    ({"calibration": {"data": "data/calib.npz", "limit": 2.5}}, "models[0].calibration.limit", "whole number"),
    ({"calibration": {"limit": 3}}, "models[0].calibration.data", "required key is missing"),
    ({"evaluation": {"data": "data/missing.npz"}}, "models[0].evaluation.data", "file not found"),
    ({"known_bad": [{"layer": "conv1"}]}, "models[0].known_bad[0].reason", "required key is missing"),
    ({"known_bad": {"layer": "conv1", "reason": "x"}}, "models[0].known_bad", "expected a list"),
    ({"layers": ["conv1"]}, "models[0].layers", "expected a mapping"),
    ({"layers": {"conv*": {"cos": 2}}}, "models[0].layers.conv*.cos", "out of range"),
    ({"offline": {"tolerance_steps": -1}}, "models[0].offline.tolerance_steps", "below the minimum 0"),
    ({"offline": {"max_mismatch_rate": 1.5}}, "models[0].offline.max_mismatch_rate", "out of range"),
    ({"offline": {"tolerance": 1}}, "models[0].offline.tolerance", "unknown key"),
    ({"name": "a/b"}, "models[0].name", "may not contain"),
    ({"name": ""}, "models[0].name", "non-empty string"),
]


@pytest.mark.parametrize("fragment, key, problem", CASES, ids=[c[1] + ":" + c[2][:20] for c in CASES])
def test_bad_values_name_the_key_path(project: Path, fragment: dict, key: str, problem: str) -> None:
    exc = load_error(project, spec_text(model_with("a", fragment)))
    assert exc.key == key
    assert problem in exc.problem
    assert exc.message.startswith(str(project / "quantacc.yaml"))


def test_missing_required_model_key(project: Path) -> None:
    exc = load_error(project, spec_text({"name": "a", "calibration": {"data": "data/calib.npz"}}))
    assert exc.key == "models[0].model"
    assert "required key is missing" in exc.problem


@pytest.mark.parametrize("text, key, problem", [
    ("", "", "a spec is a mapping"),
    ("- 1\n- 2\n", "", "a spec is a mapping"),
    ("quantacc: 1\n", "models", "required key is missing"),
    ("models: []\n", "quantacc", "required key is missing"),
    ("quantacc: 2\nmodels: []\n", "quantacc", "unsupported spec version 2"),
    ("quantacc: 1\nmodels: []\n", "models", "the list is empty"),
    ("quantacc: 1\nmodels: {a: 1}\n", "models", "expected a list"),
    ("quantacc: 1\nmodel: []\n", "model", "did you mean 'models'"),
    ("quantacc: 1\ndefaults: [1]\nmodels: [{}]\n", "defaults", "expected a mapping"),
    ("quantacc: 1\nmodels: [\n", "", "not valid YAML"),
])
def test_spec_wide_errors_raise(project: Path, text: str, key: str, problem: str) -> None:
    path = write(project, text)
    with pytest.raises(QuantaccInputError) as info:
        load_spec(path)
    assert info.value.key == key
    assert problem in info.value.problem
    assert info.value.message.startswith(str(path))


def test_unreadable_spec_raises_input_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(QuantaccInputError, match="cannot read the spec") as info:
        load_spec(missing)
    assert info.value.message.startswith(str(missing))
    (tmp_path / "latin1.yaml").write_bytes(b"quantacc: 1\nname: caf\xe9\n")
    with pytest.raises(QuantaccInputError, match="cannot read the spec"):
        load_spec(tmp_path / "latin1.yaml")
    (tmp_path / "dir.yaml").mkdir()
    with pytest.raises(QuantaccInputError, match="cannot read the spec"):
        load_spec(tmp_path / "dir.yaml")


# --------------------------------------------------------------------------------------------------------
# bugs found (strict xfail: they flip to a failure once fixed, so the marker gets removed)
# --------------------------------------------------------------------------------------------------------


def _never_crashes(path: Path) -> None:
    """load_spec returns or raises QuantaccInputError located at ``path``; anything else is a bug."""
    try:
        load_spec(path)
    except QuantaccInputError as exc:
        assert exc.message.startswith(str(path))


def test_huge_integer_threshold(project: Path) -> None:
    text = ("quantacc: 1\nmodels:\n  - name: a\n    model: models/digits_cnn.onnx\n"
            "    calibration: {data: data/calib.npz}\n    thresholds: {cos: " + "1" * 400 + "}\n")
    _never_crashes(write(project, text))


def test_nul_byte_in_model_path(project: Path) -> None:
    _never_crashes(write(project, spec_text(model_entry("a", model="models/a\0b.onnx"))))


def test_overlong_model_path(project: Path) -> None:
    _never_crashes(write(project, spec_text(model_entry("a", model="m" * 300 + ".onnx"))))


def test_deeply_nested_yaml(tmp_path: Path) -> None:
    path = tmp_path / "quantacc.yaml"
    path.write_text("[" * 5000 + "]" * 5000)
    _never_crashes(path)


def test_duplicate_names_through_defaults(project: Path) -> None:
    text = spec_text({"model": "models/digits_cnn.onnx"}, {"model": "models/other.onnx"},
                     defaults={"name": "same", "calibration": {"data": "data/calib.npz"}})
    spec = load_spec(write(project, text))
    names = [m.name for m in spec.models]
    assert len(names) == len(set(names)), names


def test_boolean_spec_version_accepted(project: Path) -> None:
    path = write(project, spec_text(model_entry("a")).replace("quantacc: 1", "quantacc: true"))
    with pytest.raises(QuantaccInputError):
        load_spec(path)


@pytest.mark.xfail(reason="a bad key under `defaults` is reported at models[i].<key>, a key path that does "
                          "not exist in the file, once per model, instead of defaults.<key>", strict=True)
def test_bug_defaults_error_names_defaults_key_path(project: Path) -> None:
    text = spec_text(model_entry("a"), defaults={"thresholdz": {"cos": 0.9}})
    exc = load_error(project, text)
    assert exc.key == "defaults.thresholdz"


# --------------------------------------------------------------------------------------------------------
# property: load_spec never fails with anything but QuantaccInputError
# --------------------------------------------------------------------------------------------------------

# Integers stay within float range and text avoids NUL and overlong names: those inputs crash load_spec
# today and have their own strict-xfail tests above (test_bug_*). Everything else must be handled.
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**100), max_value=2**100)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=20)
)
_yaml_data = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
_KEYS = ["quantacc", "defaults", "models", "name", "model", "calibration", "evaluation", "data", "limit",
         "quantization", "method", "percentile", "per_channel", "reduce_range", "activations", "weights",
         "exclude_nodes", "exclude_op_types", "overrides", "modes", "thresholds", "cos", "rmse", "layers",
         "known_bad", "layer", "reason", "strict", "offline", "tolerance_steps", "max_mismatch_rate",
         "models/digits_cnn.onnx", "data/calib.npz", "minmax", "float", "fixed", "uint8"]
# Spec-shaped documents reach the per-model validators instead of stopping at the top level.
_spec_like_values = st.recursive(
    _scalars | st.sampled_from(_KEYS),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=6), children, max_size=5),
    max_leaves=25,
)
def _mostly(good: st.SearchStrategy, bad: st.SearchStrategy) -> st.SearchStrategy:
    """``good`` seven times out of eight, else ``bad``."""
    return st.integers(0, 7).flatmap(lambda i: bad if i == 0 else good)


_name_text = st.text(max_size=6)
_thr = st.fixed_dictionaries({}, optional={"cos": st.floats(-1.5, 1.5), "rmse": st.floats(-0.5, 5.0)})
_valid_ish = {  # mostly valid fragments, with a few wrong values in range of each validator
    "evaluation": st.fixed_dictionaries({"data": st.sampled_from(["data/eval.npz", "data/nope.npz"])},
                                        optional={"limit": st.integers(-1, 10)}),
    "quantization": st.fixed_dictionaries({}, optional={
        "method": st.sampled_from(["minmax", "entropy", "percentile", "kmeans"]),
        "percentile": st.floats(0, 110),
        "per_channel": st.booleans(),
        "reduce_range": st.booleans() | st.none(),
        "activations": st.sampled_from(["uint8", "int8", "uint16", "int16", "int4"]),
        "weights": st.sampled_from(["uint8", "int8", "uint16", "int16", "float"]),
        "exclude_nodes": st.lists(_name_text, max_size=2),
        "exclude_op_types": st.lists(_name_text, max_size=2),
        "overrides": st.dictionaries(_name_text, st.fixed_dictionaries({}, optional={
            "activations": st.sampled_from(["int16", "int9"]), "weights": st.sampled_from(["int8", "x"])}),
            max_size=2),
    }),
    "modes": _mostly(st.permutations(["float", "fixed", "offline"]).flatmap(
        lambda p: st.integers(2, 3).map(lambda n: p[:n])),
        st.lists(st.sampled_from(["float", "fixed", "offline", "fixd"]), max_size=3)),
    "thresholds": _thr,
    "layers": st.dictionaries(_name_text, _thr, max_size=3),
    "known_bad": st.lists(st.fixed_dictionaries({"layer": _name_text, "reason": _name_text},
                                                optional={"strict": st.booleans()}), max_size=2),
    "offline": st.fixed_dictionaries({}, optional={"tolerance_steps": st.integers(-1, 5),
                                                   "max_mismatch_rate": st.floats(0, 1.5)}),
}
_model_entries = st.fixed_dictionaries(
    {"name": _mostly(st.sampled_from(["a", "b", "c", "a"]), st.sampled_from(["c/d", ""]) | _scalars),
     "model": st.sampled_from(["models/digits_cnn.onnx", "models/other.onnx", "models/nope.onnx"]),
     "calibration": st.fixed_dictionaries({"data": _mostly(st.just("data/calib.npz"), st.just("x"))},
                                          optional={"limit": _mostly(st.integers(1, 3), st.integers(-1, 0))})},
    optional={k: _mostly(v, _spec_like_values) for k, v in _valid_ish.items()},
)
_spec_like = st.fixed_dictionaries(
    {"quantacc": _mostly(st.just(1), st.sampled_from([2, "1", None])),
     "models": _mostly(st.lists(_mostly(_model_entries, _spec_like_values), min_size=1, max_size=3),
                       _spec_like_values)},
    optional={"defaults": _mostly(st.fixed_dictionaries({}, optional=_valid_ish), _spec_like_values)},
)

_spec_docs = _spec_like.map(lambda d: yaml.safe_dump(d, allow_unicode=True, sort_keys=False).encode())
_documents = st.one_of(
    _spec_docs,
    _spec_docs,
    _yaml_data.map(lambda d: yaml.safe_dump(d, allow_unicode=True).encode()),
    st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",))).map(str.encode),
    st.binary(max_size=200),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                    HealthCheck.too_slow])
@given(doc=_documents)
def test_property_load_spec_returns_or_raises_input_error(project: Path, doc: bytes) -> None:
    path = project / "quantacc.yaml"
    path.write_bytes(doc)
    try:
        spec = load_spec(path)
    except QuantaccInputError as exc:
        assert exc.message.startswith(str(path))
        event("spec-wide error")
        return
    event("loaded, with broken models" if spec.broken else "loaded")
    event(f"{len(spec.models)} valid model(s)")
    assert isinstance(spec, Spec)
    assert spec.models or spec.broken
    for b in spec.broken:
        assert b.error.message.startswith(f"{path}: models[{b.index}]")
    for m in spec.models:
        assert isinstance(m, ModelSpec)
        assert m.model.is_absolute()
        assert -1.0 <= m.thresholds.cos <= 1.0 and m.thresholds.rmse >= 0.0
        assert not math.isnan(m.thresholds.cos)
    ids = [m.index for m in spec.models] + [b.index for b in spec.broken]
    assert sorted(ids) == list(range(len(ids)))
