"""Mixed precision from one switchboard: rank every quantized site once, then find small sets per level.

The switchboard (sensitivity.py) evaluates any per-site configuration of fixed.onnx's own ranges in one ONNX
Runtime session, so ranking the sites and searching a set (minimal.py) cost runs, not re-conversions. The
ranking is measured once and serves every level searched (16-bit first, then float). A set is searched on a
few evaluation samples, then checked on all of them on the same board; a sample it fails joins the search
samples and the set is searched again (a few rounds), so the one real re-conversion that verifies it rarely
fails. A "left in float" set is evaluated as the conversion will really leave it (``closure``), and its spec
patch names every node that keeps it in float (``float_nodes``).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import onnx

from ..engine.results import FAILED, PASSED, LayerResult
from ..graph.structure import consumers
from ..spec.model import ModelSpec
from .gates import Gates, layer_margin
from .minimal import extend
from .minimal import search as minimal_search
from .sensitivity import FLOAT, INT8, INT16, NotSwitchable, QuantSite, Switchboard, find_sites, local_errors, rank
from .settings import Knob, spec_patch

LEVEL_NAMES = {INT16: "int16", FLOAT: "float", INT8: "int8"}
FULL_SENSITIVITY_SITES = 64  # up to this many sites, measure every one, also left in float and raised (3 runs)
MEASURED_SITES = 32  # beyond: the sites with the largest own quantization error are measured alone
CURVE_SITES = 32  # a curve point names its sites up to this many (a report line per point, not a site list)
WATCH_MARGIN = 0.25  # a passing layer this close to a threshold (normalized margin) is watched by the search
CHECK_ROUNDS = 2  # times a set failing on the other evaluation samples is searched again with the failures


@dataclass(frozen=True)
class Mixed:
    """What the switchboard search found: the ranking, the chosen sites as a spec patch, and its account."""

    sensitivity: tuple[dict, ...]
    patch: dict | None
    label: str | None
    search: dict


def setting_node(float_model: onnx.ModelProto, x: QuantSite) -> str:
    """Where a site's 16-bit setting goes: its node, except that the output of a Relu/Clip the quantizer folds
    into its producer (the producer's only consumer) is set on that producer, as people write it (convert/
    quantize.py's overrides follow the fold)."""
    if x.kind != "activation":
        return x.node
    made = {t: n for n in float_model.graph.node for t in n.output}
    users = consumers(float_model)
    node = next((n for n in float_model.graph.node if n.name == x.node), None)
    if node is None or node.op_type not in ("Relu", "Clip") or node.input[0] not in made:
        return x.node
    return made[node.input[0]].name if len(users.get(node.input[0], [])) == 1 else x.node


def float_nodes(x: QuantSite, node: str) -> tuple[str, ...]:
    """The nodes ``exclude_nodes`` must name for site ``x`` to stay in float in a real conversion.

    ONNX Runtime's quantizer keeps a tensor quantized while any node that reads or writes it is quantized: an
    excluded producer's output is still quantized for its quantized consumers (measured: 15 of 24 tensors of a
    "left in float" set stayed uint8 on a YOLOv8-style detector). So an activation needs its producer (and the
    node its setting sits on, when a Relu is folded into it) and every consumer excluded; a weight, its node.
    """
    if x.kind == "weight":
        return (x.node,)
    return tuple(dict.fromkeys([n for n in (node, x.node, *x.consumers) if n]))


def closure(sites: Sequence[QuantSite], nodes: Sequence[tuple[str, ...]]) -> Callable[[frozenset[int]],
                                                                                       frozenset[int]]:
    """Site set -> every site a conversion with their ``float_nodes`` excluded leaves in float (a consumer
    left in float also reads its other inputs and weights in float): what the switchboard must evaluate for a
    "left in float" set to predict the re-converted model. A tensor with some consumers still quantized stays
    quantized (the switchboard switches tensors, not edges): the prediction errs towards less float."""
    def expand(chosen: frozenset[int]) -> frozenset[int]:
        excluded = {n for i in chosen for n in nodes[i]}
        return frozenset(x.index for x in sites if x.index in chosen or (
            x.node in excluded if x.kind == "weight" else
            (not x.node or x.node in excluded) and all(c in excluded for c in x.consumers)))
    return expand


def site_knobs(x: QuantSite, level: int, node: str) -> list[Knob]:
    """A site's precision as spec settings: its weights or output activations at 16 bits on ``node``, or left
    in float (``float_nodes``; the first knob's label names the site)."""
    if level == FLOAT:
        return [Knob(f"{x.node} in float" if k == 0 else n, n, "exclude", 0.0)
                for k, n in enumerate(float_nodes(x, node))]
    field = "weights" if x.kind == "weight" else "activations"
    return [Knob(f"16-bit {field} of {node}", node, field, 0.0)]


class MixedSearch:
    """One switchboard and one sensitivity ranking of a failing model; ``find(level)`` searches a set.

    ``samples`` first evaluation samples rank the sites and judge candidate sets; ``evals`` (all of them) check
    a found set. Sites that write the diagnosis' ``roots`` (layers whose own error breaks) are measured first.
    Graph inputs have no node to set a precision on and are not candidates. Candidates are judged by the real
    gates (gates.Gates). Past ``deadline`` (``time.monotonic()``) measuring and searching stop, said in ``cut``.
    """

    def __init__(self, float_model: str, fixed_model: str, data_dir, mspec: ModelSpec,
                 results: Sequence[LayerResult], evals, samples: int, threads: int, deadline: float | None,
                 roots: tuple[str, ...] = ()) -> None:
        t0 = time.perf_counter()
        self.mspec, self.deadline, self.evals = mspec, deadline, evals
        self.cut: list[str] = []
        self.rows: tuple[dict, ...] = ()
        self.problem: str | None = None
        self._released: tuple[list[dict], bool] | None = None  # the board's samples and kind while released
        self.float_full = onnx.load(float_model)  # with the weights: 16-bit weights are re-quantized from them
        fixed_full = self._fixed = onnx.load(fixed_model)
        self._threads, self._data_dir, self._runs, self._seconds = threads, data_dir, 0, 0.0
        first = list(itertools.islice(iter(evals), max(1, samples)))
        self.used = list(range(len(first)))  # evaluation sample index of each of the board's samples, in order
        self.ranking_samples = len(self.used)
        layers = [r.layer for r in results]
        outputs = {o.name for o in self.float_full.graph.output}
        # Watched: the layers the default conversion fails or passes narrowly, and the outputs. Raising sites
        # improves what they reach, so a passing layer with a margin does not start to fail; the re-conversion
        # that verifies the set judges every layer. Exposing every tensor of a 270-layer detector made each run
        # 2x slower and each judgement as slow as the run.
        # Under the own gate a layer's own error depends on its own sites alone: one that passes cannot fail.
        near = mspec.gate.layers != "own"
        tensors = [r.layer.tensor for r in results if r.layer.skip is None and r.summary is not None and (
            r.layer.tensor in outputs or r.status == FAILED
            or (near and r.status == PASSED and layer_margin(r) < WATCH_MARGIN))]
        self.watched, self._tensors, self._layers = len(tensors), tensors, layers
        try:
            # A small model's ranking measures every site raised to 16 bits too; a large one's needs float /
            # int8 switches only (so does the float search): no 16-bit branch to compute on every run.
            few = sum(1 for x in find_sites(self.float_full, fixed_full)[0] if x.node) <= FULL_SENSITIVITY_SITES
            self.board = Switchboard(self.float_full, fixed_full, first, threads=threads, data_dir=data_dir,
                                     tensors=tensors, wide=few)
            self._few = few
        except NotSwitchable as exc:  # the whole-model attempts still run
            self.board, self.problem, self.measured = None, f"no mixed-precision search: {exc}", 0
            self.rank_seconds = time.perf_counter() - t0
            return
        board = self.board
        self.gates = Gates(board, layers, mspec, self.float_full)
        settable = [x.index for x in board.sites if x.node]
        # Many sites: order them by their own quantization error (free), measure the worst MEASURED_SITES alone.
        local = local_errors(self.float_full, fixed_full, board)
        root_nodes = set(roots)
        root_tensors = {lay.tensor for lay in layers if lay.name in root_nodes}
        pre = sorted(settable, key=lambda i: (board.sites[i].node not in root_nodes
                                              and board.sites[i].tensor not in root_tensors, -local[i]))
        chosen_first = pre if few else pre[:MEASURED_SITES]
        ranking, self.measured = rank(board, gates=self.gates.margin_of, deadline=deadline, both_ways=few,
                                      only=chosen_first)
        if self.measured < len(chosen_first):
            self.cut.append(f"remedy time spent: sensitivity measured for {self.measured} of {len(chosen_first)} "
                            "sites")
        done = {r.site.index for r in ranking}
        rest = [i for i in pre if i not in done]
        self.candidates = [r.site.index for r in ranking] + rest
        self.rows = tuple([{**r.as_json(), "local_error": local[r.site.index]} for r in ranking] + [
            {"node": board.sites[i].node, "site": board.sites[i].tensor, "kind": board.sites[i].kind,
             "metric": "local rmse", "score": local[i], "alone": None, "left_float": None, "raised": None,
             "local_error": local[i]} for i in rest])
        self.nodes = [setting_node(self.float_full, x) for x in board.sites]
        self.rank_seconds = time.perf_counter() - t0

    def find(self, level: int) -> Mixed:
        """A small set of sites at ``level`` that passes every gate on the search samples and, within
        CHECK_ROUNDS, on every evaluation sample the board checked; its patch and label (None: none found)."""
        t0 = time.perf_counter()
        if self.board is None and self._released is None:
            return Mixed((), None, None, self._account(level, None, 0, [], t0, [self.problem]))
        self._use(wide=level == INT16)
        board, cut = self.board, list(self.cut)
        expand = None if level != FLOAT else closure(
            board.sites, [float_nodes(x, n) for x, n in zip(board.sites, self.nodes)])
        evaluations, checked, found, refused = 0, [], None, None
        if len(self.used) < len(self.evals) and (self.deadline is None or time.monotonic() < self.deadline):
            # The ceiling first, on every evaluation sample: when even every candidate at this level fails there,
            # no set of them passes, and the search on a few samples would only find a set verification refuses.
            top = frozenset(self.candidates)
            ceiling = self.gates.failing_samples(self.evals, board.fixed_levels(expand(top) if expand else top,
                                                                                 level), self.used)
            checked.append({"k": len(top), "samples": len(self.evals), "failing": len(ceiling)})
            if ceiling:
                return Mixed(self.rows, None, None,
                             {**self._account(level, None, evaluations, checked, t0, cut), "refused": None})
        for round_ in range(CHECK_ROUNDS + 1):
            predicate = self.gates.predicate(level, expand)
            found = minimal_search(self.candidates, predicate, deadline=self.deadline) if round_ == 0 else \
                extend(found.sites, self.candidates, predicate, deadline=self.deadline)
            evaluations += found.evaluations
            if found.cut:
                cut.append(f"remedy time spent: set search stopped ({found.cut})")
            if found.sites is not None and expand is not None and len(expand(found.sites)) == len(board.sites):
                refused = "only the whole model left in float passes: that is the float model, not a remedy"
                found = None
                break
            if found.sites is None or found.cut or len(self.used) >= len(self.evals):
                break
            levels = board.fixed_levels(expand(found.sites) if expand else found.sites, level)
            failing = self.gates.failing_samples(self.evals, levels, self.used)
            checked.append({"k": len(found.sites), "samples": len(self.evals), "failing": len(failing)})
            if not failing or round_ == CHECK_ROUNDS:
                break
            # The set passed on the search samples only: add the worst failures to them and extend the set.
            board.add_samples([sample for _, sample in failing[:2]])
            self.used += [i for i, _ in failing[:2]]
        sites = found.sites if found is not None else None
        chosen = [board.sites[i] for i in sorted(sites or ())]
        account = {**self._account(level, sites, evaluations, checked, t0, cut), "refused": refused}
        if not chosen:
            return Mixed(self.rows, None, None, account)
        per_site = [site_knobs(x, level, self.nodes[x.index]) for x in chosen]
        named = [ks[0] for ks in per_site]
        label = f"mixed precision: {' + '.join(k.label for k in named)}" if len(named) <= 4 else (
            f"mixed precision: {len(named)} sites {'in float' if level == FLOAT else 'at 16 bits'} "
            f"({sum(x.kind == 'activation' for x in chosen)} activations, {sum(x.kind == 'weight' for x in chosen)} "
            f"weights; first {', '.join(k.node for k in named[:3])})")
        return Mixed(self.rows, spec_patch(self.mspec.quantization, [k for ks in per_site for k in ks]), label,
                     account)

    def release(self) -> None:
        """Free the session while a re-conversion verifies a set (the session is the search's largest memory,
        and the verification would hold it beside its own); ``find`` builds it again when it is needed."""
        if self.board is not None:
            self._released = (self.board.samples, self.board.wide)
            self._runs, self._seconds = self._runs + self.board.runs, self._seconds + self.board.seconds
            self.board = self.gates = None

    def _use(self, wide: bool) -> None:
        """The board with (int16 search) or without 16-bit branches, on the samples searched so far; one board
        at a time, so the session's memory is held once."""
        if self.board is None:  # released: rebuilt on the samples it had
            samples, was_wide = self._released
            wide = wide or (was_wide and self._few)
            self._released = None
        else:
            if self.board.wide == wide or (self.board.wide and self._few):  # a small model keeps its one board
                return
            samples = self.board.samples
            self._runs, self._seconds = self._runs + self.board.runs, self._seconds + self.board.seconds
            self.board = self.gates = None
        self.board = Switchboard(self.float_full, self._fixed, samples, threads=self._threads, data_dir=self._data_dir,
                                 tensors=self._tensors, wide=wide)
        self.gates = Gates(self.board, self._layers, self.mspec, self.float_full)

    def _account(self, level: int, sites: frozenset[int] | None, evaluations: int, checked: list[dict], t0: float,
                 cut: list[str]) -> dict:
        board = self.board
        curve = [] if board is None else [
            {"k": len(s), "level": LEVEL_NAMES[lv],
             "sites": sorted(board.sites[i].tensor for i in s) if len(s) <= CURVE_SITES else None,
             "passes": v.passes, "margin": v.margin, "first_diverging_layer": v.first_diverging_layer,
             "outputs_cos": v.outputs_cos, "outputs_rmse": v.outputs_rmse}
            for (s, lv), v in self.gates.verdicts.items() if lv == level]
        return {"samples": self.ranking_samples, "search_samples": len(self.used), "checks": checked,
                "watched": self.watched,
                "sites": 0 if board is None else len(board.sites), "ranked": self.measured,
                "evaluations": evaluations, "runs": self._runs + (0 if board is None else board.runs),
                "inference_seconds": round(self._seconds + (0.0 if board is None else board.seconds), 3),
                "ranking_seconds": round(self.rank_seconds, 3), "seconds": round(time.perf_counter() - t0, 3),
                "level": LEVEL_NAMES[level],
                "chosen": [{"node": board.sites[i].node, "site": board.sites[i].tensor, "kind": board.sites[i].kind}
                           for i in sorted(sites or ())],
                "found": sites is not None, "cut": cut, "curve": curve}
