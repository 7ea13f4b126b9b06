"""Precision steps as spec settings: a remedy is a patch of the model entry's ``quantization`` block.

Every remedy the search tries or offers is written as a patch of complete values of the keys it touches
(``overrides``, ``exclude_nodes``, or whole-model keys), so the same dict re-converts the model, goes into
the JSON report and becomes the fix file's YAML.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..spec.model import Override, Quantization


@dataclass(frozen=True)
class Knob:
    """One precision step: 16 bits for one field of one node, or the node left in float (``exclude``)."""

    label: str
    node: str
    field: str  # "activations" | "weights" | "exclude"
    score: float  # how damaged the tensor is; the most damaged is raised first


def apply_patch(q: Quantization, patch: dict) -> Quantization:
    """``q`` with the patch's keys replaced (the patch holds complete values, see ``spec_patch``)."""
    changes = dict(patch)
    if "overrides" in changes:
        changes["overrides"] = tuple(Override(n, v.get("activations"), v.get("weights"))
                                     for n, v in changes["overrides"].items())
    if "exclude_nodes" in changes:
        changes["exclude_nodes"] = tuple(changes["exclude_nodes"])
    return replace(q, **changes)


def spec_patch(q: Quantization, knobs: list[Knob], base: dict | None = None) -> dict:
    """The spec patch (complete values of the touched keys) for these knobs on top of ``q``."""
    patch = dict(base or {})
    overrides = {o.node: {k: v for k, v in (("activations", o.activations), ("weights", o.weights)) if v}
                 for o in q.overrides}
    exclude = list(q.exclude_nodes)
    for k in knobs:
        if k.field == "exclude":
            exclude += [k.node] if k.node not in exclude else []
        else:
            overrides.setdefault(k.node, {})[k.field] = "int16"
    if any(k.field != "exclude" for k in knobs):
        fields = ("activations", "weights")  # one order, so the snippet reads the same everywhere
        patch["overrides"] = {n: {f: v[f] for f in fields if f in v} for n, v in overrides.items()}
    if any(k.field == "exclude" for k in knobs):
        patch["exclude_nodes"] = exclude
    return patch
