"""The dump and command backends: a mode's tensors come from files an external tool wrote, not ONNX Runtime.

With ``dumps.fixed`` in a spec, the float model still runs in ONNX Runtime (it is the reference), but the
quantized side is whatever the vendor simulator dumped. ONNX Runtime's quantizer is not run: the vendor
toolchain did the quantization, and its dumps are what must be gated. With ``command``, the harness first
writes the evaluation inputs to files and runs the tool, which writes the dumps.

Layers are then compared exactly as in the ONNX Runtime path (same metrics, thresholds, known_bad, report,
diagnosis), except that there is no "own error" second pass: that needs a model the harness can rewire.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx

from ..convert.prepare import model_inputs, prepare_float
from ..errors import QuantaccInputError
from ..graph.match import Layer, QParams, float_layers
from ..graph.structure import prune
from ..samples import Samples, load_samples
from ..spec.dumps import Command, DumpSpec, read_qparams_file, substitute
from ..spec.model import ModelSpec
from .diagnose import diagnose
from .dump_reader import DumpReader, write_inputs
from .metrics import Accumulator
from .passes import default_budget, plan, tensor_bytes
from .results import CommandRun
from .runner import Runner

_TAIL = 2000  # characters of a command's output kept for the report


def _tail(text: str) -> str:
    return text if len(text) <= _TAIL else "..." + text[-_TAIL:]


def _read_tail(f) -> str:
    """The last characters a command wrote into the temporary file ``f`` (it may have written gigabytes)."""
    size = f.seek(0, os.SEEK_END)
    f.seek(max(0, size - 4 * _TAIL))
    return _tail(f.read().decode(errors="replace"))


_GROUPS: set[int] = set()  # process groups of commands that may have left processes behind


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    _GROUPS.discard(pgid)


def end_commands() -> None:
    """Kill whatever the commands of this process left running (helpers a simulator started and did not wait
    for); called at the end of the pytest session, and at exit for the library API."""
    for pgid in list(_GROUPS):
        _kill_group(pgid)


atexit.register(end_commands)


def run_command(mspec: ModelSpec, cmd: Command, fields: dict[str, str]) -> CommandRun:
    """Run ``cmd`` with its placeholders filled, without a shell: each token is filled after splitting, so a
    path with spaces or quotes stays one argument and nothing is ever interpreted by a shell.

    The command runs in a session (process group) of its own, with its output going to temporary files rather
    than pipes: waiting is for the command itself, never for pipes a helper it started still holds open, and on
    timeout the whole group is killed, not only the direct child.
    """
    argv = tuple(substitute(token, fields) for token in cmd.argv)
    key = cmd.key.removeprefix(f"{mspec.key}.")
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(argv, cwd=mspec.spec_path.parent, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=err, start_new_session=True)
        except (OSError, ValueError) as exc:  # ValueError: a NUL byte in an argument
            raise mspec.error(key, f"cannot run {argv[0][:200]!r}: {exc}") from None
        _GROUPS.add(proc.pid)
        try:
            returncode = proc.wait(timeout=cmd.timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            proc.wait()
            raise mspec.error(key, f"command timed out after {cmd.timeout:g} s (its process group was killed): "
                              f"{' '.join(argv)[:2000]}" + (f"\nstderr (tail):\n{e}" if (e := _read_tail(err)) else "")
                              ) from None
        except BaseException:  # Ctrl-C while waiting: the command goes with the run
            _kill_group(proc.pid)
            raise
        run = CommandRun(argv, returncode, time.perf_counter() - t0, _read_tail(out), _read_tail(err))
    if returncode != 0:
        raise mspec.error(key, f"command exited with status {returncode}: {' '.join(argv)[:2000]}\n"
                          f"stderr (tail):\n{run.stderr or '(empty)'}")
    return run


def evaluate_dumps(mspec: ModelSpec, base: Path, threads: int = 0, memory_budget: int | None = None):
    """Float model in ONNX Runtime vs dumped tensors, layer by layer (``evaluate_model`` for ``dumps`` specs)."""
    from .judge import finish
    from .metrics import accumulate
    from .results import ModelResult

    seconds: dict[str, float] = {}
    command = None
    try:
        t0 = time.perf_counter()
        float_path = prepare_float(mspec, base)
        inputs = model_inputs(float_path)
        evals = load_samples(mspec.evaluation.path, mspec.evaluation.limit, inputs, mspec.spec_path,
                             f"{mspec.key}.evaluation.data" if mspec.evaluation != mspec.calibration
                             else f"{mspec.key}.calibration.data")
        dspec = mspec.dumps[0]
        # A command writes into a fresh folder of its own per run: pytest-xdist workers may evaluate the same
        # model at the same time, and stale dumps from an earlier run must never be read. Removed after reading.
        scratch = (tempfile.TemporaryDirectory(dir=float_path.parent, prefix=f".command-{dspec.mode}.")
                   if dspec.command is not None else contextlib.nullcontext(None))
        with scratch as run_dir:
            folder = dspec.path
            if run_dir is not None:
                folder, command = _produce(mspec, dspec, float_path, evals, Path(run_dir))
                if dspec.qparams_in_out:
                    extra = read_qparams_file(folder / dspec.qparams_in_out, lambda why: QuantaccInputError(
                        mspec.spec_path, f"{dspec.key}.dequantize.file", why))
                    dspec = replace(dspec, dequantize=replace(dspec.dequantize,
                                                              tensors=dspec.dequantize.tensors + extra))
            seconds["convert"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            comparison, compared, passes = _compare_dumps(mspec, dspec, folder, float_path, evals, threads,
                                                          memory_budget, accumulate, finish)
            seconds["simulate"] = time.perf_counter() - t0
    except QuantaccInputError as exc:
        return ModelResult(mspec, error=exc, seconds=seconds, command=command)
    return ModelResult(mspec, None, (comparison,), None, quantized_layers=compared, samples=len(evals),
                       seconds=seconds, command=command, passes=passes.count,
                       memory=passes.describe() if passes.count > 1 else None)


def evaluate_board(mspec: ModelSpec, base: Path, threads: int = 0, memory_budget: int | None = None,
                   prepared=None):
    """``dumps.offline``: the board (or an NPU simulator) as the offline mode.

    The spec's conversion runs as always; its deployable model (``fixed.onnx`` with every ONNX Runtime
    optimization, the "PC offline" model) is what the board must reproduce. Two checks, from the dumps of every
    layer the board wrote: float vs board layer by layer (the same metrics, thresholds and diagnosis as float vs
    fixed), and PC offline vs board in quantization steps: each dumped tensor is expressed in the steps of the
    PC model's QuantizeLinear for that tensor and compared with the PC model's integers (mismatch rate beyond
    ``offline.tolerance_steps``, the first tensor beyond the gate), the same gate as fixed vs offline.
    """
    from ..convert.prepare import prepare
    from ..convert.quantize import quantize
    from ..graph.match import match_layers
    from .judge import finish
    from .metrics import AgreementAccumulator, accumulate
    from .results import AgreementResult, ModelResult

    seconds: dict[str, float] = {}
    command = None
    try:
        t0 = time.perf_counter()
        prepared = prepared or prepare(mspec, base)
        evals = prepared.evaluation
        art = quantize(mspec, prepared.float_model, prepared.calibration, base)
        dspec = mspec.dumps[0]
        float_model = onnx.load(str(art.float_model), load_external_data=False)
        layers = [lay for lay in match_layers(float_model, onnx.load(str(art.fixed_model), load_external_data=False))
                  if lay.quant_tensor and lay.qparams is not None]
        by_tensor = {lay.tensor: lay for lay in layers}
        pc = Runner(art.fixed_model, [lay.quant_tensor for lay in layers], optimize=True, threads=threads)
        agree = {lay.tensor: AgreementAccumulator(lay.tensor, mspec.offline.tolerance_steps) for lay in layers}

        def against_pc(i: int, sample, dumped) -> None:
            ints = pc.run(sample)
            for t, board in dumped.items():
                lay = by_tensor.get(t)
                q = ints.get(lay.quant_tensor) if lay is not None else None
                if q is not None and q.shape == board.shape:
                    agree[t].add(in_steps(board, lay.qparams), q)

        scratch = (tempfile.TemporaryDirectory(dir=art.workdir, prefix=".command-offline.")
                   if dspec.command is not None else contextlib.nullcontext(None))
        with scratch as run_dir:
            folder = dspec.path
            if run_dir is not None:
                folder, command = _produce(mspec, dspec, art.float_model, evals, Path(run_dir))
            seconds["convert"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            comparison, compared, passes = _compare_dumps(mspec, dspec, folder, art.float_model, evals, threads,
                                                          memory_budget, accumulate, finish, against_pc)
            seconds["simulate"] = time.perf_counter() - t0
    except QuantaccInputError as exc:
        return ModelResult(mspec, error=exc, seconds=seconds, command=command)
    agreement = AgreementResult(tuple(a.result() for a in agree.values() if a.elements),
                                mspec.offline.tolerance_steps, mspec.offline.max_mismatch_rate, "offline", "board")
    return ModelResult(mspec, art, (comparison,), agreement, quantized_layers=compared, samples=len(evals),
                       seconds=seconds, command=command, passes=passes.count,
                       memory=passes.describe() if passes.count > 1 else None)


def in_steps(values: np.ndarray, qp: QParams) -> np.ndarray:
    """Dequantized values back in the quantization steps of ``qp`` (round to nearest, clipped to its type)."""
    scale = np.asarray(qp.scale, np.float64)
    zp = np.asarray(qp.zero_point, np.float64)
    if scale.size > 1 and qp.axis is not None:
        shape = [1] * values.ndim
        shape[qp.axis] = scale.size
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    info = np.iinfo(np.dtype(qp.dtype))
    return np.clip(np.rint(values.astype(np.float64) / scale) + zp, info.min, info.max).astype(np.int64)


def _produce(mspec: ModelSpec, dspec: DumpSpec, float_path: Path, evals: Samples,
             run_dir: Path) -> tuple[Path, CommandRun]:
    """Write the inputs, run the command into an empty folder, check it wrote something."""
    inputs, out = run_dir / "inputs", run_dir / "out"
    write_inputs(evals, inputs)
    out.mkdir()
    fields = {"python": sys.executable, "model": str(mspec.model), "float_model": str(float_path),
              "calibration": str(mspec.calibration.path), "inputs": str(inputs), "out": str(out),
              "spec_dir": str(mspec.spec_path.parent)}
    run = run_command(mspec, dspec.command, fields)
    if not any(out.iterdir()):
        raise mspec.error(dspec.command.key.removeprefix(f"{mspec.key}."),
                          f"the command exited 0 but wrote no dumps into {{out}} ({out})\n"
                          f"stderr (tail):\n{run.stderr or '(empty)'}")
    return out, run


def _compare_dumps(mspec: ModelSpec, dspec: DumpSpec, folder: Path, float_path: Path, evals: Samples, threads: int,
                   memory_budget: int | None, compare, finish, also=None):
    """Float vs dumps per layer; ``also(index, sample, dumped)`` sees every sample's dumps of each pass too."""
    float_model = onnx.load(str(float_path), load_external_data=False)
    layers = [Layer(n, op, t, i) for i, (n, op, t) in enumerate(float_layers(float_model))]
    node_outputs = {n.name: n.output[0] for n in float_model.graph.node if len(n.output) == 1}
    reader = DumpReader(dspec, folder, mspec.spec_path, [lay.tensor for lay in layers], node_outputs)
    if len(reader.samples) < len(evals):
        raise reader.fail(f"{folder} holds {len(reader.samples)} dumped samples, but the evaluation data has "
                          f"{len(evals)}; dumps must cover the evaluation samples, in order")
    # Float tensor and dumped tensor of each layer are held at once; over the budget, in passes (chunking.py).
    sizes = tensor_bytes(float_model, evals.largest_shapes())
    passes = plan([lay.tensor for lay in layers], lambda t: 2 * sizes[t] if t in sizes else None,
                  memory_budget if memory_budget is not None else default_budget(), 1)
    accs: dict[str, Accumulator] = {}
    skips: dict[str, str] = {}
    seen: set[str] = set()
    for chunk in passes.passes:
        float_run = Runner(prune(float_model, list(chunk)), [], optimize=False, threads=threads,
                           data_dir=float_path.parent)
        for i, sample in enumerate(evals):
            f = float_run.run(sample)
            dumped = reader.load(i, {t: v.shape for t, v in f.items()})
            seen |= dumped.keys()
            for t in chunk:
                if t in dumped:
                    compare(accs, skips, t, f.get(t), dumped[t])
            if also is not None:
                also(i, sample, dumped)
        del float_run
    if not seen:
        names = sorted(reader.unmatched)[:8]
        raise reader.fail(f"no dumped tensor matches a tensor or node of the float model (dump names: "
                          f"{', '.join(names) or 'none'}; float tensors: "
                          f"{', '.join(lay.tensor for lay in layers[:8])}); map them with 'names'")
    missing = "no dumped tensor for this layer" + (f" in {folder}" if folder else "")
    skips.update({lay.tensor: missing for lay in layers if lay.tensor not in seen})
    comparison = finish(layers, accs, skips, mspec, "float", dspec.mode)
    return (replace(comparison, diagnosis=_vendor_todo(diagnose(float_model, comparison), comparison)), len(seen),
            passes)


def _vendor_todo(diagnosis, comparison):
    """The diagnosis's advice in toolchain terms: the spec's quantization keys do not drive a vendor tool, and a
    dump can be misread (a wrong scale keeps cos near 1 while rmse grows)."""
    if diagnosis is None:
        return None
    first = comparison.first_diverging
    todo = [f"in the toolchain, raise {first.layer.name} (or its inputs: {', '.join(diagnosis.inputs) or 'none'}) "
            f"to 16 bits, or try another calibration method / per-channel weights",
            f"check how the dump of {first.layer.tensor} is read: names, layout, crop_channels, and its "
            f"dequantize scale and zero point"]
    if first.summary["cos"] >= first.thresholds.cos:
        todo.insert(0, f"cos {first.summary['cos']:.4f} is fine but rmse is not: the values are proportional, "
                       f"which points at a wrong dequantization scale for {first.layer.tensor}")
    return replace(diagnosis, todo=tuple(todo))
