"""Splitting the compared tensors into passes over the graph that fit a memory budget.

Comparing a layer needs its tensor from both models at once, so exposing every layer of a big model (a
transformer at long sequence length, a detector at full resolution) can need more memory than the machine
has. ONNX Runtime allocates every graph output of a session even when ``run`` fetches only some (measured:
188 vs 187 MB peak fetching 100 outputs vs 10), so fetching fewer outputs saves nothing: each pass gets its
own sessions, built over the graph pruned to what that pass compares. The layers' metrics accumulate per
layer over samples, so running the samples once per pass gives the same numbers as one pass.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1000, "kib": 1 << 10, "m": 1 << 20, "mb": 1000 ** 2, "mib": 1 << 20,
          "g": 1 << 30, "gb": 1000 ** 3, "gib": 1 << 30, "t": 1 << 40, "tb": 1000 ** 4, "tib": 1 << 40}
DEFAULT_SHARE = 0.25  # of the memory available when evaluation starts


def parse_size(text: str) -> int:
    """``"4GB"``, ``"512MiB"``, ``"2g"`` or plain bytes -> bytes. Raises ValueError with the accepted forms."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = m.group(2).lower() if m else ""
    if not m or unit not in _UNITS or float(m.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a memory size; use e.g. 4GB, 512MiB, 2g or a number of bytes")
    return int(float(m.group(1)) * _UNITS[unit])


def fmt_size(n: float) -> str:
    if abs(n) < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB"):
        n /= 1024
        if abs(n) < 1024:
            return f"{n:.1f} {unit}"
    return f"{n / 1024:.1f} GiB"


def available_memory() -> int | None:
    """Memory this process may still use: MemAvailable, capped by a cgroup (container) limit if one is set."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except OSError:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read().strip())
        if limit != "max":
            room = int(limit) - used
            avail = room if avail is None else min(avail, room)
    except (OSError, ValueError):
        pass
    return avail


def default_budget() -> int | None:
    """A quarter of the available memory: the rest is for ONNX Runtime's weights and working buffers."""
    avail = available_memory()
    return int(avail * DEFAULT_SHARE) if avail else None


def tensor_bytes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> dict[str, int]:
    """Bytes of every tensor whose size shape inference can tell for inputs of the given shapes.

    The model is read without weights; shape inference needs only the graph (and small inline constants).
    """
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.value_info[:]
    for vi in m.graph.input:
        if vi.name in shapes:
            dims = vi.type.tensor_type.shape.dim
            del dims[:]
            for d in shapes[vi.name]:
                dims.add().dim_value = int(d)
    try:
        m = onnx.shape_inference.infer_shapes(m, data_prop=True)
    except Exception:  # best effort: sizes that stay unknown are estimated by the caller
        pass
    sizes: dict[str, int] = {}
    for vi in list(m.graph.value_info) + list(m.graph.output) + list(m.graph.input):
        tt = vi.type.tensor_type
        if not tt.elem_type or not tt.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        if any(d is None or d < 0 for d in dims):  # exporters write -1 for "unknown" too
            continue
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)).itemsize
        sizes[vi.name] = int(np.prod(dims, dtype=np.int64)) * itemsize
    return sizes


@dataclass(frozen=True)
class Plan:
    """Which items each pass covers, and the figures that decided it (reported when there is more than one)."""

    passes: tuple[tuple[str, ...], ...]
    per_sample: int  # estimated bytes of every exposed tensor of one sample, all passes together
    budget: int | None
    estimated: bool = False  # some tensor sizes were unknown and estimated as the largest known one

    @property
    def count(self) -> int:
        return len(self.passes)

    def describe(self) -> str:
        guess = " (some sizes estimated)" if self.estimated else ""
        return (f"{self.count} passes over the graph: the compared tensors take ~{fmt_size(self.per_sample)} per "
                f"sample{guess}, over the memory budget of {fmt_size(self.budget or 0)}")


def plan(items: Sequence[str], cost: Callable[[str], int | None], budget: int | None, in_flight: int) -> Plan:
    """Cut ``items`` (in topological order) into consecutive passes whose exposed bytes fit the budget.

    ``cost(item)`` is the bytes one sample's exposed tensors of that item take (None: unknown, counted as the
    largest known item). ``in_flight`` samples' tensors are alive at once (2 while metrics of one sample
    overlap the next sample's runs). An item larger than the whole budget gets a pass of its own.
    """
    known = {i: c for i in items if (c := cost(i)) is not None}
    fallback = max(known.values(), default=0)
    costs = [(i, known.get(i, fallback)) for i in items]
    total = sum(c for _, c in costs)
    estimated = len(known) < len(items)
    if budget is None or total * in_flight <= budget or not items:
        return Plan((tuple(items),), total, budget, estimated)
    limit = budget / in_flight
    passes: list[tuple[str, ...]] = []
    current: list[str] = []
    used = 0
    for item, c in costs:
        if current and used + c > limit:
            passes.append(tuple(current))
            current, used = [], 0
        current.append(item)
        used += c
    passes.append(tuple(current))
    return Plan(tuple(passes), total, budget, estimated)
