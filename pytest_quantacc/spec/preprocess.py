"""The ``preprocess`` key: the deployment input (raw frames) and how it becomes the model input.

Folding it into the model is :mod:`pytest_quantacc.convert.fold`; checking the user's own preprocessing
against it is :mod:`pytest_quantacc.engine.pipeline_check`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .node import shown

LAYOUTS = ("NCHW", "NHWC")


COLORS = ("RGB", "BGR")


RAW_TYPES = ("uint8", "float32")


@dataclass(frozen=True)
class Preprocess:
    """The deployment input and how it becomes the model input: ``(x - mean) / std`` or ``(x - mean) * scale``,
    after reordering ``layout`` -> ``model_layout`` and ``color`` -> ``model_color``. mean/std/scale are per
    channel in the model's channel order (one value: all channels)."""

    input: str = "uint8"
    layout: str = "NHWC"
    model_layout: str = "NCHW"
    color: str = "RGB"
    model_color: str = "RGB"
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] | None = None
    scale: tuple[float, ...] | None = None
    hook: Path | None = None
    function: str | None = None
    cos: float = 0.99999

    def digest(self) -> str:
        """What the folded model depends on (the conversion cache key)."""
        return repr((self.input, self.layout, self.model_layout, self.color, self.model_color, self.mean,
                     self.std, self.scale))


def parse_preprocess(node) -> Preprocess:
    keys = ("input", "layout", "model_layout", "color", "model_color", "mean", "std", "scale", "hook", "cos")
    m = node.mapping(keys)

    def numbers(key: str, positive: bool) -> tuple[float, ...] | None:
        if key not in m:
            return None
        n = m[key]
        items = n.sequence() if isinstance(n.value, list) else [n]
        if not items:
            raise n.fail("expected a number or a non-empty list of numbers")
        vals = tuple(i.number(-1e30, 1e30) for i in items)
        if positive and any(v == 0 for v in vals):
            raise n.fail("must not be zero")
        return vals

    if "std" in m and "scale" in m:
        raise m["scale"].fail("give std (x - mean) / std or scale (x - mean) * scale, not both")
    hook = function = None
    if "hook" in m:
        text = m["hook"].string()
        file, sep, function = text.rpartition(":")
        if not sep or not file.endswith(".py") or not function.isidentifier():
            raise m["hook"].fail(f"{shown(text)}: expected 'module.py:function' (a path relative to the spec)")
        hook = type(m["hook"])(m["hook"].spec, m["hook"].key, file).path()
    color = m["color"].choice(COLORS) if "color" in m else "RGB"
    return Preprocess(
        input=m["input"].choice(RAW_TYPES) if "input" in m else "uint8",
        layout=m["layout"].choice(LAYOUTS) if "layout" in m else "NHWC",
        model_layout=m["model_layout"].choice(LAYOUTS) if "model_layout" in m else "NCHW",
        color=color,
        model_color=m["model_color"].choice(COLORS) if "model_color" in m else color,
        mean=numbers("mean", False) or (0.0,),
        std=numbers("std", True),
        scale=numbers("scale", True),
        hook=hook,
        function=function,
        cos=m["cos"].number(-1.0, 1.0) if "cos" in m else 0.99999,
    )
