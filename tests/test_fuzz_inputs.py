"""Property tests of the two loaders that read what users write (issue "Hostile input").

- ``load_spec`` on generated spec trees (the contract's keys with hostile values: wrong types, NaN, Inf, huge
  integers, NUL bytes, long strings, '..', nested junk) and on generated YAML text: the only exception that may
  escape is ``QuantaccInputError``, and every message (raised or carried by a broken model entry) is bounded.
- ``load_samples`` on generated ``.npz`` files (names, dtypes, shapes, compression, NaN/Inf, rank 0, damaged
  bytes) against generated model inputs: only ``QuantaccInputError`` escapes, and every sample handed out is an
  array of the input's dtype whose shape fits the input's shape.

The example budgets are fixed and derandomized, so CI sees the same examples every run and stays fast.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from pytest_quantacc import QuantaccInputError, load_spec
from pytest_quantacc.samples import InputInfo, load_samples

MESSAGE_BOUND = 2000  # characters: a message quotes values through a bounded repr


def budget(examples: int) -> settings:
    """A fixed, derandomized example budget (no example database: every run sees the same examples). No
    shrinking: a failing example is reported as generated, which keeps a failing run as fast as a passing one."""
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Files a generated spec may name: a model, data, a folder, a metric module (none is a device or FIFO:
    those hang today and are the catalogue's business, not the fuzzer's)."""
    d = tmp_path_factory.mktemp("fuzz")
    (d / "m.onnx").write_bytes(b"not really onnx")
    np.savez(d / "d.npz", input=np.zeros((2, 3), np.float32))
    (d / "dir").mkdir()
    (d / "metric.py").write_text("def score(o, l):\n    return 1.0\n")
    (d / "q.json").write_text('{"relu*": {"scale": 0.1, "zero_point": 0}}')
    return d


# --------------------------------------------------------------------------------------------------------
# spec trees
# --------------------------------------------------------------------------------------------------------

PATHS = ["m.onnx", "d.npz", "dir", "missing.onnx", "", ".", "..", "../../etc/passwd", "a\0b", "x" * 300,
         "metric.py:score", "metric.py:nope", "dir:score", "q.json", "{out}/q.json"]
WORDS = ["minmax", "entropy", "percentile", "uint8", "int8", "int16", "uint16", "float", "fixed", "offline",
         "original", "top1", "nhwc", "nchw", "npz", "npy", "NHWC", "RGB", "BGR", "relu1", "conv*", "re:(.+)", "\\1",
         "\\5", "re:(", "{python}", "{model}", "{model:d}", "{out:>30}", "{nope}", "{", "}", "'unclosed"]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10, 10), st.just(10 ** 400), st.just(-(10 ** 400)),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(PATHS), st.sampled_from(WORDS),
    st.text(max_size=12), st.just("y" * 3000),
)
junk = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                     st.dictionaries(st.sampled_from(WORDS + ["cos", "rmse"]), inner,
                                                                     max_size=3)), max_leaves=12)


def keyed(keys: dict[str, st.SearchStrategy]) -> st.SearchStrategy:
    """A mapping holding some of ``keys`` (each with its own value strategy, or junk), plus maybe a typo."""
    return st.fixed_dictionaries({}, optional={k: st.one_of(v, junk) for k, v in keys.items()}
                                 | {"typo_key": junk})


thresholds = keyed({"cos": st.floats(-2, 2), "rmse": st.floats(0, 1e3)})
data = keyed({"data": st.sampled_from(PATHS), "limit": st.integers(-2, 5), "labels": st.sampled_from(PATHS),
              "output": st.sampled_from(WORDS)})
quantization = keyed({"method": st.sampled_from(WORDS), "percentile": st.floats(0, 200),
                      "per_channel": st.booleans(), "reduce_range": st.booleans(),
                      "activations": st.sampled_from(WORDS), "weights": st.sampled_from(WORDS),
                      "exclude_nodes": st.lists(st.sampled_from(WORDS)), "exclude_op_types": st.lists(st.text()),
                      "overrides": st.dictionaries(st.sampled_from(WORDS), keyed({"activations": st.sampled_from(WORDS),
                                                                                  "weights": st.sampled_from(WORDS)}),
                                                   max_size=2)})
dumps = st.fixed_dictionaries({"fixed": keyed({
    "path": st.sampled_from(PATHS), "command": st.one_of(st.lists(st.sampled_from(WORDS), max_size=4),
                                                         st.sampled_from(WORDS)),
    "format": st.sampled_from(WORDS), "names": st.dictionaries(st.sampled_from(WORDS), st.sampled_from(WORDS),
                                                               max_size=2),
    "layout": st.sampled_from(WORDS), "model_layout": st.sampled_from(WORDS), "crop_channels": st.booleans(),
    "timeout": st.one_of(st.floats(), st.integers()),
    "dequantize": keyed({"scale": st.one_of(st.floats(), st.lists(st.floats(), max_size=3)),
                         "zero_point": st.integers(-300, 300), "file": st.sampled_from(PATHS),
                         "tensors": st.dictionaries(st.sampled_from(WORDS), junk, max_size=2)}),
})})
preprocess = keyed({"input": st.sampled_from(WORDS), "layout": st.sampled_from(WORDS),
                    "model_layout": st.sampled_from(WORDS), "color": st.sampled_from(WORDS),
                    "model_color": st.sampled_from(WORDS), "mean": st.one_of(st.floats(), st.lists(st.floats())),
                    "std": st.one_of(st.floats(), st.lists(st.floats())), "scale": st.floats(),
                    "hook": st.sampled_from(PATHS), "cos": st.floats()})
