"""The one way files are written: to a unique temporary name beside the destination, then renamed.

A reader (another pytest-xdist worker, a later run, a CI job sharing the cache) sees the old file or the new
one, never half of one; writers never share a temporary name, so concurrent writers cannot corrupt each other.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

LARGE_MODEL_BYTES = 1_900_000_000  # beyond this a model is saved with external data (protobuf's 2 GB limit)


@contextmanager
def replacing(dest: Path) -> Iterator[Path]:
    """A fresh temporary path beside ``dest``: renamed onto ``dest`` when the block succeeds, removed otherwise."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: Path, text: str) -> None:
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path, data: dict) -> None:
    """Bookkeeping JSON (manifests, digests): sorted keys, one level of indentation."""
    write_text(path, json.dumps(data, indent=1, sort_keys=True))


def read_json(path: Path) -> dict:
    """A JSON object from ``path``; an empty dict when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save_model(model: onnx.ModelProto, dest: Path) -> None:
    """An ONNX model; beyond protobuf's limit its tensors go to ``<dest name>.data`` beside it."""
    import onnx

    with replacing(dest) as tmp:
        large = model.ByteSize() > LARGE_MODEL_BYTES
        onnx.save_model(model, str(tmp), save_as_external_data=large, location=f"{dest.name}.data" if large else None)
