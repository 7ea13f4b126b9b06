"""Sensitivity on a planted Gemm chain: the switched graph reproduces float, fixed and per-site rebuilds."""

from __future__ import annotations

import numpy as np
import pytest
from planted_remedies import gemm_chain

from pytest_quantacc.engine.runner import Runner
from pytest_quantacc.remedy.sensitivity import FLOAT, INT8, INT16, Switchboard, build, local_errors, rank, wide_params


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    float_model, fixed_model, samples = gemm_chain(tmp_path_factory.mktemp("sens"), [8, 0, 0, 0], [0, 0, 80, 0])
    return float_model, fixed_model, samples, Switchboard(float_model, fixed_model, samples[:4])


def _max_diff(a: list[dict], b: list[dict]) -> float:
    return max(float(np.abs(x[k] - y[k]).max()) for x, y in zip(a, b) for k in x)


def test_sites_are_every_qdq_pair_of_fixed(planted):
    _, fixed_model, _, board = planted
    got = {(s.tensor, s.kind) for s in board.sites}
    assert got == {(f"w{i}", "weight") for i in range(4)} | {("x", "activation")} | \
        {(f"h{i}", "activation") for i in range(4)}
    assert {s.node for s in board.sites if s.kind == "weight"} == {f"fc{i}" for i in range(4)}


def test_all_switches_on_is_fixed_and_off_is_float(planted):
    float_model, fixed_model, samples, board = planted
    fixed_run = Runner(fixed_model, [], optimize=False)
    assert _max_diff(board.run([INT8] * len(board.sites)), [fixed_run.run(s) for s in samples[:4]]) == 0.0
    float_run = Runner(float_model, [], optimize=False)  # constant vs switched weights: kernels may pack differently
    assert _max_diff(board.reference, [float_run.run(s) for s in samples[:4]]) < 1e-5


@pytest.mark.parametrize("case", ["alone", "left_float", "raised", "all16"])
def test_switch_equals_graph_rebuilt_per_site(planted, case):
    float_model, fixed_model, samples, board = planted
    n = len(board.sites)
    for site in board.sites:
        levels = {"alone": [INT8 if i == site.index else FLOAT for i in range(n)],
                  "left_float": [FLOAT if i == site.index else INT8 for i in range(n)],
                  "raised": [INT16 if i == site.index else INT8 for i in range(n)],
                  "all16": [INT16] * n}[case]
        static, _ = build(float_model, fixed_model, levels)
        run = Runner(static, [], optimize=False)
        assert _max_diff(board.run(levels), [run.run(s) for s in samples[:4]]) <= 1e-7
        if case == "all16":
            break


def test_a_board_without_16_bit_branches_gives_the_same_float_and_int8_values(planted):
    """The narrow board (float / int8 switches only) the ranking and the float search use equals the full one
    bit for bit on any float / int8 mix, and refuses a 16-bit level instead of computing something else."""
    float_model, fixed_model, samples, board = planted
    narrow = Switchboard(float_model, fixed_model, samples[:4], wide=False)
    n = len(board.sites)
    rng = np.random.default_rng(1)
    for levels in [[INT8] * n, [FLOAT] * n] + [list(rng.choice([FLOAT, INT8], n)) for _ in range(6)]:
        assert _max_diff(narrow.run(levels), board.run(levels)) == 0.0
    with pytest.raises(ValueError, match="16-bit"):
        narrow.run([INT16] * n)


def test_wide_params_keep_the_range():
    s, zp = np.array(0.02, np.float32), np.array(10, np.uint8)
    s16, zp16 = wide_params(s, zp)
    assert zp16.dtype == np.uint16
    lo, hi = (0 - 10) * 0.02, (255 - 10) * 0.02
    assert np.isclose(float(s16), (hi - lo) / 65535, rtol=1e-6)
    assert np.isclose((0 - float(zp16)) * float(s16), lo, atol=float(s16))
    assert np.isclose((65535 - float(zp16)) * float(s16), hi, atol=float(s16))


