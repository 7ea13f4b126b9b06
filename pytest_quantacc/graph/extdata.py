"""Models whose weights live in external data files (side files), including models beyond protobuf's 2 GB.

A protobuf message cannot exceed 2 GB, so large models keep their tensors in side files referenced by
``location``/``offset``/``length``. The engine never needs the weights in Python to convert and simulate:
graphs are read with ``load_external_data=False`` (kilobytes), ONNX Runtime reads the weights itself, and
side files written by ONNX Runtime or its quantizer are *moved* next to the artifact they belong to, never
re-serialized. Which code path a model takes depends on "has external data", not on its size, so small
external-data models exercise exactly the code a 20 GB model runs.

Tensors below :data:`INLINE_BYTES` are read into the graph proto (scales, zero points, shapes, axes): ONNX
Runtime's load-time shape inference and onnx's version converter need shape tensors in the proto, and
:mod:`match` reads quantization parameters from it. Their total stays small on any model.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx
from onnx.external_data_helper import _get_all_tensors, load_external_data_for_tensor, uses_external_data

INLINE_BYTES = 64 << 10


def _info(tensor: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in tensor.external_data}


def external_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    """Every tensor (initializers and attributes, subgraphs included) whose data is in a side file."""
    return [t for t in _get_all_tensors(model) if uses_external_data(t)]


def has_external_data(model: onnx.ModelProto) -> bool:
    return bool(external_tensors(model))


def path_has_external_data(path: Path) -> bool:
    try:
        return has_external_data(onnx.load(str(path), load_external_data=False))
    except Exception:  # unreadable models are reported by whoever loads them for real
        return False


def inline_small(model: onnx.ModelProto, base_dir: Path, limit: int = INLINE_BYTES) -> None:
    """Read external tensors of at most ``limit`` bytes into the proto, in place (small reads only)."""
    for t in external_tensors(model):
        length = _info(t).get("length")
        if length is None or int(length) > limit:
            continue
        load_external_data_for_tensor(t, str(base_dir))
        t.data_location = onnx.TensorProto.DEFAULT
        del t.external_data[:]


def side_files(model: onnx.ModelProto) -> list[str]:
    """The side files the model refers to (relative locations, in first-use order)."""
    return list(dict.fromkeys(_info(t).get("location", "") for t in external_tensors(model)))


def intact(path: Path) -> bool:
    """``path`` exists and every side file it refers to exists and is long enough for its tensors.

    Catches a deleted or truncated side file cheaply (no data read); content corruption is the cache
    checksums' job (cache.py).
    """
    if not path.is_file():
        return False
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # a half-written or foreign file: rebuild it
        return False
    need: dict[str, int] = {}
    for t in external_tensors(model):
        info = _info(t)
        end = int(info.get("offset", 0)) + int(info.get("length", 0))
        need[info.get("location", "")] = max(need.get(info.get("location", ""), 0), end)
    for loc, end in need.items():
        side = path.parent / loc
        if not side.is_file() or side.stat().st_size < end:
            return False
    return True


def data_name(dest: Path) -> str:
    """The side file name an artifact's weights are kept in: ``<artifact>.data``."""
    return f"{dest.name}.data"


def publish(model: onnx.ModelProto, src_dir: Path, dest: Path, save) -> None:
    """Move the side file of ``model`` (read from ``src_dir``) to ``<dest>.data`` and save ``model`` as ``dest``.

    The weights are renamed into place, not copied; only the small graph is written (``save(model, dest)``,
    an atomic save). A stale ``<dest>.data`` from an earlier model with external data is removed when this
    one has none.
    """
    files = side_files(model)
    target = dest.parent / data_name(dest)
    if len(files) > 1:  # ONNX Runtime and its quantizer write one file; anything else is not ours to move
        raise ValueError(f"expected one external data file, got {files}")
    if files:
        os.replace(src_dir / files[0], target)
        for t in external_tensors(model):
            for e in t.external_data:
                if e.key == "location":
                    e.value = target.name
    else:
        target.unlink(missing_ok=True)
    save(model, dest)
