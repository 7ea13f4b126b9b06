"""The evaluation cache: conversion artifacts and measured results, safe under concurrent runs.

Built on convert.py's per-model work folder (``<base>/<spec>-<hash>/<model>/``, the folder users open in
Netron), whose ``manifest.json`` already keys ``float.onnx`` by the model's bytes and the tool versions and
``fixed.onnx`` by that plus calibration data and quantization settings. This module adds what a CI gate
needs on top:

- a lock per work folder (``fcntl.flock`` on a sibling ``.<model>.lock``): pytest-xdist workers and
  parallel CI jobs on one runner serialize on a model, so the second one waits and then reuses instead of
  converting again or reading a half-written file;
- ``checksums.json``, written last, with the SHA-256 of every cached file: a file that does not match
  (disk trouble, an interrupted copy, a hand edit) is detected, reported as a warning and rebuilt, never
  trusted; files not covered by it (a run killed before sealing) are rebuilt silently;
- ``results.json``: the measured per-layer metrics, keyed by every input they depend on. A re-run whose
  key matches re-judges the stored metrics against the current thresholds, per-layer thresholds, known_bad
  and gates (``serialize.recheck``) and runs no inference.

Locking is ``fcntl.flock`` on POSIX (tested); on Windows a byte-range lock through ``msvcrt`` (untested here).
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from .. import __version__
from ..convert.prepare import PreparedModel, prepare, prepare_float
from ..convert.workdir import (
    data_key,
    digest,
    file_digest,
    hash_file,
    model_key,
    read_manifest,
    remembered,
    workdir_for,
)
from ..engine.accuracy import task_accuracy
from ..engine.progress import Progress
from ..engine.results import Evaluated, ModelResult
from ..engine.run import evaluate_model
from ..errors import QuantaccInputError
from ..files import read_json, write_text
from ..spec.model import ModelSpec
from .serialize import FORMAT, from_dict, recheck, to_dict

# The .data files are the artifacts' external data (models stored with external data, extdata.py): a deleted
# or corrupt side file fails the checksum like its graph would, and the whole folder is rebuilt.
_CACHED = ("manifest.json", "float.onnx", "fixed.onnx", "offline.onnx", "results.json",
           "float.onnx.data", "fixed.onnx.data", "offline.onnx.data")
_SEAL = "checksums.json"
_RESULTS = "results.json"
_OPEN = "unsealed"  # present from opened() to seal(): left behind, the holder of the lock was killed meanwhile
# What a run killed under the lock leaves in the folder: temporary folders of the float preparation, the
# quantizer and dump commands, the quantizer's shape-inferred copy, files.replacing's temporary files.
_LEFTOVERS = (".opt.*", ".q.*", ".command-*", "float-inferred.onnx", "float-inferred.onnx.data", ".*.tmp")


class QuantaccCacheWarning(UserWarning):
    """A cached file failed its checksum and was rebuilt."""


@contextmanager
def locked(workdir: Path):
    """Exclusive access to one model's work folder across processes (blocks until the holder is done)."""
    lock = workdir.parent / f".{workdir.name}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+b") as f:
        _lock(f.fileno())
        try:
            yield
        finally:
            _unlock(f.fileno())


if os.name == "posix":
    import fcntl

    def _lock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX)

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)
else:  # Windows: a byte-range lock on the lock file's first byte; LK_LOCK gives up after 10 s, so retry
    import msvcrt

    def _lock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        while True:
            try:
                msvcrt.locking(fd, msvcrt.LK_LOCK, 1)
                return
            except OSError:
                continue

    def _unlock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


def _invalidate(workdir: Path) -> None:
    for name in (*_CACHED, _SEAL):
        (workdir / name).unlink(missing_ok=True)


def sweep(workdir: Path) -> None:
    """Remove what killed runs left in ``workdir`` (call under the lock: nobody else is working in it)."""
    for pattern in _LEFTOVERS:
        for p in workdir.glob(pattern):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


