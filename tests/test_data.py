"""Unit tests of ``load_samples`` (contract section 2, "Data"): .npz files written with numpy."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pytest_quantacc.errors import QuantaccInputError
from pytest_quantacc.samples import InputInfo, Samples, load_samples

KEY = "models[0].calibration.data"
F32 = np.dtype(np.float32)
I64 = np.dtype(np.int64)


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    return tmp_path / "quantacc.yaml"


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """Like np.savez, but any key name works (np.savez(**kw) clashes with its own parameter names)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        for name, arr in arrays.items():
            with z.open(name + ".npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(arr), allow_pickle=False)
    return path


def load(path: Path, inputs: tuple[InputInfo, ...], spec: Path, limit: int | None = None) -> Samples:
    return load_samples(path, limit, inputs, spec, KEY)


def rand(*shape: int, dtype=np.float32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def input_error(path: Path, inputs: tuple[InputInfo, ...], spec: Path, limit: int | None = None) -> str:
    with pytest.raises(QuantaccInputError) as info:
        load(path, inputs, spec, limit)
    exc = info.value
    assert exc.spec == str(spec)
    assert exc.key == KEY
    assert exc.message.startswith(f"{spec}: {KEY}: ")
    return exc.problem


# --------------------------------------------------------------------------------------------------------
# layouts
# --------------------------------------------------------------------------------------------------------


def test_samples_with_the_full_input_shape(tmp_path: Path, spec: Path) -> None:
    data = rand(5, 1, 3, 4, 4)
    path = save_npz(tmp_path / "d.npz", {"x": data})
    samples = load(path, (InputInfo("x", F32, (1, 3, 4, 4)),), spec)
    got = list(samples)
    assert len(samples) == len(got) == 5
    for i, s in enumerate(got):
        assert list(s) == ["x"]
        assert s["x"].shape == (1, 3, 4, 4)
        assert s["x"].dtype == np.float32
        np.testing.assert_array_equal(s["x"], data[i])


@pytest.mark.parametrize("batch", [1, None], ids=["batch1", "symbolic"])
def test_samples_without_the_batch_axis_get_batch_one(tmp_path: Path, spec: Path, batch) -> None:
    data = rand(4, 3, 5, 5)
    path = save_npz(tmp_path / "d.npz", {"x": data})
    got = list(load(path, (InputInfo("x", F32, (batch, 3, 5, 5)),), spec))
    assert len(got) == 4
    for i, s in enumerate(got):
        assert s["x"].shape == (1, 3, 5, 5)
        np.testing.assert_array_equal(s["x"][0], data[i])


def test_symbolic_batch_with_explicit_batch_axis(tmp_path: Path, spec: Path) -> None:
    """[N, 2, C] for an input [?, C]: N samples of batch 2."""
    path = save_npz(tmp_path / "d.npz", {"x": rand(3, 2, 6)})
    got = list(load(path, (InputInfo("x", F32, (None, 6)),), spec))
    assert [s["x"].shape for s in got] == [(2, 6)] * 3


def test_multiple_inputs_float_and_integer(tmp_path: Path, spec: Path) -> None:
    ids = np.arange(4 * 5).reshape(4, 1, 5) % 7
    path = save_npz(tmp_path / "d.npz", {"image": rand(4, 3, 2, 2), "ids": ids.astype(np.int64),
                                         "mask": np.ones((4, 5), np.int32)})
    inputs = (InputInfo("image", F32, (1, 3, 2, 2)), InputInfo("ids", I64, (1, 5)),
              InputInfo("mask", np.dtype(np.int32), (None, 5)))
    got = list(load(path, inputs, spec))
    assert len(got) == 4
    for i, s in enumerate(got):
        assert set(s) == {"image", "ids", "mask"}
        assert s["image"].shape == (1, 3, 2, 2) and s["image"].dtype == np.float32
        assert s["ids"].shape == (1, 5) and s["ids"].dtype == np.int64
        assert s["mask"].shape == (1, 5) and s["mask"].dtype == np.int32
        np.testing.assert_array_equal(s["ids"], ids[i])


def test_directory_of_npz_files_one_sample_each(tmp_path: Path, spec: Path) -> None:
    folder = tmp_path / "samples"
    lengths = {"a.npz": 3, "b.npz": 7, "c.npz": 5}
    for name, n in lengths.items():
        save_npz(folder / name, {"tokens": np.arange(n, dtype=np.int64), "feat": rand(n, 4)})
    (folder / "README.txt").write_text("not a sample")  # ignored: not .npz
    inputs = (InputInfo("tokens", I64, (None,)), InputInfo("feat", F32, (None, 4)))
    samples = load(folder, inputs, spec)
    got = list(samples)
    assert len(samples) == 3
    # files in name order, one sample each; shapes differ along the symbolic dimension
    assert [s["tokens"].shape for s in got] == [(3,), (7,), (5,)]
    assert [s["feat"].shape for s in got] == [(3, 4), (7, 4), (5, 4)]
    np.testing.assert_array_equal(got[1]["tokens"], np.arange(7))


def test_directory_files_may_omit_the_batch_axis(tmp_path: Path, spec: Path) -> None:
    folder = tmp_path / "samples"
    save_npz(folder / "0.npz", {"x": rand(3, 8)})        # without batch axis
    save_npz(folder / "1.npz", {"x": rand(1, 3, 12)})    # with it
    got = list(load(folder, (InputInfo("x", F32, (1, 3, None)),), spec))
    assert [s["x"].shape for s in got] == [(1, 3, 8), (1, 3, 12)]


def test_empty_directory_is_an_input_error(tmp_path: Path, spec: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert "holds no .npz files" in input_error(tmp_path / "empty", (InputInfo("x", F32, (None,)),), spec)


@pytest.mark.parametrize("limit, expected", [(1, 1), (3, 3), (6, 6), (100, 6)])
def test_limit(tmp_path: Path, spec: Path, limit: int, expected: int) -> None:
    data = rand(6, 2)
    path = save_npz(tmp_path / "d.npz", {"x": data})
    samples = load(path, (InputInfo("x", F32, (None, 2)),), spec, limit=limit)
    got = list(samples)
    assert len(samples) == len(got) == expected
    np.testing.assert_array_equal(np.concatenate([s["x"] for s in got]), data[:expected])
    assert list(samples) and len(list(samples)) == expected  # iterable more than once


def test_limit_over_a_directory(tmp_path: Path, spec: Path) -> None:
    folder = tmp_path / "samples"
    for i in range(5):
        save_npz(folder / f"{i}.npz", {"x": np.full((2,), i, np.float32)})
    got = list(load(folder, (InputInfo("x", F32, (None, 2)),), spec, limit=2))
    assert [float(s["x"][0, 0]) for s in got] == [0.0, 1.0]


# --------------------------------------------------------------------------------------------------------
# dtypes
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stored", [np.int64, np.int32, np.uint8, np.int8])
def test_integer_inputs_keep_an_integer_dtype(tmp_path: Path, spec: Path, stored) -> None:
    data = (np.arange(12).reshape(3, 4) % 100).astype(stored)
    path = save_npz(tmp_path / "d.npz", {"ids": data})
    got = list(load(path, (InputInfo("ids", I64, (1, 4)),), spec))
    for i, s in enumerate(got):
        assert s["ids"].dtype == np.int64  # the model's integer type, never float
        np.testing.assert_array_equal(s["ids"][0], data[i])


def test_integer_values_that_do_not_fit_are_an_error(tmp_path: Path, spec: Path) -> None:
    path = save_npz(tmp_path / "d.npz", {"ids": np.array([[300, 1]], np.int64)})
    problem = input_error(path, (InputInfo("ids", np.dtype(np.uint8), (None, 2)),), spec)
    assert "do not fit" in problem and "uint8" in problem


def test_float_data_for_integer_input_is_an_error(tmp_path: Path, spec: Path) -> None:
    path = save_npz(tmp_path / "d.npz", {"ids": np.zeros((2, 1, 4), np.float32)})
    problem = input_error(path, (InputInfo("ids", I64, (1, 4)),), spec)
    assert "'ids'" in problem and "float32" in problem and "int64" in problem


def test_float64_data_is_cast_to_float32(tmp_path: Path, spec: Path) -> None:
    data = np.random.default_rng(1).standard_normal((3, 2, 2))  # float64
    path = save_npz(tmp_path / "d.npz", {"x": data})
    got = list(load(path, (InputInfo("x", F32, (None, 2, 2)),), spec))
    for i, s in enumerate(got):
        assert s["x"].dtype == np.float32
        np.testing.assert_array_equal(s["x"][0], data[i].astype(np.float32))


def test_float16_data_is_cast_to_float32(tmp_path: Path, spec: Path) -> None:
    path = save_npz(tmp_path / "d.npz", {"x": np.ones((2, 3), np.float16)})
    assert all(s["x"].dtype == np.float32 for s in load(path, (InputInfo("x", F32, (None, 3)),), spec))


@pytest.mark.parametrize("stored", [np.uint8, np.int64, np.bool_])
def test_integer_data_for_float_input_is_an_error(tmp_path: Path, spec: Path, stored) -> None:
    path = save_npz(tmp_path / "d.npz", {"x": np.ones((2, 3), stored)})
    problem = input_error(path, (InputInfo("x", F32, (None, 3)),), spec)
    assert "'x'" in problem and "dtype" in problem and "float32" in problem


# --------------------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad, word", [(np.nan, "NaN"), (np.inf, "Inf"), (-np.inf, "Inf")])
def test_non_finite_values_are_an_error(tmp_path: Path, spec: Path, bad: float, word: str) -> None:
    data = rand(4, 3)
    data[2, 1] = bad
    path = save_npz(tmp_path / "d.npz", {"x": data})
    problem = input_error(path, (InputInfo("x", F32, (None, 3)),), spec)
    assert word in problem and "sample 2" in problem and "d.npz" in problem


def test_float64_overflowing_float32_is_an_error(tmp_path: Path, spec: Path) -> None:
    path = save_npz(tmp_path / "d.npz", {"x": np.array([[1.0, 1e300]])})
    with np.errstate(over="ignore"):
        assert "Inf" in input_error(path, (InputInfo("x", F32, (None, 2)),), spec)


def test_missing_and_extra_arrays_are_named(tmp_path: Path, spec: Path) -> None:
    path = save_npz(tmp_path / "d.npz", {"image": rand(2, 3), "idz": np.zeros((2, 3), np.int64)})
    inputs = (InputInfo("image", F32, (None, 3)), InputInfo("ids", I64, (None, 3)))
    problem = input_error(path, inputs, spec)
    assert "no array for model input(s) ids" in problem
    assert "idz" in problem and "match no model input" in problem
    assert "ids [?, 3]" in problem


@pytest.mark.parametrize("shape", [(2, 3, 5, 5), (2, 1, 3, 4, 4, 1), (2, 15), (2,)])
def test_wrong_shape_is_an_error(tmp_path: Path, spec: Path, shape) -> None:
    path = save_npz(tmp_path / "d.npz", {"x": np.zeros(shape, np.float32)})
    problem = input_error(path, (InputInfo("x", F32, (1, 3, 4, 4)),), spec)
    assert "does not fit the model input x [1, 3, 4, 4]" in problem
    assert str(list(shape)) in problem


def test_different_sample_counts_are_an_error(tmp_path: Path, spec: Path) -> None:
    path = save_npz(tmp_path / "d.npz", {"a": rand(3, 2), "b": rand(4, 2)})
    problem = input_error(path, (InputInfo("a", F32, (None, 2)), InputInfo("b", F32, (None, 2))), spec)
    assert "different sample counts" in problem


def test_zero_samples_is_an_error(tmp_path: Path, spec: Path) -> None:
    path = save_npz(tmp_path / "d.npz", {"x": np.zeros((0, 2), np.float32)})
    assert "holds no samples" in input_error(path, (InputInfo("x", F32, (None, 2)),), spec)


@pytest.mark.parametrize("content", [b"", b"not a zip file at all", b"PK\x03\x04truncated"])
def test_unreadable_file_is_an_error(tmp_path: Path, spec: Path, content: bytes) -> None:
    path = tmp_path / "d.npz"
    path.write_bytes(content)
    assert "cannot read d.npz" in input_error(path, (InputInfo("x", F32, (None, 2)),), spec)


def test_pickled_object_array_is_refused(tmp_path: Path, spec: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x=np.array([{"a": 1}, None], dtype=object))
    assert "cannot read d.npz" in input_error(path, (InputInfo("x", F32, (None, 2)),), spec)


def test_file_that_is_not_npz_is_an_error(tmp_path: Path, spec: Path) -> None:
    np.save(tmp_path / "d.npy", np.zeros((2, 2), np.float32))
    assert "expected a .npz file" in input_error(tmp_path / "d.npy", (InputInfo("x", F32, (None, 2)),), spec)


# --------------------------------------------------------------------------------------------------------
# bugs found (strict xfail)
# --------------------------------------------------------------------------------------------------------


def _never_crashes(path: Path, inputs: tuple[InputInfo, ...], spec: Path) -> None:
    try:
        list(load(path, inputs, spec))
    except QuantaccInputError as exc:
        assert exc.message.startswith(f"{spec}: {KEY}")


def test_npy_content_named_npz(tmp_path: Path, spec: Path) -> None:
    np.save(tmp_path / "d.npy", np.zeros((2, 2), np.float32))
    (tmp_path / "d.npz").write_bytes((tmp_path / "d.npy").read_bytes())
    _never_crashes(tmp_path / "d.npz", (InputInfo("x", F32, (None, 2)),), spec)


def test_zip_member_that_is_not_npy(tmp_path: Path, spec: Path) -> None:
    with zipfile.ZipFile(tmp_path / "d.npz", "w") as z:
        z.writestr("x", "hello")
    _never_crashes(tmp_path / "d.npz", (InputInfo("x", F32, (None, 2)),), spec)


def test_corrupt_compressed_npz(tmp_path: Path, spec: Path) -> None:
    import zlib

    path = tmp_path / "d.npz"
    np.savez_compressed(path, x=np.random.default_rng(0).random((200, 3)).astype(np.float32))
    raw = bytearray(path.read_bytes())
    for i in range(60, 400):
        raw[i] ^= 0x55
    path.write_bytes(bytes(raw))
    try:
        _never_crashes(path, (InputInfo("x", F32, (None, 3)),), spec)
    except zlib.error:
        pytest.fail("zlib.error escaped")


def test_zero_dim_array_for_scalar_input(tmp_path: Path, spec: Path) -> None:
    path = save_npz(tmp_path / "d.npz", {"x": np.array(1.0, np.float32)})
    _never_crashes(path, (InputInfo("x", F32, ()),), spec)


def test_zero_dim_nan_array(tmp_path: Path, spec: Path) -> None:
    path = save_npz(tmp_path / "d.npz", {"x": np.array(np.nan, np.float32)})
    _never_crashes(path, (InputInfo("x", F32, (None, 3)),), spec)


# --------------------------------------------------------------------------------------------------------
# property: arbitrary npz contents load and fit, or raise a located QuantaccInputError
# --------------------------------------------------------------------------------------------------------

_INPUT_DTYPES = [np.dtype(t) for t in (np.float32, np.float64, np.int64, np.int32, np.uint8, np.bool_)]
_DATA_DTYPES = [np.dtype(t) for t in (np.float16, np.float32, np.float64, np.int8, np.int32, np.int64,
                                      np.uint8, np.uint64, np.bool_, np.complex64)] + [np.dtype("<U3")]
_NAMES = st.sampled_from(["input", "ids", "mask", "x"]) | st.text(
    st.characters(blacklist_characters="\0/\\", blacklist_categories=("Cs",)), min_size=1, max_size=8)


@st.composite
def _case(draw):
    names = draw(st.lists(st.sampled_from(["input", "ids", "mask"]), min_size=1, max_size=2, unique=True))
    inputs = tuple(
        InputInfo(
            name,
            draw(st.sampled_from(_INPUT_DTYPES)),
            # scalar inputs (shape ()) are left out: 0-d data crashes today (test_bug_zero_dim_*)
            tuple(draw(st.lists(st.none() | st.integers(1, 3), min_size=1, max_size=3))),
        )
        for name in names
    )
    n = draw(st.integers(0, 4))
    arrays = {}
    for info in inputs:
        if draw(st.booleans()):  # a fitting shape, either with or without the batch axis
            dims = [draw(st.integers(1, 3)) if d is None else d for d in info.shape]
            if info.batch_free and draw(st.booleans()):
                dims = dims[1:]
            shape = (n, *dims)
        else:  # anything (but not 0-d: see test_bug_zero_dim_nan_array)
            shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=3))
        dtype = info.dtype if draw(st.booleans()) else draw(st.sampled_from(_DATA_DTYPES))
        arrays[info.name] = draw(hnp.arrays(dtype, shape))
    if draw(st.booleans()):  # rename, drop or add arrays
        arrays = {draw(_NAMES): a for a in arrays.values()} if draw(st.booleans()) else dict(
            list(arrays.items())[: draw(st.integers(0, len(arrays)))])
    limit = draw(st.none() | st.integers(1, 5))
    as_dir = draw(st.booleans())
    return inputs, arrays, limit, as_dir


def _fits(shape: tuple[int, ...], expected: tuple[int | None, ...]) -> bool:
    return len(shape) == len(expected) and all(e is None or e == s for s, e in zip(shape, expected))


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=_case())
def test_property_load_samples_fits_or_raises_input_error(tmp_path_factory, case) -> None:
    inputs, arrays, limit, as_dir = case
    folder = tmp_path_factory.mktemp("npz")
    spec = folder / "quantacc.yaml"
    if as_dir:
        # one file per sample: split the arrays along axis 0 when their lengths agree, else one file as is
        path = folder / "samples"
        path.mkdir()
        counts = {len(a) for a in arrays.values()}
        n = counts.pop() if len(counts) == 1 else 0
        for i in range(n):
            save_npz(path / f"{i:03d}.npz", {k: a[i] for k, a in arrays.items()})
        if n == 0:
            save_npz(path / "000.npz", arrays)
    else:
        path = save_npz(folder / "data.npz", arrays)
    try:
        with np.errstate(all="ignore"):
            samples = load_samples(path, limit, inputs, spec, KEY)
            got = list(samples)
    except QuantaccInputError as exc:
        assert exc.spec == str(spec)
        assert exc.key == KEY
        assert exc.message.startswith(f"{spec}: {KEY}: ")
        event("input error")
        return
    event("loaded")
    assert len(got) == len(samples) >= 1
    if limit is not None:
        assert len(got) <= limit
    for sample in got:
        assert set(sample) == {i.name for i in inputs}
        for info in inputs:
            arr = sample[info.name]
            assert isinstance(arr, np.ndarray)
            assert arr.dtype == info.dtype, (info, arr.dtype)
            assert _fits(arr.shape, info.shape), (info, arr.shape)
            if np.issubdtype(info.dtype, np.floating):
                assert np.isfinite(arr).all()


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_uncompressed_npz_is_streamed_sample_by_sample(tmp_path, save):
    """Evaluation data is not held in memory when it can be read in place (memory flat in N)."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((5, 3, 4, 4)).astype(np.float64)
    ids = rng.integers(0, 9, size=(5, 1, 6)).astype(np.int32)
    save(tmp_path / "d.npz", x=x, ids=ids)
    inputs = (InputInfo("x", np.dtype(np.float32), (None, 3, 4, 4)), InputInfo("ids", np.dtype(np.int64), (1, 6)))
    samples = load_samples(tmp_path / "d.npz", None, inputs, tmp_path / "s.yaml", "models[0].evaluation.data")
    rows = samples.arrays[0]
    assert rows["x"].streamed == (save is np.savez)
    got = list(samples)
    assert len(got) == 5
    for i, sample in enumerate(got):
        assert sample["x"].dtype == np.float32 and sample["x"].shape == (1, 3, 4, 4)
        np.testing.assert_array_equal(sample["x"][0], x[i].astype(np.float32))
        assert sample["ids"].dtype == np.int64
        np.testing.assert_array_equal(sample["ids"], ids[i])
