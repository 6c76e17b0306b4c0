"""Stopping on a cluster's signal without losing work.

SLURM sends SIGTERM on preemption, ``scancel`` and at the time limit (then SIGKILL after ``KillWait``, 30 s by
default), and ``#SBATCH --signal=USR1@120`` (or USR2) a while before. Here such a signal only sets a flag; at the
next iteration boundary every process learns whether any process was signalled (one all-reduce), rank 0 writes a
resumable checkpoint of that iteration, and every process exits with 128 + the signal's number. A signal during a
checkpoint write or an evaluation is acted on once they are over (an evaluation is cut short and its partial
results dropped): nothing half-written is left behind.

The data loaders' workers ignore these signals (``adet/data/build.py``): SLURM signals every process of the job,
and a worker killed by it would fail the batch the checkpoint waits for.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from types import FrameType

import torch

from adet.utils import comm

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
_received: list[int] = []


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if not _received:
        # Logging from a signal handler can deadlock on the handler's lock; print is enough (and unbuffered here).
        os.write(2, f"received {signal.Signals(signum).name}: stopping at the end of this iteration\n".encode())
    _received.append(signum)


@contextlib.contextmanager
def stop_signals_handled() -> Iterator[None]:
    """While the block runs, SIGTERM, SIGUSR1 and SIGUSR2 only set the stop flag (in this process and in processes
    it forks); afterwards the earlier handlers are back and the flag is clear, so that a Python session that trained
    once does not go on ignoring SIGTERM. Outside the main thread (where Python cannot set handlers) signals keep
    their default action."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    reset()
    previous = {signum: signal.signal(signum, _on_signal) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        reset()


def stop_requested() -> bool:
    """Whether this process received a stop signal (no communication)."""
    return bool(_received)


def received_signal() -> int:
    """The first stop signal this process received (0 if none)."""
    return _received[0] if _received else 0


def agree_to_stop(stop_asked_here: bool = False) -> tuple[int, bool]:
    """(the stop signal any process received, 0: none; whether any process's ``stop_asked_here``: a hook such as
    early stopping asked to end the run), the same on every process: one all-reduce over the CPU-side group, so a
    GPU run does not wait for its stream."""
    if comm.get_world_size() == 1:
        return received_signal(), stop_asked_here
    flags = comm.all_reduce(torch.tensor([received_signal(), int(stop_asked_here)], dtype=torch.int64), "max")
    return int(flags[0]), bool(flags[1])


def reset() -> None:
    """Forget received signals (for a new run in the same process, e.g. in tests)."""
    _received.clear()


def requeue_requested() -> bool:
    return os.environ.get("EMBEDMASK_REQUEUE", "0") == "1"


def requeue_slurm_job() -> str:
    """Ask SLURM to requeue this job (rank 0, after the checkpoint is written); returns what was done."""
    array_job, array_task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    job = f"{array_job}_{array_task}" if array_job and array_task else os.environ.get("SLURM_JOB_ID")
    if not job:
        return "EMBEDMASK_REQUEUE=1 but this is not a SLURM job: not requeued"
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        return f"EMBEDMASK_REQUEUE=1 but scontrol is not on PATH: job {job} not requeued"
    done = subprocess.run([scontrol, "requeue", job], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        return f"scontrol requeue {job} failed: {(done.stderr or done.stdout).strip()[:200]}"
    return f"job {job} requeued"
