"""The per-model work folder: where artifacts live and the content keys that say whether they are current.

``<base>/<spec stem>-<hash>/<model>/`` holds ``float.onnx``, ``fixed.onnx``, ``offline.onnx`` (the files
users open in Netron) and ``manifest.json``, which keys each artifact by what it was made from. File digests
are remembered by size and modification time (``digests.json``) so warm runs do not re-hash gigabytes.
"""

from __future__ import annotations

import hashlib
import os
import stat
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import onnx

from .. import __version__
from ..files import read_json, write_json
from ..spec.model import ModelSpec
from .hardening import FLOAT_REWRITES


@dataclass(frozen=True)
class Artifacts:
    workdir: Path
    float_model: Path
    fixed_model: Path
    offline_model: Path
    log: tuple[str, ...] = ()  # what the quantizer warned about, for the report


def digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()[:16]


_MEMO = "digests.json"


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


class NotRegularFile(OSError):
    """A path to hash is a directory, a device, a FIFO or a socket: hashing it would fail, hang or never end."""


def hash_file(path: Path, known: dict | None = None) -> str:
    """sha256 of a regular file's bytes. ``known`` maps a resolved path to ``[size, mtime_ns, sha256]`` from
    earlier calls: reused while the file's size and modification time are unchanged, updated when hashed.

    Anything but a regular file raises ``NotRegularFile`` before a byte is read (opened non-blocking and checked
    on the descriptor, so a FIFO cannot hang the open and ``/dev/zero`` cannot feed the hash forever)."""
    where, stamp = str(path.resolve()), _stamp(path)
    hit = known.get(where) if known is not None else None
    if isinstance(hit, list) and hit[:2] == stamp:
        return hit[2]
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise NotRegularFile(f"{path} is not a regular file")
    with os.fdopen(fd, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    if known is not None:
        known[where] = [*stamp, h.hexdigest()]
    return h.hexdigest()


@contextmanager
def remembered(memo_dir: Path | None):
    """The digests remembered in ``<memo_dir>/digests.json`` (None without a folder), written back if changed.

    Used under the model folder's lock: hashing a 2.4 GB weights file and gigabytes of evaluation data took
    most of a warm run that otherwise only re-checks stored metrics.
    """
    if memo_dir is None or not memo_dir.is_dir():
        yield None
        return
    known = read_json(memo_dir / _MEMO)
    before = dict(known)
    yield known
    if known != before:
        write_json(memo_dir / _MEMO, known)


def file_digest(path: Path, memo_dir: Path | None = None) -> str:
    """sha256 of a file, remembered in ``memo_dir`` (see :func:`remembered`) when one is given."""
    with remembered(memo_dir) as known:
        return hash_file(path, known)


def model_key(model: Path, memo_dir: Path | None = None) -> str:
    """Model bytes plus any external-data files beside it, and the tool versions that shape the float model."""
    import onnxruntime

    with remembered(memo_dir) as known:
        parts = [hash_file(model, known), onnxruntime.__version__, onnx.__version__, __version__, FLOAT_REWRITES]
        try:
            proto = onnx.load(str(model), load_external_data=False)
        except Exception:  # not ONNX: the key only has to differ; load_onnx reports the problem
            return digest(*parts)
        locations = sorted({e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"})
        parts += [hash_file(model.parent / loc, known) for loc in locations if (model.parent / loc).is_file()]
    return digest(*parts)


def data_key(path: Path, memo_dir: Path | None = None) -> str:
    files = sorted(path.glob("*.npz")) if path.is_dir() else [path]  # the spec parser checked they are files
    with remembered(memo_dir) as known:
        return digest(*[hash_file(f, known) for f in files])


def workdir_for(base: Path, mspec: ModelSpec) -> Path:
    """``<base>/<spec stem>-<hash>/<model name>``; the spec parser refused names that are not one folder name
    (``..``, ``/``, NUL, over 100 bytes), and a long spec stem is cut so the folder name stays legal."""
    folder = base / f"{mspec.spec_path.stem[:100]}-{digest(str(mspec.spec_path))[:6]}"
    workdir = folder / mspec.name
    if workdir.parent != folder or mspec.name in ("", ".", ".."):
        raise ValueError(f"model name {mspec.name[:80]!r} does not name one folder")  # parse.name_problem refuses it
    return workdir


def read_manifest(workdir: Path) -> dict:
    return read_json(workdir / "manifest.json")


def write_manifest(workdir: Path, manifest: dict) -> None:
    write_json(workdir / "manifest.json", manifest)
