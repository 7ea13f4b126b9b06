"""The float-vs-fixed gates judged on switchboard values: what a candidate set of sites must pass.

engine/judge.py's ``finish`` decides, as for the evaluation (per-layer thresholds, known_bad xfails, outputs,
Concat slices and channels), but the values come from the switched session (sensitivity.py) instead of a
re-converted model, so a candidate costs one run per sample; ``verdicts`` keeps every configuration judged
(the search's curve).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import onnx

from ..engine.judge import finish
from ..engine.metrics import Accumulator, Parts, Summary, accumulate
from ..engine.results import FAILED, PASSED, Comparison, LayerResult
from ..engine.runner import pipelined
from ..graph.match import Layer
from ..graph.parts import part_plans
from ..graph.structure import descendants
from ..spec.model import ModelSpec
from .minimal import Predicate
from .sensitivity import FLOAT, INT8, INT16, Switchboard

State = tuple[dict[str, Accumulator], dict[str, str], Parts]  # a comparison being accumulated


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


def layer_margin(r: LayerResult) -> float:
    """A measured layer's worst normalized margin over the whole tensor and its parts (slices, channels)."""
    t = r.thresholds
    return min([margin(r.summary["cos"], r.summary["rmse"], t.cos, t.rmse)]
               + [margin(1.0 if p.cos is None else p.cos, p.rmse, t.cos, t.rmse) for ps in r.parts for p in ps.parts])


