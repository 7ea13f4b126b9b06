"""Search on planted Gemm chains whose minimal set of sites is known, with a bound on evaluations."""

from __future__ import annotations

import pytest
from planted_remedies import gemm_chain

from pytest_quantacc.remedy.minimal import output_predicate, search
from pytest_quantacc.remedy.sensitivity import FLOAT, Switchboard, rank


def _found(tmp_path, weight_outliers, act_outliers, level=16):
    float_model, fixed_model, samples = gemm_chain(tmp_path, weight_outliers, act_outliers)
    board = Switchboard(float_model, fixed_model, samples[:4])
    ranking = [r.site.index for r in rank(board)[0]]
    pred = output_predicate(board, 0.99, 0.1, level)
    result = search(ranking, pred, budget=40)
    names = None if result.sites is None else {board.sites[i].tensor for i in result.sites}
    return names, result, board, pred


@pytest.mark.parametrize("level", [16, FLOAT])
def test_two_sites_that_each_break_alone(tmp_path, level):
    names, result, _, _ = _found(tmp_path, [8, 0, 0, 0], [0, 0, 80, 0], level)
    assert names == {"w0", "h2"}
    assert result.evaluations <= 5


def test_site_that_matters_only_with_another(tmp_path):
    """w0 breaks alone; h1 (planted A=40) and w2 (M=4) each pass alone but together they break, so one of
    them must be raised with w0: h1, whose own error is the larger."""
    names, result, board, pred = _found(tmp_path, [8, 0, 4, 0], [0, 40, 0, 0])
    by_name = {s.tensor: s.index for s in board.sites}
    alone = {t: board.effect([8 if i == by_name[t] else FLOAT for i in range(len(board.sites))]).rmse
             for t in ("h1", "w2")}
    assert 0.1 > alone["h1"] > alone["w2"]
    assert not pred(frozenset({by_name["w0"]}))[0]
    assert pred(frozenset({by_name["w0"], by_name["w2"]}))[0]  # w2 would do too: the search keeps one
    assert names == {"w0", "h1"}
    assert result.evaluations <= 6


def test_sixteen_bit_everywhere_passes_but_one_site_suffices(tmp_path):
    names, result, board, pred = _found(tmp_path, [0, 0, 10, 0], [0, 0, 0, 0])
    assert pred(frozenset(range(len(board.sites))))[0]
    assert names == {"w2"}
    assert result.evaluations <= 3


def test_nothing_to_raise_and_nothing_that_helps():
    assert search([0, 1], lambda s: (True, 1.0)).sites == frozenset()
    result = search([0, 1, 2], lambda s: (False, float(len(s))))
    assert result.sites is None and result.evaluations == 2


def test_rerank_bisection_and_prune_on_a_known_predicate():
    """Sites 5 and 7 are needed (the ranking puts them last); 0-3 do nothing, so greedy re-ranks."""
    need = {5, 7}

    def pred(s):
        return need <= s, float(len(need & s)) - 0.01 * len(s)

    result = search(list(range(10)), pred, greedy_steps=2, window=3)
    assert result.sites == frozenset(need)
    # empty + all, 2 greedy steps of 1 + 3 re-ranked, bisection over k in 2..10, prune of the 8-site prefix
    assert result.evaluations <= 2 + 2 * (1 + 3) + 3 + 8


def test_a_large_set_is_pruned_in_chunks():
    """Three needed sites among 200, ranked where greedy cannot see them: bisection keeps a long prefix, and
    the chunked prune removes it in far fewer evaluations than one per site."""
    need = {150, 170, 190}

    def pred(s):
        return need <= s, float(len(need & s)) - 0.001 * len(s)

    result = search(list(range(200)), pred, greedy_steps=1, window=2)
    assert result.sites == frozenset(need)
    assert result.evaluations < 100  # one evaluation per site of the 191-site prefix would be 191


def test_judging_only_the_reached_layers_gives_the_full_verdict(tmp_path):
    """Gates.judge_levels re-measures only the layers a changed site reaches; on random mixes of float / int8 /
    int16 sites of a branching model with a sliced Concat output its verdict equals judging every layer."""
    import numpy as np
    import onnx
    from verdict_models import detection_head

    from conftest import write_spec
    from pytest_quantacc import evaluate_model, load_spec
    from pytest_quantacc.graph.match import match_layers
    from pytest_quantacc.remedy.gates import Gates
    from pytest_quantacc.remedy.sensitivity import INT8, INT16

    vm = detection_head(tmp_path / "m")
    entry = {"name": "head", "model": str(vm.model), "calibration": {"data": str(vm.calib)},
             "evaluation": {"data": str(vm.eval)}, "modes": ["float", "fixed"]}
    mspec = load_spec(write_spec(tmp_path / "head.yaml", [entry])).models[0]
    art = evaluate_model(mspec, tmp_path / "work").artifacts
    fl, fx = onnx.load(str(art.float_model)), onnx.load(str(art.fixed_model))
    layers = match_layers(fl, fx)
    images = np.load(vm.eval)["images"]
    board = Switchboard(fl, fx, [{"images": images[i:i + 1]} for i in range(3)],
                        tensors=[lay.tensor for lay in layers if lay.skip is None])
    gates = Gates(board, layers, mspec, fl)
    rng = np.random.default_rng(0)
    n = len(board.sites)
    configs = [[INT8] * n, [FLOAT] * n] + [list(rng.choice([FLOAT, INT8, INT16], n, p=p))
                                          for p in ([0.1, 0.8, 0.1], [0.8, 0.1, 0.1], [0.3, 0.4, 0.3]) * 4]
    for levels in configs:
        assert gates.judge_levels(levels) == gates.judge(board.each(levels))


def test_extend_keeps_the_base_and_adds_the_fewest_sites():
    """A set found on fewer samples ({1}) needs 5 and 9 as well on more: extend adds exactly those, in fewer
    evaluations than a new search's prune of the prefix would take."""
    from pytest_quantacc.remedy.minimal import extend

    need = {1, 5, 9}

    def pred(s):
        return need <= s, float(len(need & s))

    result = extend(frozenset({1}), list(range(40)), pred)
    assert result.sites == frozenset(need)
    assert result.evaluations <= 2 + 6 + 12  # base, all; doubling + bisection to k = 9; the prune of 8 sites
    assert extend(frozenset({1, 5, 9}), list(range(40)), pred).evaluations == 1  # already enough: one check


def test_the_prune_of_a_large_set_is_bounded():
    """Every one of 200 sites needed: the halving prune stops after PRUNE_EVALUATIONS and keeps the set."""
    from pytest_quantacc.remedy.minimal import PRUNE_EVALUATIONS

    result = search(list(range(200)), lambda s: (len(s) == 200, float(len(s))), greedy_steps=1, window=2)
    assert result.sites == frozenset(range(200))
    assert result.evaluations <= 2 + 2 + 8 + PRUNE_EVALUATIONS
