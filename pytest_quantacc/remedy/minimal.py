"""A small set of sites whose higher precision makes a predicate pass, found in few evaluations.

The predicate is any callable over a set of site indices returning ``(passes, score)`` (higher score is
better), so the same search runs against the switchboard's outputs here and against the real gates later.
Steps: greedy in sensitivity order, re-ranking the remaining candidates by their measured gain when a step
does not improve the score; when greedy has not passed within its step limit, bisection over k on the order
it leaves (smallest passing prefix); then a pruning pass that drops every site the rest does not need (a
large set first in halving chunks, so sets of hundreds do not cost one evaluation per site).
Evaluations are memoized per set and counted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import onnx

from ..engine.judge import finish
from ..engine.metrics import Accumulator, Parts, accumulate
from ..engine.results import FAILED, PASSED, Comparison
from ..graph.match import Layer
from ..graph.parts import part_plans
from ..spec.model import ModelSpec
from .sensitivity import INT16, Switchboard

Predicate = Callable[[frozenset[int]], tuple[bool, float]]
GREEDY_STEPS = 4  # one site at a time this far; beyond, bisection finds k in log2(n) evaluations
RERANK_WINDOW = 8  # candidates re-measured when a step does not help
CHUNKED_PRUNE_FROM = 16  # a larger set is pruned in halving chunks before site by site


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
        found = list(found)
        size = len(found) // 2 if len(found) > CHUNKED_PRUNE_FROM else 1
        while size >= 1:  # prune: drop chunks, then single sites, the least sensitive (last added) first
            end = len(found)
            while end > 0:
                start = max(0, end - size)
                trial = found[:start] + found[end:]
                if trial and ev(trial)[0]:
                    found = trial
                end = start
            size //= 2
        return result(frozenset(found))
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


@dataclass(frozen=True)
class Verdict:
    """One configuration judged by the float-vs-fixed gates on the switchboard's samples."""

    passes: bool
    margin: float  # worst normalized margin over the gated layers: > 0 passes, < 0 fails
    score: float  # what the search climbs: fewer failing layers first, then the margin (clipped to [-1, 1])
    first_diverging_layer: str | None
    outputs_cos: float | None
    outputs_rmse: float | None


def margin(cos: float, rmse: float, cos_min: float, rmse_max: float) -> float:
    """The smaller of the two normalized threshold margins (1: perfect, 0: at a threshold, < 0: failing)."""
    return min((cos - cos_min) / max(1.0 - cos_min, 1e-9), (rmse_max - rmse) / max(rmse_max, 1e-9))


class Gates:
    """The float-vs-fixed comparison's gates (engine/judge.py's ``finish``: per-layer thresholds, known_bad
    layers xfail, model outputs are layers too, Concat outputs per slice and channels with ``gate:
    {granularity: channel}``: the worst part decides) applied to switchboard values instead of a re-converted
    model, so a candidate set costs one run per sample. ``gate: {layers: own}`` is judged on accumulated error
    here (the switchboard measures no own error), which is stricter. ``verdicts`` keeps every configuration
    judged (the curve)."""

    def __init__(self, board: Switchboard, layers: Sequence[Layer], mspec: ModelSpec,
                 float_model: onnx.ModelProto) -> None:
        self.board, self.layers, self.mspec = board, list(layers), mspec
        self.compared = [lay for lay in self.layers if lay.skip is None and lay.tensor in board.kept]
        self.plans = part_plans(float_model, [lay.tensor for lay in self.compared] + board.outputs,
                                channels=mspec.gate.granularity == "channel")
        self.verdicts: dict[tuple[frozenset[int], int], Verdict] = {}

    def comparison(self, values: Iterable[dict]) -> Comparison:
        accs: dict[str, Accumulator] = {}
        skips: dict[str, str] = {}
        parts: Parts = {}
        for ref, val in zip(self.board.reference, values):
            for lay in self.compared:
                accumulate(accs, skips, lay.tensor, ref.get(lay.tensor), val.get(lay.tensor), parts,
                           self.plans.get(lay.tensor, ()))
        return finish(self.layers, accs, skips, self.mspec, "float", "fixed", parts, set(self.board.outputs))

    def judge(self, values: Iterable[dict]) -> Verdict:
        comp = self.comparison(values)
        gated = [r for r in comp.layers if r.status in (PASSED, FAILED) and r.summary is not None]
        worst = min((min([margin(r.summary["cos"], r.summary["rmse"], r.thresholds.cos, r.thresholds.rmse)]
                         + [margin(1.0 if p.cos is None else p.cos, p.rmse, r.thresholds.cos, r.thresholds.rmse)
                            for ps in r.parts for p in ps.parts])
                     for r in gated), default=1.0)
        outs = [r for r in comp.layers if r.summary is not None and r.layer.tensor in self.board.outputs]
        first = next((r for r in comp.layers if r.status == FAILED), None)
        failing = sum(r.status == FAILED for r in comp.layers)
        return Verdict(first is None, worst, -failing + 0.5 * max(-1.0, min(1.0, worst)),
                       first.layer.name if first else None,
                       min((r.summary["cos"] for r in outs), default=None),
                       max((r.summary["rmse"] for r in outs), default=None))

    def margin_of(self, values: Iterable[dict]) -> float:
        return self.judge(values).margin

    def predicate(self, level: int = INT16) -> Predicate:
        """Pass when fixed.onnx with the given sites at ``level`` passes every gate; the score is the margin."""
        def predicate(sites: frozenset[int]) -> tuple[bool, float]:
            v = self.judge(self.board.each(self.board.fixed_levels(sites, level)))
            self.verdicts[(sites, level)] = v
            return v.passes, v.score
        return predicate