class Gates:
    """The float-vs-fixed comparison's gates (engine/judge.py's ``finish``: per-layer thresholds, known_bad
    layers xfail, model outputs are layers too, Concat outputs per slice and channels with ``gate:
    {granularity: channel}``: the worst part decides) applied to switchboard values instead of a re-converted
    model, so a candidate set costs one run per sample. ``verdicts`` keeps every configuration judged (the
    curve).

    Under ``gate: {layers: own}`` a layer other than a model output is judged on its own error: its value with
    only its own sites (the inputs it reads, its weights, its output) at their level and every other site in
    float, i.e. its quantized computation fed float values, as the evaluation's own-error pass measures it.
    That depends on those few sites alone, so it is computed once per distinct setting of them (one run per
    sample) and reused; the outputs stay on accumulated error.

    A configuration differs from one of two bases (every site float, or every site at fixed.onnx's int8) in
    a few sites; only the layers those sites reach are measured again (judging every layer cost about as much
    as the run itself on a 270-layer detector), the others keep the base's metrics."""

    def __init__(self, board: Switchboard, layers: Sequence[Layer], mspec: ModelSpec,
                 float_model: onnx.ModelProto) -> None:
        self.board, self.layers, self.mspec = board, list(layers), mspec
        self.compared = [lay for lay in self.layers if lay.skip is None and lay.tensor in board.kept]
        self.plans = part_plans(float_model, [lay.tensor for lay in self.compared] + board.outputs,
                                channels=mspec.gate.granularity == "channel")
        self.verdicts: dict[tuple[frozenset[int], int], Verdict] = {}
        compared = {lay.tensor for lay in self.compared}
        outs = {n.name: [o for o in n.output if o] for n in float_model.graph.node}
        # The compared layers a site's value reaches: its tensor(s) and all after (a weight: its node's outputs).
        self._reach = [frozenset(descendants(float_model, (x.tensor, *x.shared) if x.kind == "activation"
                                             else outs.get(x.node, ())) & compared) for x in board.sites]
        self._bases: dict[int, tuple[int, State]] = {}  # base level -> (board samples, their state)
        self.own = mspec.gate.layers == "own"
        self._groups: list[tuple[tuple[int, ...], list[str]]] = []  # own gate: (local sites, their layers)
        self._own_memo: dict[tuple, State] = {}  # (board samples, local sites' levels, group) -> their state
        if self.own:
            nodes = {n.name: n for n in float_model.graph.node}
            by_sites: dict[tuple[int, ...], list[str]] = {}
            for lay in self.compared:
                if lay.tensor in board.outputs or lay.name not in nodes:
                    continue
                reads = set(nodes[lay.name].input)
                local = tuple(x.index for x in board.sites if (
                    x.kind == "weight" and x.node == lay.name) or (x.kind == "activation" and (
                        {x.tensor, *x.shared} & (reads | {lay.tensor}))))
                by_sites.setdefault(local, []).append(lay.tensor)
            self._groups = list(by_sites.items())
        self._own_layers = {t for _, ts in self._groups for t in ts}

    def comparison(self, values: Iterable[dict], reference: Iterable[dict] | None = None) -> Comparison:
        """The float-vs-fixed comparison of ``values`` against ``reference`` (default: the board's float run)."""
        state = self._start()
        for ref, val in zip(self.board.reference if reference is None else reference, values):
            self._add(state, ref, val)
        return self._finish(state)

    def _start(self) -> State:
        return {}, {}, {}

    def _add(self, state: State, ref: dict, val: dict, only: set[str] | frozenset[str] | None = None) -> None:
        accs, skips, parts = state
        for lay in self.compared:
            if only is None or lay.tensor in only:
                accumulate(accs, skips, lay.tensor, ref.get(lay.tensor), val.get(lay.tensor), parts,
                           self.plans.get(lay.tensor, ()))

    def _base(self, level: int) -> State:
        """Every layer's metrics with every site at ``level`` (FLOAT or INT8) on the board's samples."""
        n = len(self.board.samples)
        if self._bases.get(level, (-1,))[0] != n:
            state = self._start()
            values = self.board.reference if level == FLOAT else self.board.each(self.board.fixed_levels())
            for ref, val in zip(self.board.reference, values):
                self._add(state, ref, val)
            self._bases[level] = (n, state)
        return self._bases[level][1]

    def _own_values(self, levels: Sequence[int], local: tuple[int, ...], sample: dict, ref: dict) -> dict:
        """One sample's values with only ``local`` sites at their ``levels`` (the float reference when they are
        all float): what the layers of that group read as their own error."""
        if all(levels[i] == FLOAT for i in local):
            return ref
        run = [FLOAT] * len(self.board.sites)
        for i in local:
            run[i] = levels[i]
        return self.board.run_one(run, sample)

    def _own_state(self, levels: Sequence[int]) -> State:
        """Own gate: every own-judged layer's metrics over the board's samples with ``levels``, memoized per
        distinct setting of a group's own sites."""
        state = self._start()
        board = self.board
        for local, tensors in self._groups:
            memo = (len(board.samples), local, tuple(levels[i] for i in local))
            if memo not in self._own_memo:
                part = self._start()
                for sample, ref in zip(board.samples, board.reference):
                    self._add(part, ref, self._own_values(levels, local, sample, ref), set(tensors))
                self._own_memo[memo] = part
            self._merge(state, self._own_memo[memo])
        return state

    def own_metrics(self, levels: Sequence[int]) -> dict[str, Summary]:
        """Own gate: each own-judged layer's own-error metrics over the board's samples with ``levels``."""
        return {t: a.summary() for t, a in self._own_state(levels)[0].items()}

    @staticmethod
    def _merge(into: State, part: State) -> None:
        for a, b in zip(into, part):
            a.update(b)

    def judge_levels(self, levels: Sequence[int], outputs: list[dict] | None = None) -> Verdict:
        """The verdict of configuration ``levels`` on the board's samples; only the layers its sites that differ
        from the nearer base reach are measured. ``outputs``, when given, receives each sample's model outputs.
        A sample is judged while the next one runs (engine/runner.pipelined; results are the same as serial)."""
        base = FLOAT if 2 * sum(lv == FLOAT for lv in levels) > len(levels) else INT8
        reached: set[str] = set()
        for i, lv in enumerate(levels):
            if lv != base:
                reached |= self._reach[i]
        reached -= self._own_layers  # judged on their own error below
        b_accs, b_skips, b_parts = self._base(base)
        accs = {t: a for t, a in b_accs.items() if t not in reached}  # read, never added to again
        skips = {t: r for t, r in b_skips.items() if t not in reached}
        parts = {t: p for t, p in b_parts.items() if t not in reached}
        state = (accs, skips, parts)

        def reduce(pair: tuple[dict, dict]) -> None:
            ref, val = pair
            self._add(state, ref, val, reached)
            if outputs is not None:
                outputs.append({o: val[o] for o in self.board.outputs})

        pipelined(zip(self.board.reference, self.board.samples),
                  lambda pair: (pair[0], self.board.run_one(levels, pair[1])), reduce, overlap=self.board.threads != 1)
        if self.own:
            self._merge(state, self._own_state(levels))
        return self.verdict(self._finish(state))

    def _finish(self, state: State) -> Comparison:
        accs, skips, parts = state
        return finish(self.layers, accs, skips, self.mspec, "float", "fixed", parts, set(self.board.outputs))

    def judge(self, values: Iterable[dict], reference: Iterable[dict] | None = None) -> Verdict:
        return self.verdict(self.comparison(values, reference))

    def verdict(self, comp: Comparison) -> Verdict:
        gated = [r for r in comp.layers if r.status in (PASSED, FAILED) and r.summary is not None]
        worst = min((layer_margin(r) for r in gated), default=1.0)
        outs = [r for r in comp.layers if r.summary is not None and r.layer.tensor in self.board.outputs]
        first = next((r for r in comp.layers if r.status == FAILED), None)
        failing = sum(r.status == FAILED for r in comp.layers)
        return Verdict(first is None, worst, -failing + 0.5 * max(-1.0, min(1.0, worst)),
                       first.layer.name if first else None,
                       min((r.summary["cos"] for r in outs), default=None),
                       max((r.summary["rmse"] for r in outs), default=None))

    def failing_samples(self, evals: Iterable[dict], levels: Sequence[int],
                        on_board: Sequence[int]) -> list[tuple[int, dict]]:
        """Whether configuration ``levels`` passes the gates on every one of ``evals`` (``on_board``: the index
        in ``evals`` of each of the board's samples, whose float run it holds): [] when it does, else the other
        samples that fail on their own as (index, sample), the worst first (the worst other one when none
        does).

        One float and one configured run per other sample; their tensors are reduced as they come."""
        board = self.board
        where = {e: j for j, e in enumerate(on_board)}
        total = self._start()
        alone: list[tuple[bool, float, int, dict]] = []
        floats = [FLOAT] * len(board.sites)

        def run(item: tuple[int, dict]) -> tuple[int, dict, dict, dict]:
            i, sample = item
            ref = board.reference[where[i]] if i in where else board.run_one(floats, sample)
            return i, sample, ref, board.run_one(levels, sample)

        accumulated = {lay.tensor for lay in self.compared} - self._own_layers

        def reduce(ran: tuple[int, dict, dict, dict]) -> None:
            i, sample, ref, val = ran
            own = [(set(ts), self._own_values(levels, local, sample, ref)) for local, ts in self._groups]
            self._add(total, ref, val, accumulated)
            for tensors, v in own:
                self._add(total, ref, v, tensors)
            if i not in where:
                one = self._start()
                self._add(one, ref, val, accumulated)
                for tensors, v in own:
                    self._add(one, ref, v, tensors)
                v = self.verdict(self._finish(one))
                alone.append((v.passes, v.score, i, sample))

        pipelined(enumerate(evals), run, reduce, overlap=board.threads != 1)
        if self.verdict(self._finish(total)).passes:
            return []
        ordered = sorted(alone, key=lambda w: (w[1], w[2]))
        failing = [(i, s) for passes, _, i, s in ordered if not passes]
        return failing or [(i, s) for _, _, i, s in ordered[:1]]

    def margin_of(self, levels: Sequence[int], outputs: list[dict] | None = None) -> float:
        return self.judge_levels(levels, outputs).margin

    def predicate(self, level: int = INT16,
                  expand: Callable[[frozenset[int]], frozenset[int]] | None = None) -> Predicate:
        """Pass when fixed.onnx with the given sites at ``level`` passes every gate; the score is the margin.
        ``expand`` maps a set to the sites its spec setting really changes (search.closure, for float)."""
        def predicate(sites: frozenset[int]) -> tuple[bool, float]:
            v = self.judge_levels(self.board.fixed_levels(expand(sites) if expand else sites, level))
            self.verdicts[(sites, level)] = v
            return v.passes, v.score
        return predicate