def verify(workdir: Path) -> None:
    """Drop every cached file of ``workdir`` unless all of them match ``checksums.json`` (call under the lock).

    A folder whose previous holder did not reach ``seal`` (killed, or interrupted by an error) is rebuilt
    quietly: its files are whole (every write is atomic) but not vouched for; only files that differ from
    what was sealed are reported, as a ``QuantaccCacheWarning``."""
    if not workdir.is_dir():
        return
    sweep(workdir)
    interrupted = (workdir / _OPEN).exists()
    (workdir / _OPEN).unlink(missing_ok=True)
    present = [n for n in _CACHED if (workdir / n).is_file()]
    if not present:
        return
    if interrupted:
        _invalidate(workdir)
        return
    try:
        sealed = json.loads((workdir / _SEAL).read_text())
    except (OSError, ValueError):
        sealed = None
    if not isinstance(sealed, dict):
        _invalidate(workdir)  # never sealed: a run was interrupted (or an old layout); rebuild quietly
        return
    bad = [n for n in present if not _matches(workdir / n, sealed.get(n))]
    bad += [n for n in sealed if n not in present]
    if bad:
        warnings.warn(QuantaccCacheWarning(f"quantacc cache: {', '.join(sorted(set(bad)))} in {workdir} failed "
                                           f"the checksum (corrupt or modified); rebuilding"), stacklevel=2)
        _invalidate(workdir)


def opened(workdir: Path) -> None:
    """Mark ``workdir`` as being worked on until ``seal`` (after ``verify``, under the lock): if this process is
    killed meanwhile, the next ``verify`` knows the folder was left unsealed and rebuilds it quietly."""
    if workdir.is_dir():
        (workdir / _OPEN).touch()


def _matches(path: Path, sealed) -> bool:
    """The file is as sealed: same size and modification time (hashing gigabytes of side files on every warm
    run cost more than the run), or, when either differs, the same sha256."""
    if isinstance(sealed, str):  # checksums.json written before the stamps were recorded
        return sealed == hash_file(path)
    if not isinstance(sealed, list) or len(sealed) != 3:
        return False
    return hash_file(path, {str(path.resolve()): sealed}) == sealed[2]


def seal(workdir: Path) -> None:
    """Record size, modification time and sha256 of every cached file present (under the lock, after writing).
    Files unchanged since the previous seal keep their digest without being read again."""
    previous = read_json(workdir / _SEAL)
    known = {str((workdir / n).resolve()): v for n, v in previous.items() if isinstance(v, list)}
    present = [n for n in _CACHED if (workdir / n).is_file()]
    for n in present:
        hash_file(workdir / n, known)
    sums = {n: known[str((workdir / n).resolve())] for n in present}
    write_text(workdir / _SEAL, json.dumps(sums, indent=1, sort_keys=True))
    (workdir / _OPEN).unlink(missing_ok=True)


def cached_float(mspec: ModelSpec, base: Path) -> Path:
    """``prepare_float`` under the model's lock, with the cache checked first and sealed after."""
    workdir = workdir_for(base, mspec)
    with locked(workdir):
        verify(workdir)
        opened(workdir)
        path = prepare_float(mspec, base)
        seal(workdir)
        return path


def results_key(mspec: ModelSpec, float_key: str, workdir: Path | None = None) -> str:
    """Everything stored metrics depend on; thresholds, known_bad and gate limits deliberately excluded."""
    e, acc = mspec.evaluation, mspec.accuracy
    parts = [str(FORMAT), __version__, float_key, data_key(mspec.calibration.path, workdir),
             str(mspec.calibration.limit), json.dumps(asdict(mspec.quantization), sort_keys=True, default=str),
             data_key(e.path, workdir), str(e.limit),
             ",".join(mspec.modes), str(mspec.offline.tolerance_steps)]
    if mspec.quantized is not None:  # the user's own quantized model replaces the conversion
        parts += ["quantized", model_key(mspec.quantized, workdir)]
    for d in mspec.dumps:  # the dumped tensors and how they are read (names, layout, dequantization)
        parts += [repr(d), dumps_key(d.path, workdir) if d.path is not None else ""]
    if acc is not None:
        parts += [file_digest(e.labels), str(e.output), acc.metric,
                  file_digest(acc.module) if acc.module is not None else ""]
    return digest(*parts)


