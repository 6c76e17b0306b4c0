"""Data loaders: the test loader (one image per batch, the dataset sharded over processes)."""

from __future__ import annotations

import torch.utils.data as torchdata

from adet.utils.comm import get_rank, get_world_size

from .catalog import DatasetCatalog
from .mapper import DatasetMapper


def trivial_batch_collator(batch: list) -> list:
    """Batches stay lists of dicts: images of different sizes are padded inside the model."""
    return batch


class MapDataset(torchdata.Dataset):
    def __init__(self, dicts: list[dict], mapper):
        self.dicts = dicts
        self.mapper = mapper

    def __len__(self) -> int:
        return len(self.dicts)

    def __getitem__(self, index: int) -> dict:
        return self.mapper(self.dicts[index])


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


def build_detection_test_loader(cfg, dataset_name: str, mapper=None, num_workers: int | None = None
                                ) -> torchdata.DataLoader:
    """Loader over ``dataset_name`` with the test-time resize, batch size 1, this process's shard only."""
    dicts = DatasetCatalog.get(dataset_name)
    dataset = MapDataset(dicts, mapper or DatasetMapper.from_config(cfg, is_train=False))
    workers = cfg.DATALOADER.NUM_WORKERS if num_workers is None else num_workers
    return torchdata.DataLoader(dataset, batch_size=1, sampler=InferenceSampler(len(dataset)), num_workers=workers,
                                collate_fn=trivial_batch_collator)
