"""Start ``main_func`` in one process per GPU (or per CPU worker), on one or several machines, or join a process
group that ``torchrun`` or ``srun`` set up.

Launchers (``--launcher``): ``spawn`` starts the processes of this machine itself and supervises them (a process
that dies stops the others within seconds, their data-loader workers included; signals are passed on to every
process); ``torchrun`` and ``slurm`` join the group their environment describes (each process was started by
torchrun's agent or by ``srun``); ``auto`` is torchrun under torchrun, slurm under ``srun`` with several tasks, and
spawn otherwise.
"""

from __future__ import annotations

import ctypes
import datetime
import logging
import multiprocessing.connection
import os
import signal
import socket
import sys
import time
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from adet.engine.distributed.preemption import STOP_SIGNALS
from adet.engine.distributed.slurm import check_gpus_per_node, slurm_task, under_srun
from adet.errors import LaunchError
from adet.utils import comm

logger = logging.getLogger(__name__)

LAUNCHERS = ("auto", "spawn", "torchrun", "slurm")
# DIST_TIMEOUT 0: generous for NCCL (a slow step of a big model on many GPUs), shorter for gloo (CPU runs: tests,
# debugging), where waiting half an hour for a dead process is only a hang.
DEFAULT_TIMEOUT_S = {"nccl": 1800, "gloo": 300}
# Exit statuses of a process that stopped on purpose and said why: after a stop signal (128 + signum), Ctrl-C.
STOPPED = {128 + s for s in STOP_SIGNALS} | {130}
STOP_GRACE_S = 60  # how long the other processes of a stopping run may take to follow (rank 0 saves meanwhile)

# How a worker reports a failure: (error, prefix such as "(rank 1) ") -> exit status. Picklable (a module-level
# function) so spawned workers receive it.
ErrorReporter = Callable[[BaseException, str], int]


def find_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launched_by_torchrun() -> bool:
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"))


def resolve_launcher(requested: str) -> str:
    """The launcher ``requested`` ("auto" resolved from the environment); a LaunchError when it cannot apply."""
    if requested not in LAUNCHERS:
        raise LaunchError(f"--launcher {requested}: choose one of {', '.join(LAUNCHERS)}")
    if requested == "auto":
        if launched_by_torchrun():
            return "torchrun"
        return "slurm" if under_srun() and int(os.environ.get("SLURM_NTASKS", "1")) > 1 else "spawn"
    if requested == "torchrun" and not launched_by_torchrun():
        raise LaunchError("--launcher torchrun: RANK, WORLD_SIZE, LOCAL_RANK and MASTER_ADDR are not set; start "
                          "with `torchrun --nproc_per_node N tools/train_net.py ...`")
    return requested


def world_size_of(launcher: str, num_gpus: int, num_machines: int) -> int:
    """How many processes the run will have (known before any starts)."""
    kind = resolve_launcher(launcher)
    if kind == "torchrun":
        return int(os.environ["WORLD_SIZE"])
    if kind == "slurm":
        return slurm_task().world_size
    return num_gpus * num_machines


def leader_rank(launcher: str, machine_rank: int) -> int:
    """The rank this process will have (torchrun, slurm), or, for spawn, that of its machine's first process: 0
    means this process speaks for the run (claims OUTPUT_DIR, reports the checks made before launching)."""
    kind = resolve_launcher(launcher)
    if kind == "torchrun":
        return int(os.environ["RANK"])
    if kind == "slurm":
        return slurm_task().rank
    return machine_rank


def restart_count() -> int:
    """How many times torchrun (TORCHELASTIC_RESTART_COUNT) or SLURM (SLURM_RESTART_COUNT, after a requeue)
    restarted this job: a restart resumes from the last checkpoint by itself."""
    counts = [os.environ.get(k, "0") for k in ("TORCHELASTIC_RESTART_COUNT", "SLURM_RESTART_COUNT")]
    return max(int(c) if c.isdigit() else 0 for c in counts)


def dist_timeout(seconds: float, use_nccl: bool) -> datetime.timedelta:
    """The process-group timeout: DIST_TIMEOUT seconds, or (0) the backend's default."""
    return datetime.timedelta(seconds=seconds or DEFAULT_TIMEOUT_S["nccl" if use_nccl else "gloo"])


