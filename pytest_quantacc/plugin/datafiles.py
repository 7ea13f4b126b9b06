"""What ``quantacc.check`` is given, written as the files a spec names: model, ``.npz`` data, the spec itself.

Every file is written atomically (files.replacing), so a concurrent run on the same work folder never reads half
of one; unchanged content keeps its cache key (the keys hash content, not modification times).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import yaml

from ..files import replacing, save_model, write_text
from ..spec.model import SPEC_VERSION


def write_model(model: Any, dest: Path) -> str:
    """A path is used where it is; an ``onnx.ModelProto`` is saved to ``dest``."""
    if isinstance(model, onnx.ModelProto):
        save_model(model, dest)
        return str(dest)
    if isinstance(model, (str, Path)):
        return str(Path(model).resolve())
    raise TypeError(f"quantacc.check: model must be a path or an onnx.ModelProto, got {type(model).__name__}")


def write_samples(data: Any, dest: Path, key: str) -> str:
    """A ``.npz`` path as it is; a dict of arrays (axis 0: samples) or an iterable of per-sample dicts as ``dest``."""
    if isinstance(data, (str, Path)):
        return str(Path(data).resolve())
    if isinstance(data, Mapping):
        arrays = {str(k): np.asarray(v) for k, v in data.items()}
    elif isinstance(data, Iterable):
        samples = list(data)
        if not samples or not all(isinstance(s, Mapping) for s in samples):
            raise TypeError(f"quantacc.check: {key} must be a .npz path, a dict of arrays or a non-empty iterable "
                            f"of per-sample dicts")
        names = list(samples[0])
        if any(list(s) != names for s in samples):
            raise TypeError(f"quantacc.check: every {key} sample must have the inputs {names}")
        arrays = {str(n): np.stack([np.asarray(s[n]) for s in samples]) for n in names}
    else:
        raise TypeError(f"quantacc.check: {key} must be a .npz path, a dict of arrays or an iterable of per-sample "
                        f"dicts, got {type(data).__name__}")
    with replacing(dest) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    return str(dest)


def write_spec_file(entry: dict, dest: Path) -> Path:
    """The one-model spec the parser reads (so its errors are the YAML gate's errors)."""
    try:
        text = yaml.safe_dump({"quantacc": SPEC_VERSION, "models": [entry]}, sort_keys=False)
    except yaml.YAMLError as exc:
        raise TypeError(f"quantacc.check: values must be plain numbers, strings, lists and dicts ({exc})") from None
    write_text(dest, text)
    return dest