model_entry = st.fixed_dictionaries(
    {"name": st.one_of(st.sampled_from(["m", "m2", "..", ".", "a\0b", "n" * 300, "x/y", " sp "]), junk),
     "model": st.sampled_from(PATHS), "calibration": data},
    optional={"evaluation": data, "quantization": quantization,
              "modes": st.lists(st.sampled_from(WORDS), max_size=4), "thresholds": thresholds,
              "layers": st.dictionaries(st.sampled_from(WORDS), thresholds, max_size=2),
              "known_bad": st.lists(keyed({"layer": st.sampled_from(WORDS), "reason": st.text(max_size=5),
                                           "strict": st.booleans()}), max_size=2),
              "offline": keyed({"tolerance_steps": st.integers(-2, 5), "max_mismatch_rate": st.floats()}),
              "dumps": dumps, "preprocess": preprocess,
              "accuracy": keyed({"max_drop": st.floats(), "metric": st.sampled_from(PATHS + WORDS)}),
              "baseline": keyed({"tolerance": thresholds, "required": st.booleans()})})
spec_tree = st.fixed_dictionaries(
    {"quantacc": st.one_of(st.just(1), scalars), "models": st.one_of(st.lists(model_entry, max_size=3), junk)},
    optional={"defaults": st.one_of(model_entry, junk), "extra": junk})


def assert_only_input_errors(path: Path) -> None:
    try:
        spec = load_spec(path)
    except QuantaccInputError as exc:
        assert len(str(exc)) < MESSAGE_BOUND, f"{len(str(exc))} characters: {str(exc)[:300]}..."
        return
    for broken in spec.broken:
        message = broken.error.message
        assert len(message) < MESSAGE_BOUND, f"{len(message)} characters: {message[:300]}..."


@budget(150)  # finds the unbounded message (a 3,000-character version value); 100 does not
@given(tree=spec_tree)
def test_spec_trees_give_only_input_errors(folder: Path, tree: dict) -> None:
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(tree, allow_unicode=True, width=1 << 20))
    assert_only_input_errors(path)


YAML_PIECES = ["quantacc: 1\n", "models:\n", "  - name: m\n", "    model: m.onnx\n", "    calibration: {data: d.npz}\n",
               "    thresholds: {rmse: " + "9" * 400 + "}\n", "    quantization: {method: *a}\n", "&a [x, *a]",
               "&b [lol, lol, lol]", "[*b, *b, *b, *b]", "!!python/object:os.system ls\n", "!!binary AAAA\n",
               "? [1, 2]\n: 3\n", "<<: *a\n", "{", "}", "[", "]", ": ", "- ", "'", '"', "\t", "\n", "%YAML 1.1\n---\n",
               "--- \n...\n", "\x00", "\ufeff", "\\", "*undefined", "&", "#", "|\n  x\n", "1e400", ".nan", "~"]


@budget(300)
@given(pieces=st.lists(st.one_of(st.sampled_from(YAML_PIECES), st.text(max_size=6)), max_size=14))
def test_yaml_text_gives_only_input_errors(folder: Path, pieces: list[str]) -> None:
    path = folder / "text.yaml"
    path.write_bytes("".join(pieces).encode("utf-8", errors="surrogatepass"))
    assert_only_input_errors(path)


# --------------------------------------------------------------------------------------------------------
# npz data
# --------------------------------------------------------------------------------------------------------

MODEL_DTYPES = [np.float32, np.float16, np.int64, np.int32, np.uint8, np.bool_]
DATA_DTYPES = MODEL_DTYPES + [np.float64, np.int8, np.uint64, np.complex64, np.dtype("<U3"), np.dtype("S2"),
                              np.dtype(">f4"), np.dtype([("a", "<i4")])]


@st.composite
def model_inputs(draw) -> tuple[InputInfo, ...]:
    names = draw(st.lists(st.sampled_from(["input", "mask", "gain", "x.y", "a b"]), min_size=1, max_size=2,
                          unique=True))
    return tuple(InputInfo(n, np.dtype(draw(st.sampled_from(MODEL_DTYPES))),
                           tuple(draw(st.lists(st.one_of(st.none(), st.integers(1, 3)), max_size=3))))
                 for n in names)


