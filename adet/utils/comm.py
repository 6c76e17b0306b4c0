"""Small torch.distributed helpers that also work when no process group exists (one process).

Besides the main group (NCCL on GPUs), a run has two gloo groups on the CPU (created by the launcher, in the same
order on every process): one for small host-side collectives (the per-iteration stop vote) with the run's timeout,
and one for waiting on evaluations (gathering predictions, the barrier while rank 0 computes the COCO statistics)
with a much longer one, so that a long evaluation does not trip the collective timeout while a dead process still
ends the run.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

_GROUPS: dict[str, object] = {}
# How long processes wait for rank 0's evaluation at the most: COCO val with test-time augmentation on a slow file
# system takes well under this.
EVALUATION_TIMEOUT = datetime.timedelta(hours=4)


def init_cpu_groups(timeout: datetime.timedelta) -> None:
    """Create the two CPU-side groups (every process of the main group must call this, in the same order)."""
    _GROUPS["cpu"] = dist.new_group(backend="gloo", timeout=timeout)
    _GROUPS["evaluation"] = dist.new_group(backend="gloo", timeout=max(timeout, EVALUATION_TIMEOUT))


def cpu_group():
    """The gloo group for small host-side collectives (None: the default group)."""
    return _GROUPS.get("cpu")


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


def synchronize() -> None:
    if get_world_size() > 1:
        dist.barrier()


def wait_for_evaluation() -> None:
    """Every process waits here until rank 0 has finished evaluating, however long that takes (up to
    :data:`EVALUATION_TIMEOUT`), instead of in the next training collective, which would time out."""
    if get_world_size() > 1:
        dist.barrier(group=_GROUPS.get("evaluation"))


def reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of ``tensor`` over all processes (the tensor itself with one process)."""
    world_size = get_world_size()
    if world_size < 2:
        return tensor
    tensor = tensor.clone()
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor / world_size


def all_gather(data: object) -> list:
    """Every process's picklable ``data``, in rank order."""
    world_size = get_world_size()
    if world_size < 2:
        return [data]
    gathered: list = [None] * world_size
    # On the CPU group: NCCL would copy every pickled payload to the GPU, and processes that finished their share
    # may wait long for the slowest.
    dist.all_gather_object(gathered, data, group=_GROUPS.get("evaluation"))
    return gathered