def dumps_key(folder: Path, workdir: Path | None) -> str:
    """Every file under a dump folder, by relative path and content (digests remembered like the data's)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    with remembered(workdir) as known:
        return digest(*[f"{p.relative_to(folder)}:{hash_file(p, known)}" for p in files])


def evaluate_cached(mspec: ModelSpec, base: Path, threads: int = 0, use_cache: bool = True,
                    memory_budget: int | None = None, progress: Progress | None = None) -> Evaluated:
    """``evaluate_model`` plus task accuracy, through the cache; at most one process works on a model at a time."""
    workdir = workdir_for(base, mspec)
    with locked(workdir):
        if use_cache:
            verify(workdir)
        elif workdir.is_dir():
            sweep(workdir)
            _invalidate(workdir)
        opened(workdir)
        try:
            prepared = prepare(mspec, base)
        except QuantaccInputError as exc:
            if workdir.is_dir():
                seal(workdir)
            return Evaluated(ModelResult(mspec, error=exc), cache="computed" if use_cache else "off")
        key = results_key(mspec, read_manifest(workdir).get("float", ""), workdir)
        # Mode original runs the user's preprocessing hook (code the key does not cover): never stored, always run.
        # Neither are dumps a command writes (the tool's output may change with nothing in the spec changing).
        stores = use_cache and "original" not in mspec.modes and not any(d.command for d in mspec.dumps)
        if stores:
            reused = _reuse(workdir, key, prepared)
            if reused is not None:
                (workdir / _OPEN).unlink(missing_ok=True)  # nothing was written: the seal still holds
                return reused
        result = evaluate_model(mspec, base, threads, memory_budget, prepared, progress)
        accuracy = accuracy_error = None
        if result.error is None and mspec.accuracy is not None:
            try:
                accuracy = task_accuracy(mspec, result.artifacts, prepared.evaluation, threads)
            except QuantaccInputError as exc:
                accuracy_error = exc
        if stores and result.error is None and accuracy_error is None:
            write_text(workdir / _RESULTS, json.dumps({"key": key, "result": to_dict(result, accuracy)},
                                                         sort_keys=True))
        seal(workdir)
        return Evaluated(result, accuracy, accuracy_error, "computed" if use_cache else "off", prepared)


def _reuse(workdir: Path, key: str, prepared: PreparedModel) -> Evaluated | None:
    mspec = prepared.spec
    try:
        stored = json.loads((workdir / _RESULTS).read_text())
    except (OSError, ValueError):
        return None
    if stored.get("key") != key or stored.get("result", {}).get("format") != FORMAT:
        return None
    judged = recheck(stored["result"], mspec, prepared.float_model)
    if judged is None:
        return None
    result, accuracy = judged
    return Evaluated(result, accuracy, cache="reused", prepared=prepared)


def clear(base: Path) -> int:
    """Delete every model work folder under ``base`` (folders this plugin wrote: they hold a manifest).

    Returns how many were removed. Each is removed under its lock, so a concurrent run is not cut short.
    Nothing else under ``base`` is touched (it may be a user-chosen ``--quantacc-workdir``).
    """
    removed = 0
    for manifest in sorted(base.glob("*/*/manifest.json")):
        workdir = manifest.parent
        with locked(workdir):
            shutil.rmtree(workdir, ignore_errors=True)
        removed += 1
    return removed


def restore(d: dict, mspec: ModelSpec) -> Evaluated:
    """An ``Evaluated`` sent by an xdist worker (the dict ``payload`` made)."""
    result, accuracy = from_dict(d["result"], mspec)
    err = d.get("accuracy_error")
    return Evaluated(result, accuracy, QuantaccInputError(err["spec"], err["key"], err["problem"]) if err else None,
                     d["cache"])


def payload(ev: Evaluated) -> dict:
    err = ev.accuracy_error
    return {"result": to_dict(ev.result, ev.accuracy), "cache": ev.cache,
            "accuracy_error": None if err is None else {"spec": err.spec, "key": err.key, "problem": err.problem}}