def test_ranking_puts_the_planted_sites_first(planted):
    _, _, _, board = planted
    ranking, _ = rank(board)
    assert {r.site.tensor for r in ranking[:2]} == {"w0", "h2"}
    assert all(r.alone.rmse > 0.1 for r in ranking[:2]) and all(r.alone.rmse < 0.05 for r in ranking[2:])
    assert ranking[0].metric == "cos" and ranking[0].score >= ranking[1].score
    fixed = board.effect(board.fixed_levels())
    for r in ranking[:2]:  # raising a planted site alone helps, but not enough: the other one still breaks
        assert fixed.rmse > r.raised.rmse > 0.1
    # independent numpy check of one effect: relative rmse of the output
    out = board.outputs[0]
    values = board.run([INT8 if s.tensor == "w0" else FLOAT for s in board.sites])
    ref = board.reference
    worst = max(np.linalg.norm((v[out] - r[out]).astype(np.float64)) / np.linalg.norm(r[out].astype(np.float64))
                for v, r in zip(values, ref))
    assert np.isclose(next(r for r in ranking if r.site.tensor == "w0").alone.rmse, worst, rtol=1e-9)


def test_cnn_with_fused_relu_and_shared_ranges(tmp_path):
    """On a QDQ CNN (Relu folded into Conv, Flatten sharing GlobalAveragePool's range) the switched graph
    still reproduces fixed.onnx exactly, and the outlier channel's activation is the most sensitive site."""
    import onnx
    import zoo

    zm = zoo.outlier_channel_cnn(tmp_path)
    fixed_path = zoo.quantize_qdq(zm.model, zm.calib, tmp_path / "fixed.onnx")
    float_model, fixed_model = onnx.load(str(zm.model)), onnx.load(str(fixed_path))
    images = np.load(zm.eval)["input"]
    samples = [{"input": images[i:i + 1]} for i in range(3)]
    board = Switchboard(float_model, fixed_model, samples)
    shared = {s.tensor: s.shared for s in board.sites if s.shared}
    assert shared == {"gap_out": ("flatten_out",)}
    fixed_run = Runner(fixed_model, [], optimize=False)
    assert _max_diff(board.run([INT8] * len(board.sites)), [fixed_run.run(s) for s in samples]) == 0.0
    top = rank(board)[0][0]
    assert top.site.tensor == "relu3_out" and top.site.kind == "activation"


def test_local_errors_match_onnx_runtime_quantize_dequantize(planted):
    """Each site's own int8 error, computed in numpy, against ONNX Runtime's Q/DQ of the same tensor: the
    weight's DequantizeLinear in fixed.onnx, and the switched session with only that activation quantized."""
    float_model, fixed_model, samples, _ = planted
    board = Switchboard(float_model, fixed_model, samples[:4], tensors=[f"h{i}" for i in range(4)])
    errors = local_errors(float_model, fixed_model, board)
    by_name = {s.tensor: s.index for s in board.sites}
    dq = next(n.output[0] for n in fixed_model.graph.node
              if n.op_type == "DequantizeLinear" and n.input[0] == "w0_quantized")
    w_ort = Runner(fixed_model, [dq], optimize=False).run(board.samples[0])[dq]
    w = next(np.frombuffer(i.raw_data, np.float32).reshape(i.dims) for i in float_model.graph.initializer
             if i.name == "w0")

    def rel(a, b):
        return np.linalg.norm((a - b).astype(np.float64)) / np.linalg.norm(b.astype(np.float64))
    # whole-tensor relative rmse, or the median over channels (axis 0 of a weight, 1 of an activation)
    per_row = np.median([rel(w_ort[k], w[k]) for k in range(w.shape[0]) if np.any(w[k])])
    assert np.isclose(errors[by_name["w0"]], max(rel(w_ort, w), per_row), rtol=1e-6)
    i = by_name["h2"]
    only = board.run([INT8 if k == i else FLOAT for k in range(len(board.sites))])
    q = np.concatenate([o["h2"] for o in only]).astype(np.float64)
    f = np.concatenate([r["h2"] for r in board.reference]).astype(np.float64)
    whole = np.linalg.norm(q - f) / np.linalg.norm(f)
    cols = [np.linalg.norm(q[:, c] - f[:, c]) / np.linalg.norm(f[:, c]) for c in range(f.shape[1]) if np.any(f[:, c])]
    assert np.isclose(errors[i], max(whole, np.median(cols)), rtol=1e-6)
    # the planted sites stand out; h2's 80-constant channel masks its damage in the whole-tensor number
    assert errors[i] > 3 * whole and errors[i] > 5 * errors[by_name["h1"]]
    assert errors[by_name["w0"]] > 5 * errors[by_name["w1"]]
