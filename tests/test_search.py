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
