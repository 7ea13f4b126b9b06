"""A small set of sites whose higher precision makes a predicate pass, found in few evaluations.

The predicate is any callable over a set of site indices returning ``(passes, score)`` (higher score is
better), so the same search runs against the switchboard's outputs here and against the real gates later.
Steps: greedy in sensitivity order, re-ranking the remaining candidates by their measured gain when a step
does not improve the score; when greedy has not passed within its step limit, bisection over k on the order
it leaves (smallest passing prefix); then a pruning pass that drops every site the rest does not need.
Evaluations are memoized per set and counted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .sensitivity import INT16, Switchboard

Predicate = Callable[[frozenset[int]], tuple[bool, float]]
GREEDY_STEPS = 4  # one site at a time this far; beyond, bisection finds k in log2(n) evaluations
RERANK_WINDOW = 8  # candidates re-measured when a step does not help


@dataclass(frozen=True)
class SearchResult:
    """The set found (None: not even every site raised passes), the evaluations spent, and the curve."""

    sites: frozenset[int] | None
    evaluations: int
    curve: tuple[tuple[int, bool, float], ...]  # (k sites, passes, score) of every distinct evaluation


class _Memo:
    def __init__(self, predicate: Predicate, budget: int | None) -> None:
        self.predicate, self.budget = predicate, budget
        self.seen: dict[frozenset[int], tuple[bool, float]] = {}
        self.order: list[frozenset[int]] = []

    def __call__(self, sites) -> tuple[bool, float]:
        key = frozenset(sites)
        if key not in self.seen:
            if self.budget is not None and len(self.seen) >= self.budget:
                raise _OutOfBudget
            self.seen[key] = self.predicate(key)
            self.order.append(key)
        return self.seen[key]


class _OutOfBudget(Exception):
    pass


def search(ranking: Sequence[int], predicate: Predicate, budget: int | None = None,
           greedy_steps: int = GREEDY_STEPS, window: int = RERANK_WINDOW) -> SearchResult:
    """Smallest set found of ``ranking``'s sites (most sensitive first) for which ``predicate`` passes."""
    ev = _Memo(predicate, budget)

    def result(found: frozenset[int] | None) -> SearchResult:
        return SearchResult(found, len(ev.seen), tuple((len(k), *ev.seen[k]) for k in ev.order))

    try:
        if ev(())[0]:
            return result(frozenset())
        if not ev(ranking)[0]:
            return result(None)
        chosen: list[int] = []
        rest = list(ranking)
        best = ev(())[1]
        found: list[int] | None = None
        for _ in range(greedy_steps):
            if not rest:
                break
            passes, score = ev([*chosen, rest[0]])
            if score <= best and len(rest) > 1:
                # The step did not help: measure the next candidates on top of what is chosen, best first.
                gains = {c: ev([*chosen, c]) for c in rest[:window]}
                rest = sorted(rest[:window], key=lambda c: -gains[c][1]) + rest[window:]
                passes, score = gains[rest[0]]
            chosen.append(rest.pop(0))
            best = max(best, score)
            if passes:
                found = chosen
                break
        if found is None:  # bisection over k on chosen + the rest: top-n passes, top-len(chosen) does not
            order = chosen + rest
            lo, hi = len(chosen), len(order)
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (lo, mid) if ev(order[:mid])[0] else (mid, hi)
            found = order[:hi]
        for site in reversed(list(found)):  # prune: the least sensitive (last added) first
            trial = [s for s in found if s != site]
            if trial and ev(trial)[0]:
                found = trial
        return result(frozenset(found))
    except _OutOfBudget:
        return result(None)


def output_predicate(board: Switchboard, cos_min: float = 0.99, rmse_max: float = 0.1,
                     level: int = INT16) -> Predicate:
    """Pass when every model output of fixed.onnx with the given sites at ``level`` meets both thresholds;
    the score is the smaller of the two normalized margins, so it rises as the worse metric improves."""
    def predicate(sites: frozenset[int]) -> tuple[bool, float]:
        e = board.effect(board.fixed_levels(sites, level))
        margin = min((e.cos - cos_min) / (1.0 - cos_min), (rmse_max - e.rmse) / rmse_max)
        return e.cos >= cos_min and e.rmse <= rmse_max, margin
    return predicate
