"""JUnit XML properties of the layer items, for dashboards reading ``--junitxml``.
"""

from __future__ import annotations

import math

from ..engine.metrics import NAMES
from ..engine.results import LayerResult


def junit_properties(r: LayerResult) -> list[tuple[str, object]]:
    """``quantacc.<metric>`` properties of one layer item, for dashboards reading JUnit XML."""
    props: list[tuple[str, object]] = [("quantacc.layer", r.layer.name), ("quantacc.op_type", r.layer.op_type),
                                       ("quantacc.tensor", r.layer.tensor)]
    if r.summary is not None:
        props += [(f"quantacc.{k}", round(r.summary.mean[k], 6) if math.isfinite(r.summary.mean[k])
                   else str(r.summary.mean[k])) for k in NAMES]
        props += [("quantacc.worst_cos", round(r.summary.worst["cos"], 6)),
                  ("quantacc.worst_rmse", round(r.summary.worst["rmse"], 6) if math.isfinite(r.summary.worst["rmse"])
                   else str(r.summary.worst["rmse"]))]
    if r.own is not None:
        props += [("quantacc.own_cos", round(r.own["cos"], 6)), ("quantacc.own_rmse", round(r.own["rmse"], 6))]
    for kind in ("slice", "channel"):
        found = r.worst_part(kind)
        if found is not None:
            ps, p = found
            props += [(f"quantacc.worst_{kind}", ps.label(p)),
                      (f"quantacc.worst_{kind}_cos", "-" if p.cos is None else round(p.cos, 6)),
                      (f"quantacc.worst_{kind}_rmse", round(p.rmse, 6) if math.isfinite(p.rmse) else str(p.rmse))]
    props.append(("quantacc.status", r.status))
    return props