@st.composite
def npz_case(draw, inputs: tuple[InputInfo, ...]) -> dict[str, np.ndarray]:
    """Arrays mostly shaped like the inputs' samples (so deep checks are reached), sometimes anything at all."""
    arrays: dict[str, np.ndarray] = {}
    count = draw(st.integers(0, 3))
    for info in inputs:
        if draw(st.integers(0, 9)) == 0:
            continue  # a missing input
        if draw(st.booleans()):
            dims = [draw(st.integers(1, 3)) if d is None else d for d in info.shape]
            if dims and info.shape[0] in (1, None) and draw(st.booleans()):
                dims = dims[1:]  # samples without the batch axis
            shape = (count, *dims)
        else:
            shape = tuple(draw(st.lists(st.integers(0, 3), max_size=4)))  # rank 0 included
        dtype = np.dtype(draw(st.sampled_from(DATA_DTYPES)))
        size = int(np.prod(shape, dtype=np.int64))
        if dtype.kind in "US":
            values = np.array(["ab"] * size, dtype=dtype)
        elif dtype.names:
            values = np.zeros(size, dtype=dtype)
        else:
            values = np.array(draw(st.lists(st.sampled_from([0, 1, 2, -1, 0.5, 300, math.nan, math.inf]),
                                            min_size=size, max_size=size)), dtype=np.float64)
            with np.errstate(all="ignore"):
                values = np.nan_to_num(values) if dtype.kind in "iub" else values
                values = values.astype(dtype)
        arrays[info.name] = values.reshape(shape)
    if draw(st.integers(0, 5)) == 0:
        arrays["extra"] = np.zeros((count, 1), np.float32)
    return arrays


def fits(shape: tuple[int, ...], expected: tuple[int | None, ...]) -> bool:
    return len(shape) == len(expected) and all(e is None or e == s for s, e in zip(shape, expected))


def assert_samples_or_input_error(path: Path, limit: int | None, inputs: tuple[InputInfo, ...]) -> None:
    try:
        samples = load_samples(path, limit, inputs, Path("spec.yaml"), "models[0].calibration.data")
        fed = list(samples)
    except QuantaccInputError as exc:
        assert len(str(exc)) < MESSAGE_BOUND, str(exc)[:300]
        return
    assert len(fed) == len(samples)
    for sample in fed:
        assert set(sample) == {i.name for i in inputs}
        for info in inputs:
            value = sample[info.name]
            assert isinstance(value, np.ndarray), (info, type(value))
            assert value.dtype == info.dtype, (info, value.dtype)
            assert fits(value.shape, info.shape), (info, value.shape)


@budget(150)
@given(st.data())
def test_npz_files_give_samples_or_input_errors(tmp_path_factory, data) -> None:
    inputs = data.draw(model_inputs())
    arrays = data.draw(npz_case(inputs))
    path = tmp_path_factory.mktemp("npz", numbered=True) / "d.npz"
    (np.savez_compressed if data.draw(st.booleans()) else np.savez)(path, **arrays)
    damage = data.draw(st.sampled_from(["none", "none", "truncate", "flip", "version"]))
    raw = bytearray(path.read_bytes())
    if damage == "truncate":
        raw = raw[:data.draw(st.integers(0, len(raw) - 1))]
    elif damage == "flip":
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] ^= 0xFF
    elif damage == "version" and b"PK\x01\x02" in raw:
        at = raw.index(b"PK\x01\x02")
        raw[at + 6:at + 8] = (99).to_bytes(2, "little")  # "version needed to extract" 9.9
    path.write_bytes(bytes(raw))
    assert_samples_or_input_error(path, data.draw(st.one_of(st.none(), st.integers(1, 3))), inputs)


@budget(40)
@given(st.data())
def test_npz_folders_give_samples_or_input_errors(tmp_path_factory, data) -> None:
    """A folder of per-sample files, sometimes with a sub-folder or a non-npz file named like one."""
    inputs = data.draw(model_inputs())
    folder = tmp_path_factory.mktemp("npzdir", numbered=True)
    for i in range(data.draw(st.integers(0, 3))):
        arrays = {k: v[0] if v.ndim and len(v) else v for k, v in data.draw(npz_case(inputs)).items()}
        np.savez(folder / f"s{i}.npz", **arrays)
    intruder = data.draw(st.sampled_from(["none", "subfolder", "text"]))
    if intruder == "subfolder":
        (folder / "x.npz").mkdir()
    elif intruder == "text":
        (folder / "y.npz").write_text("hello")
    assert_samples_or_input_error(folder, data.draw(st.one_of(st.none(), st.integers(1, 3))), inputs)


def test_the_version_damage_is_real(tmp_path: Path) -> None:
    """The "version" damage above produces what the issue saw: zipfile refuses the archive outright."""
    path = tmp_path / "v.npz"
    np.savez(path, input=np.zeros((2, 3), np.float32))
    raw = bytearray(path.read_bytes())
    at = raw.index(b"PK\x01\x02")
    raw[at + 6:at + 8] = (99).to_bytes(2, "little")
    path.write_bytes(bytes(raw))
    with pytest.raises(NotImplementedError):
        zipfile.ZipFile(path)
