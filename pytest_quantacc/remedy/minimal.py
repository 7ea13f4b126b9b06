"""A small set of sites whose higher precision makes a predicate pass, found in few evaluations.

The predicate is any callable over a set of site indices returning ``(passes, score)`` (higher score is
better), so the same search runs against the switchboard's outputs here and against the real gates (gates.py).
Steps: greedy in sensitivity order, re-ranking the remaining candidates by their measured gain when a step
does not improve the score (greedy stops when no re-ranked candidate improves it either: the error is spread
over many sites); when greedy has not passed within its step limit, bisection over k on the order
it leaves (smallest passing prefix); then a pruning pass that drops every site the rest does not need (a
large set by halves, split further only where a half cannot go, so sets of hundreds do not cost one
evaluation per site).
Evaluations are memoized per set and counted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .sensitivity import INT16, Switchboard

Predicate = Callable[[frozenset[int]], tuple[bool, float]]
GREEDY_STEPS = 4  # one site at a time this far; beyond, bisection finds k in log2(n) evaluations
RERANK_WINDOW = 8  # candidates re-measured when a step does not help
CHUNKED_PRUNE_FROM = 32  # a larger set is pruned by splitting it in halves, a smaller one site by site
PRUNE_EVALUATIONS = 64  # the prune stops after this many evaluations (what it did not try stays in the set)


@dataclass(frozen=True)
class SearchResult:
    """The set found (None: not even every site raised passes), the evaluations spent, and the curve."""

    sites: frozenset[int] | None
    evaluations: int
    curve: tuple[tuple[int, bool, float], ...]  # (k sites, passes, score) of every distinct evaluation
    cut: str | None = None  # why the search stopped early (budget, deadline); ``sites`` is then the best so far


class _Memo:
    def __init__(self, predicate: Predicate, budget: int | None, deadline: float | None) -> None:
        self.predicate, self.budget, self.deadline = predicate, budget, deadline
        self.seen: dict[frozenset[int], tuple[bool, float]] = {}
        self.order: list[frozenset[int]] = []

    def __call__(self, sites) -> tuple[bool, float]:
        key = frozenset(sites)
        if key not in self.seen:
            if self.budget is not None and len(self.seen) >= self.budget:
                raise _OutOfBudget(f"evaluation budget ({self.budget}) spent")
            if self.deadline is not None and time.monotonic() > self.deadline:
                raise _OutOfBudget(f"time budget spent after {len(self.seen)} evaluations")
            self.seen[key] = self.predicate(key)
            self.order.append(key)
        return self.seen[key]


class _OutOfBudget(Exception):
    pass


def search(ranking: Sequence[int], predicate: Predicate, budget: int | None = None,
           greedy_steps: int = GREEDY_STEPS, window: int = RERANK_WINDOW,
           deadline: float | None = None) -> SearchResult:
    """Smallest set found of ``ranking``'s sites (most sensitive first) for which ``predicate`` passes.

    Past ``budget`` evaluations or ``deadline`` (``time.monotonic()``) the search stops and returns the
    smallest passing set it has seen (None if none), saying so in ``cut``.
    """
    ev = _Memo(predicate, budget, deadline)

    def result(found: frozenset[int] | None, cut: str | None = None) -> SearchResult:
        return SearchResult(found, len(ev.seen), tuple((len(k), *ev.seen[k]) for k in ev.order), cut)

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
                if score <= best and not passes:
                    break  # no single site helps (errors that add up): bisection finds how many are needed
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
        return result(frozenset(_prune(ev, [], list(found))))
    except _OutOfBudget as exc:
        passing = [k for k in ev.order if ev.seen[k][0]]
        return result(min(passing, key=len) if passing else None, str(exc))


def _prune(ev: _Memo, kept: list[int], found: list[int]) -> list[int]:
    """``kept`` + the part of ``found`` the predicate needs, the least sensitive (last added) tried first.

    A small set loses one site at a time. A larger one is split in halves: a half that can go goes in one
    evaluation, one that cannot is split again, so m needed sites among n cost about 2 m log2(n / m)
    evaluations instead of n. At most PRUNE_EVALUATIONS are spent; what was not tried stays in the set."""
    left = list(found)
    spent = len(ev.seen)

    def without(chunk: list[int]) -> list[int]:
        gone = set(chunk)
        return [i for i in left if i not in gone]

    def drop(chunk: list[int]) -> None:
        nonlocal left
        if not chunk or len(ev.seen) - spent >= PRUNE_EVALUATIONS:
            return
        rest = without(chunk)
        if (kept or rest) and ev(kept + rest)[0]:
            left = rest
        elif len(chunk) > 1:
            mid = len(chunk) // 2
            drop(chunk[mid:])
            drop(chunk[:mid])

    if len(found) <= CHUNKED_PRUNE_FROM:
        for i in reversed(found):
            drop([i])
    else:
        drop(found[len(found) // 2:])
        drop(found[:len(found) // 2])
    return kept + left


def extend(base: frozenset[int], ranking: Sequence[int], predicate: Predicate,
           deadline: float | None = None) -> SearchResult:
    """``base`` (a set found on fewer samples) plus the fewest of ``ranking``'s other sites for which
    ``predicate`` passes: the shortest passing prefix (doubling, then bisection), pruned; ``base`` is kept as
    it is. Cheaper than a new search when a set needs a few more sites for the samples it failed on."""
    ev = _Memo(predicate, None, deadline)

    def result(found: Sequence[int] | None, cut: str | None = None) -> SearchResult:
        return SearchResult(None if found is None else frozenset(found), len(ev.seen),
                            tuple((len(k), *ev.seen[k]) for k in ev.order), cut)

    kept = [i for i in ranking if i in base]
    rest = [i for i in ranking if i not in base]
    try:
        if ev(kept)[0]:
            return result(kept)
        if not ev(kept + rest)[0]:
            return result(None)
        k = 1
        while k < len(rest) and not ev(kept + rest[:k])[0]:
            k *= 2
        lo, hi = k // 2, min(k, len(rest))  # kept + rest[:lo] fails (lo 0: kept alone), + rest[:hi] passes
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if ev(kept + rest[:mid])[0] else (mid, hi)
        return result(_prune(ev, kept, rest[:hi]))
    except _OutOfBudget as exc:
        passing = [k for k in ev.order if ev.seen[k][0]]
        return result(min(passing, key=len) if passing else None, str(exc))


def output_predicate(board: Switchboard, cos_min: float = 0.99, rmse_max: float = 0.1,
                     level: int = INT16) -> Predicate:
    """Pass when every model output of fixed.onnx with the given sites at ``level`` meets both thresholds;
    the score is the smaller of the two normalized margins, so it rises as the worse metric improves."""
    def predicate(sites: frozenset[int]) -> tuple[bool, float]:
        e = board.effect(board.fixed_levels(sites, level))
        margin = min((e.cos - cos_min) / (1.0 - cos_min), (rmse_max - e.rmse) / rmse_max)
        return e.cos >= cos_min and e.rmse <= rmse_max, margin
    return predicate