def unsafe_nccl_error_handling() -> str | None:
    """Why TORCH_NCCL_ASYNC_ERROR_HANDLING, when set to turn NCCL's error handling off, lets a run hang, or None.
    PyTorch's default (3) ends a process whose collective timed out or failed, which ends the run; with 0 a lost
    process leaves the others waiting on the GPU forever, the timeout notwithstanding."""
    value = os.environ.get("TORCH_NCCL_ASYNC_ERROR_HANDLING", os.environ.get("NCCL_ASYNC_ERROR_HANDLING"))
    if value is not None and value.strip() == "0":
        return ("TORCH_NCCL_ASYNC_ERROR_HANDLING=0: a failed or timed-out NCCL collective will not end the run (it "
                "hangs instead); unset it to keep PyTorch's default")
    return None


def check_devices(num_gpus_per_machine: int, device: str) -> None:
    """Asking for more CUDA processes than GPUs is an error (with a CPU alternative in the message), but with the
    default group on gloo (EMBEDMASK_DIST_BACKEND=cuda:gloo), where processes may share a GPU."""
    if not device.startswith("cuda") or num_gpus_per_machine <= 1:
        return
    available = torch.cuda.device_count()
    if available and comm.default_backend(use_cuda=True) == "cuda:gloo":
        if num_gpus_per_machine > available:
            logger.warning("%d processes share %d GPU(s): the default group is gloo (%s=cuda:gloo)",
                           num_gpus_per_machine, available, comm.BACKEND_ENV)
        return
    if num_gpus_per_machine > available:
        have = "none" if available == 0 else f"only {available}"
        raise LaunchError(f"--num-gpus {num_gpus_per_machine} asks for {num_gpus_per_machine} GPUs but this machine "
                          f"has {have}; lower --num-gpus, or add MODEL.DEVICE cpu to run {num_gpus_per_machine} "
                          "processes on the CPU (gloo)")


def launch(main_func: Callable[..., Any], num_gpus_per_machine: int, num_machines: int = 1, machine_rank: int = 0,
           dist_url: str | None = None, args: tuple = (), use_cuda: bool = True,
           timeout: datetime.timedelta | None = None, report_error: ErrorReporter | None = None,
           launcher: str = "auto") -> Any:
    """Run ``main_func(*args)`` in ``num_gpus_per_machine * num_machines`` processes (one, in this process, when
    that is 1 and no launcher set up a group). NCCL on GPUs, gloo on the CPU. ``dist_url`` "auto" picks a free
    local port (single machine only); use ``tcp://HOST:PORT`` of machine 0 for several machines.

    A failing worker of a group exits with ``report_error(error, prefix)`` (the command line's one-line report;
    None: the exception propagates). ``timeout`` (default: :func:`dist_timeout`) bounds every collective.
    """
    kind = resolve_launcher(launcher)
    timeout = timeout or dist_timeout(0, comm.default_backend(use_cuda) == "nccl")
    if kind == "torchrun":
        return _worker_in_group(main_func, "env://", int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"]),
                                int(os.environ["LOCAL_RANK"]), use_cuda, timeout, args, report_error)
    if kind == "slurm":
        task = slurm_task()
        check_gpus_per_node(task, "cuda" if use_cuda else "cpu", num_gpus_per_machine,
                            torch.cuda.device_count() if use_cuda else 0)
        return _worker_in_group(main_func, task.dist_url, task.world_size, task.rank, task.local_rank, use_cuda,
                                timeout, args, report_error)
    world_size = num_machines * num_gpus_per_machine
    if world_size <= 1:
        return main_func(*args)
    if dist_url in (None, "auto"):
        if num_machines > 1:
            raise LaunchError("--dist-url auto only works on one machine; pass tcp://<machine-0 address>:<port>")
        dist_url = f"tcp://127.0.0.1:{find_free_port()}"
    if num_machines > 1 and dist_url.startswith("file://"):
        logger.warning("file:// init on several machines needs a shared file system")
    code = _supervise(num_gpus_per_machine, (main_func, world_size, num_gpus_per_machine, machine_rank, dist_url,
                                             use_cuda, timeout, args, report_error))
    if code:
        sys.exit(code)
    return None


