"""Every collective of the package, routed by device; each also works when no process group exists (one process).

NCCL, the default group of a GPU run, takes CUDA tensors only: a CPU tensor (a seed, a stop flag, a pickled
object) on it raises ``No backend type associated with device type cpu``. So here a CUDA tensor goes to the default
group and everything host-side to a gloo group on the CPU, and no other module calls ``torch.distributed``'s
collectives (a structure test checks it). The CPU side has two gloo groups, created by the launcher in the same order
on every process (or on first use, for a script that set up its own default group): one for small host-side
collectives with the run's timeout, and one for waiting on evaluations (gathering predictions, the barrier while
rank 0 computes the COCO statistics) with a much longer one, so that a long evaluation does not trip the collective
timeout while a dead process still ends the run.

``EMBEDMASK_DIST_BACKEND`` (read by the launcher on every launch path) chooses the default group's backend:
``cuda:gloo`` is gloo registered for CUDA tensors only, NCCL's device rule, so that a CPU run (the tests) fails on a
CPU tensor sent to the default group exactly as a GPU run would; on a GPU it lets several processes share one GPU,
which NCCL refuses.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist

BACKEND_ENV = "EMBEDMASK_DIST_BACKEND"
BACKENDS = ("nccl", "gloo", "cuda:gloo")
# How long processes wait for rank 0's evaluation at the most: COCO val with test-time augmentation on a slow file
# system takes well under this.
EVALUATION_TIMEOUT = datetime.timedelta(hours=4)

_GROUPS: dict[str, object] = {}
_LOCAL_REDUCTIONS: list[bool] = []  # a stack: inside process_local_losses()


def default_backend(use_cuda: bool) -> str:
    """The default group's backend: EMBEDMASK_DIST_BACKEND when set, else NCCL on GPUs and gloo on the CPU."""
    requested = os.environ.get(BACKEND_ENV, "")
    if requested:
        if requested not in BACKENDS:
            raise ValueError(f"{BACKEND_ENV}={requested}: choose one of {', '.join(BACKENDS)}")
        return requested
    return "nccl" if use_cuda and torch.cuda.is_available() else "gloo"


def init_cpu_groups(timeout: datetime.timedelta) -> None:
    """Create the two CPU-side groups (every process of the main group must call this, in the same order)."""
    _GROUPS["default"] = dist.group.WORLD
    _GROUPS["cpu"] = dist.new_group(backend="gloo", timeout=timeout)
    _GROUPS["evaluation"] = dist.new_group(backend="gloo", timeout=max(timeout, EVALUATION_TIMEOUT))


def _cpu_group(name: str = "cpu"):
    """A gloo group for host-side collectives; created here, by every process at the same collective, when the
    default group was set up by someone else (a script's own init_process_group)."""
    if _GROUPS.get("default") is not dist.group.WORLD:  # none yet, or made for an earlier default group
        _GROUPS.clear()
    if name not in _GROUPS:
        init_cpu_groups(datetime.timedelta(minutes=30))
    return _GROUPS[name]


def clear_groups() -> None:
    _GROUPS.clear()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main_process() -> bool:
    return get_rank() == 0


def group_for(device: torch.device | str):
    """The process group for tensors on ``device`` (and for a model there, in DDP): the default group for CUDA,
    the CPU gloo group otherwise."""
    return None if torch.device(device).type == "cuda" else _cpu_group()


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """``tensor`` reduced in place over all processes ("sum" or "max"), on the group of its device."""
    if get_world_size() > 1:
        reduce_op = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op]
        dist.all_reduce(tensor, op=reduce_op, group=group_for(tensor.device))
    return tensor


def broadcast(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """``tensor`` of process ``src``, in place on every process."""
    if get_world_size() > 1:
        dist.broadcast(tensor, src=src, group=group_for(tensor.device))
    return tensor


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm statistics) in every process's ``module``. Training keeps them per process (DDP's
    broadcast_buffers=False, as the official training), so before an evaluation shared out over processes each one
    takes those of the weights that are saved."""
    if get_world_size() > 1:
        for buffer in module.buffers():
            broadcast(buffer, src=0)


def synchronize() -> None:
    """Every process waits for the others (on the CPU: a barrier needs no device and makes no stream wait)."""
    if get_world_size() > 1:
        dist.barrier(group=_cpu_group())


def wait_for_evaluation() -> None:
    """Every process waits here until rank 0 has finished evaluating, however long that takes (up to
    :data:`EVALUATION_TIMEOUT`), instead of in the next training collective, which would time out."""
    if get_world_size() > 1:
        dist.barrier(group=_cpu_group("evaluation"))


@contextlib.contextmanager
def process_local_losses() -> Iterator[None]:
    """Inside the block, :func:`reduce_mean` is this process's value: a loss computed on one process's own images
    (a validation share, which differs in length between processes) makes no collective."""
    _LOCAL_REDUCTIONS.append(True)
    try:
        yield
    finally:
        _LOCAL_REDUCTIONS.pop()


def reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of ``tensor`` over all processes (the tensor itself with one process or inside
    :func:`process_local_losses`)."""
    world_size = get_world_size()
    if world_size < 2 or _LOCAL_REDUCTIONS:
        return tensor
    return all_reduce(tensor.clone()) / world_size


def all_gather(data: object) -> list:
    """Every process's picklable ``data``, in rank order."""
    world_size = get_world_size()
    if world_size < 2:
        return [data]
    gathered: list = [None] * world_size
    # On the CPU group: NCCL would copy every pickled payload to the GPU, and processes that finished their share
    # may wait long for the slowest.
    dist.all_gather_object(gathered, data, group=_cpu_group("evaluation"))
    return gathered
