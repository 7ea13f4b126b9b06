"""How numbers are shown: fixed digits for people, JSON-safe values for machines (JSON has no inf/nan).
"""

from __future__ import annotations

import math


def fmt_num(v: float | None, digits: int = 4) -> str:
    if v is None:
        return "-"
    if math.isinf(v) or math.isnan(v):
        return str(v)
    return f"{v:.{digits}f}"


def finite(v: float) -> float | str:
    return v if math.isfinite(v) else str(v)  # JSON has no inf/nan


def finite_tree(v):
    if isinstance(v, float):
        return finite(v)
    if isinstance(v, dict):
        return {k: finite_tree(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [finite_tree(x) for x in v]
    return v
