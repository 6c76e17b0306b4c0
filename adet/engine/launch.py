"""Start ``main_func`` in one process per GPU (or per CPU worker), on one or several machines, or join a process
group that ``torchrun`` set up."""

from __future__ import annotations

import datetime
import logging
import os
import socket
import sys
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from adet.errors import LaunchError
from adet.utils import comm

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = datetime.timedelta(minutes=30)


def find_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launched_by_torchrun() -> bool:
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"))


def check_devices(num_gpus_per_machine: int, device: str) -> None:
    """Asking for more CUDA processes than GPUs is an error (with a CPU alternative in the message)."""
    if not device.startswith("cuda") or num_gpus_per_machine <= 1:
        return
    available = torch.cuda.device_count()
    if num_gpus_per_machine > available:
        have = "none" if available == 0 else f"only {available}"
        raise LaunchError(f"--num-gpus {num_gpus_per_machine} asks for {num_gpus_per_machine} GPUs but this machine "
                          f"has {have}; lower --num-gpus, or add MODEL.DEVICE cpu to run {num_gpus_per_machine} "
                          "processes on the CPU (gloo)")


# How a worker reports a failure: (error, prefix such as "(rank 1) ") -> exit status. Picklable (a module-level
# function) so spawned workers receive it.
ErrorReporter = Callable[[BaseException, str], int]


def launch(main_func: Callable[..., Any], num_gpus_per_machine: int, num_machines: int = 1, machine_rank: int = 0,
           dist_url: str | None = None, args: tuple = (), use_cuda: bool = True,
           timeout: datetime.timedelta = DEFAULT_TIMEOUT, report_error: ErrorReporter | None = None) -> Any:
    """Run ``main_func(*args)`` in ``num_gpus_per_machine * num_machines`` processes (one, in this process, when
    that is 1 and not under torchrun). NCCL on GPUs, gloo on the CPU. ``dist_url`` "auto" picks a free local port
    (single machine only); use ``tcp://HOST:PORT`` of machine 0 for several machines.

    A failing worker of a group exits with ``report_error(error, prefix)`` (the command line's one-line report;
    None: the exception propagates). If a worker dies, the others are stopped (same machine) or fail at their next
    collective after ``timeout``.
    """
    if launched_by_torchrun():
        return _worker_in_group(main_func, "env://", int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"]),
                                int(os.environ["LOCAL_RANK"]), use_cuda, timeout, args, report_error)
    world_size = num_machines * num_gpus_per_machine
    if world_size <= 1:
        return main_func(*args)
    if dist_url in (None, "auto"):
        if num_machines > 1:
            raise LaunchError("--dist-url auto only works on one machine; pass tcp://<machine-0 address>:<port>")
        dist_url = f"tcp://127.0.0.1:{find_free_port()}"
    if num_machines > 1 and dist_url.startswith("file://"):
        logger.warning("file:// init on several machines needs a shared file system")
    try:
        mp.start_processes(_spawned_worker, nprocs=num_gpus_per_machine, start_method="spawn",
                           args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, use_cuda,
                                 timeout, args, report_error))
    except mp.ProcessExitedException as e:
        if e.exit_code not in (1, 2, 130):  # the worker already printed its one-line error
            how = f"signal {e.signal_name}" if e.signal_name else f"exit code {e.exit_code}"
            print(f"error: worker {e.error_index} died ({how}); the other workers were stopped", file=sys.stderr)
        sys.exit(e.exit_code if e.exit_code and e.exit_code > 0 else 1)


def _spawned_worker(local_rank: int, main_func, world_size: int, num_gpus_per_machine: int, machine_rank: int,
                    dist_url: str, use_cuda: bool, timeout: datetime.timedelta, args: tuple,
                    report_error: ErrorReporter | None) -> None:
    rank = machine_rank * num_gpus_per_machine + local_rank
    os.environ["LOCAL_RANK"] = str(local_rank)
    _worker_in_group(main_func, dist_url, world_size, rank, local_rank, use_cuda, timeout, args, report_error)


def _worker_in_group(main_func, dist_url: str, world_size: int, rank: int, local_rank: int, use_cuda: bool,
                     timeout: datetime.timedelta, args: tuple, report_error: ErrorReporter | None) -> Any:
    use_nccl = use_cuda and torch.cuda.is_available()
    if use_nccl:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if use_nccl else "gloo", init_method=dist_url, world_size=world_size, rank=rank,
                            timeout=timeout)
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
        if dist.is_initialized():
            dist.destroy_process_group()
