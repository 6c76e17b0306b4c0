"""Samplers. Training order is a pure function of (seed, iteration): resuming at iteration k regenerates the same
batches from k on, and every sample carries a key that seeds its own augmentation."""

from __future__ import annotations

from collections import defaultdict
from itertools import islice
from typing import Iterator

import torch
import torch.utils.data as torchdata

from adet.utils.comm import get_rank, get_world_size


class TrainingBatchSampler:
    """Infinite batches of ``(dataset index, sample position)`` for one process.

    One global stream, reshuffled every epoch with ``seed + epoch``, is dealt round-robin to the processes, so W
    processes with batch B/W see together exactly the images one process with batch B would. With aspect-ratio
    groups, a batch only holds images of one group (landscape or portrait). ``start_iter`` skips that many batches.
    """

    def __init__(self, group_ids: list[int], batch_size: int, seed: int, rank: int | None = None,
                 world_size: int | None = None, start_iter: int = 0):
        if not group_ids:
            raise ValueError("the training set is empty")
        self.group_ids = group_ids
        self.batch_size = batch_size
        self.seed = seed
        self.rank = get_rank() if rank is None else rank
        self.world_size = get_world_size() if world_size is None else world_size
        self.start_iter = start_iter

    def _global_stream(self) -> Iterator[tuple[int, int]]:
        position, epoch = 0, 0
        while True:
            generator = torch.Generator()
            generator.manual_seed(self.seed + epoch)
            for index in torch.randperm(len(self.group_ids), generator=generator).tolist():
                yield index, position
                position += 1
            epoch += 1

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        buckets: dict[int, list[tuple[int, int]]] = defaultdict(list)
        produced = 0
        for index, position in islice(self._global_stream(), self.rank, None, self.world_size):
            bucket = buckets[self.group_ids[index]]
            bucket.append((index, position))
            if len(bucket) == self.batch_size:
                if produced >= self.start_iter:
                    yield list(bucket)
                produced += 1
                bucket.clear()


class InferenceSampler(torchdata.Sampler):
    """Each process gets one contiguous shard of 0..size-1; shards differ in length by at most one."""

    def __init__(self, size: int, rank: int | None = None, world_size: int | None = None):
        rank = get_rank() if rank is None else rank
        world_size = get_world_size() if world_size is None else world_size
        shard, extra = divmod(size, world_size)
        begin = rank * shard + min(rank, extra)
        self.indices = range(begin, begin + shard + (1 if rank < extra else 0))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
