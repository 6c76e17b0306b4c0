"""Datasets and loaders: the training loader (infinite, deterministic, resumable) and the test loader."""

from __future__ import annotations

import logging

import numpy as np
import torch.utils.data as torchdata

from adet.utils.comm import get_rank, get_world_size

from .catalog import DatasetCatalog, MetadataCatalog
from .image_io import ImageReadError
from .mapper import DatasetMapper
from .samplers import InferenceSampler, TrainingBatchSampler

logger = logging.getLogger(__name__)


def trivial_batch_collator(batch: list) -> list:
    """Batches stay lists of dicts: images of different sizes are padded inside the model."""
    return batch


def get_detection_dataset_dicts(names: list[str] | tuple[str, ...], filter_empty: bool = True) -> list[dict]:
    """The concatenated dicts of the named datasets (COCO files are validated as they are loaded), without images
    lacking a non-crowd annotation when ``filter_empty``."""
    if not names:
        raise ValueError("DATASETS.TRAIN is empty: nothing to train on")
    dicts = [d for name in names for d in DatasetCatalog.get(name)]
    classes = [MetadataCatalog.get(n).get("thing_classes") for n in names]  # set while loading
    if any(c != classes[0] for c in classes[1:]):
        raise ValueError(f"DATASETS.TRAIN {list(names)} have different class lists")
    if filter_empty:
        before = len(dicts)
        dicts = [d for d in dicts if any(not a.get("iscrowd", 0) for a in d["annotations"])]
        if before != len(dicts):
            logger.info("Removed %d images without usable annotations; %d left", before - len(dicts), len(dicts))
    if not dicts:
        raise ValueError(f"DATASETS.TRAIN {list(names)}: no image with annotations left to train on")
    return dicts


class MapDataset(torchdata.Dataset):
    """dicts[i] -> mapper output. Training items are (index, position) pairs: the position and the seed give the
    sample its own augmentation RNG, so results do not depend on workers or resumption."""

    def __init__(self, dicts: list[dict], mapper: DatasetMapper, seed: int | None = None):
        self.dicts = dicts
        self.mapper = mapper
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dicts)

    def __getitem__(self, item) -> dict:
        """Training: an unusable image (unreadable, or not of its annotated size) is replaced by another, with a
        warning. Test: it becomes ``{"skipped": reason, "image_id", "file_name"}``, which inference leaves out and
        evaluation excludes."""
        if isinstance(item, tuple):
            index, position = item
            rng = np.random.default_rng([self.seed, position])
            for _ in range(5):
                try:
                    return self.mapper(self.dicts[index], rng)
                except ImageReadError as e:
                    logger.warning("Skipping a training image: %s", e)
                    index = int(rng.integers(len(self.dicts)))
            raise ImageReadError("5 unusable training images in a row (see the warnings above); check the dataset")
        record = self.dicts[item]
        try:
            return self.mapper(record)
        except ImageReadError as e:
            logger.warning("Leaving out a test image: %s", e)
            return {"skipped": str(e), "image_id": record.get("image_id"), "file_name": record.get("file_name")}


def build_detection_train_loader(cfg, seed: int, start_iter: int = 0) -> torchdata.DataLoader:
    """Infinite loader of this process's share of SOLVER.IMS_PER_BATCH, from DATASETS.TRAIN."""
    world_size = get_world_size()
    if cfg.SOLVER.IMS_PER_BATCH % world_size != 0:
        raise ValueError(f"SOLVER.IMS_PER_BATCH ({cfg.SOLVER.IMS_PER_BATCH}) must be divisible by the number of "
                         f"processes ({world_size})")
    dicts = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS)
    group_ids = [int(d["width"] > d["height"]) if cfg.DATALOADER.ASPECT_RATIO_GROUPING else 0 for d in dicts]
    sampler = TrainingBatchSampler(group_ids, cfg.SOLVER.IMS_PER_BATCH // world_size, seed, get_rank(), world_size,
                                   start_iter)
    dataset = MapDataset(dicts, DatasetMapper.from_config(cfg, is_train=True), seed)
    return torchdata.DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.DATALOADER.NUM_WORKERS,
                                collate_fn=trivial_batch_collator, persistent_workers=cfg.DATALOADER.NUM_WORKERS > 0)


def build_detection_test_loader(cfg, dataset_name: str, mapper=None, num_workers: int | None = None
                                ) -> torchdata.DataLoader:
    """Loader over ``dataset_name`` with the test-time resize, batch size 1, this process's shard only."""
    dicts = DatasetCatalog.get(dataset_name)
    dataset = MapDataset(dicts, mapper or DatasetMapper.from_config(cfg, is_train=False))
    workers = cfg.DATALOADER.NUM_WORKERS if num_workers is None else num_workers
    return torchdata.DataLoader(dataset, batch_size=1, sampler=InferenceSampler(len(dataset)), num_workers=workers,
                                collate_fn=trivial_batch_collator)