def _supervise(num_processes: int, worker_args: tuple) -> int:
    """Start this machine's processes, pass signals on to them, and wait: a process that dies or fails stops the
    others at once; one that stopped on a signal gives the others STOP_GRACE_S to follow. Returns the exit status
    the run should end with. No process (nor any of its data-loader workers) outlives this call."""
    context = mp.get_context("spawn")
    processes = [context.Process(target=_spawned_worker, args=(local_rank, *worker_args), daemon=False)
                 for local_rank in range(num_processes)]
    for process in processes:
        process.start()

    def forward(signum: int, frame) -> None:
        for process in processes:
            if process.exitcode is None and process.pid:
                os.kill(process.pid, signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, *STOP_SIGNALS)}
    try:
        return _wait(processes)
    finally:
        for process in processes:  # whatever is left, with its process group (its data-loader workers)
            _kill_group(process)
        for process in processes:
            process.join()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _wait(processes: list) -> int:
    running = {process.sentinel: index for index, process in enumerate(processes)}
    status, deadline = 0, None
    while running:
        for sentinel in multiprocessing.connection.wait(list(running), timeout=1.0):
            index = running.pop(sentinel)
            processes[index].join()
            code = processes[index].exitcode
            if code == 0:
                continue
            if code in STOPPED:
                status = status or code
                deadline = deadline or time.monotonic() + STOP_GRACE_S
                continue
            if code not in (1, 2):  # a crash, not an error the worker reported itself
                how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
                print(f"error: worker {index} died ({how}); the other workers were stopped", file=sys.stderr)
            return code if code > 0 else 1
        if deadline is not None and time.monotonic() > deadline:
            return status
    return status


def _kill_group(process) -> None:
    if process.pid is None:
        return
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _spawned_worker(local_rank: int, main_func, world_size: int, num_gpus_per_machine: int, machine_rank: int,
                    dist_url: str, use_cuda: bool, timeout: datetime.timedelta, args: tuple,
                    report_error: ErrorReporter | None) -> None:
    # A process group of its own, which the supervisor can stop with every data-loader worker in it; and death with
    # the supervisor, should it be killed outright.
    os.setpgrp()
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:  # the supervisor died before prctl took effect
        os._exit(1)
    rank = machine_rank * num_gpus_per_machine + local_rank
    os.environ["LOCAL_RANK"] = str(local_rank)
    _worker_in_group(main_func, dist_url, world_size, rank, local_rank, use_cuda, timeout, args, report_error)


def _worker_in_group(main_func, dist_url: str, world_size: int, rank: int, local_rank: int, use_cuda: bool,
                     timeout: datetime.timedelta, args: tuple, report_error: ErrorReporter | None) -> Any:
    # The device first (PyTorch's rule for NCCL: a process's collectives use its current device), then the group.
    if use_cuda and torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    backend = comm.default_backend(use_cuda)
    if backend == "nccl" and unsafe_nccl_error_handling():
        logger.warning(unsafe_nccl_error_handling())
    if dist_url == "env://":
        # torchrun's agent keeps the keys of an earlier attempt in its store: a restarted group would read the dead
        # processes' addresses (and fail or wait). Each attempt gets keys of its own.
        store, _, _ = next(dist.rendezvous(dist_url, rank=rank, world_size=world_size, timeout=timeout))
        store = dist.PrefixStore(f"embedmask/attempt_{restart_count()}/", store)
        dist.init_process_group(backend, store=store, world_size=world_size, rank=rank, timeout=timeout)
    else:
        dist.init_process_group(backend, init_method=dist_url, world_size=world_size, rank=rank, timeout=timeout)
    comm.init_cpu_groups(timeout)
    try:
        comm.synchronize()
        return main_func(*args)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - one line per failing process instead of a traceback
        if report_error is None:
            raise
        sys.exit(report_error(e, f"(rank {rank}) " if rank else ""))
    finally:
        comm.clear_groups()
        if dist.is_initialized():
            dist.destroy_process_group()
