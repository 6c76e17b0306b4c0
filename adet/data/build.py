"""Datasets and loaders: the training loader (infinite, deterministic, resumable) and the test loader."""

from __future__ import annotations

import logging
import math

import numpy as np
import torch.utils.data as torchdata

from adet.utils.comm import get_rank, get_world_size

from .catalog import DatasetCatalog, MetadataCatalog
from .coco import xywh_box
from .image_io import ImageReadError
from .mapper import DatasetMapper
from .samplers import InferenceSampler, TrainingBatchSampler

logger = logging.getLogger(__name__)


def trivial_batch_collator(batch: list) -> list:
    """Batches stay lists of dicts: images of different sizes are padded inside the model."""
    return batch


def _polygon_area(flat: list[float]) -> float:
    xy = np.asarray(flat, dtype=np.float64).reshape(-1, 2)
    return 0.5 * abs(float(np.dot(xy[:, 0], np.roll(xy[:, 1], 1)) - np.dot(xy[:, 1], np.roll(xy[:, 0], 1))))


def clean_annotations(record: dict, counts: dict[str, int]) -> dict:
    """Drop annotations no model can learn from: zero-area or non-finite boxes, boxes entirely outside the image,
    and polygons of zero area (an instance left without polygons goes too). ``counts`` tallies the reasons."""
    kept = []
    for obj in record.get("annotations", []):
        x, y, w, h = xywh_box(obj)
        if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
            counts["zero-area or invalid boxes"] += 1
            continue
        if x >= record["width"] or y >= record["height"] or x + w <= 0 or y + h <= 0:
            counts["boxes outside the image"] += 1
            continue
        segmentation = obj.get("segmentation")
        if isinstance(segmentation, list):
            polygons = [p for p in segmentation if _polygon_area(p) > 0]
            if len(polygons) < len(segmentation):
                counts["degenerate polygons"] += len(segmentation) - len(polygons)
            if not polygons:
                counts["instances without a valid polygon"] += 1
                continue
            obj = dict(obj, segmentation=polygons)
        kept.append(obj)
    return dict(record, annotations=kept)


def get_detection_dataset_dicts(names: list[str] | tuple[str, ...], filter_empty: bool = True) -> list[dict]:
    """The concatenated, cleaned dicts of the named datasets (without images lacking a non-crowd annotation when
    ``filter_empty``), with what was dropped summarised in the log."""
    if not names:
        raise ValueError("DATASETS.TRAIN is empty: nothing to train on")
    dicts = [d for name in names for d in DatasetCatalog.get(name)]
    classes = [MetadataCatalog.get(n).get("thing_classes") for n in names]  # set while loading
    if any(c != classes[0] for c in classes[1:]):
        raise ValueError(f"DATASETS.TRAIN {list(names)} have different class lists")
    counts: dict[str, int] = {k: 0 for k in ("zero-area or invalid boxes", "boxes outside the image",
                                             "degenerate polygons", "instances without a valid polygon")}
    dicts = [clean_annotations(d, counts) for d in dicts]
    if any(counts.values()):
        logger.warning("Dropped bad annotations: %s", ", ".join(f"{v} {k}" for k, v in counts.items() if v))
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
        if isinstance(item, tuple):
            index, position = item
            rng = np.random.default_rng([self.seed, position])
            for _ in range(5):
                try:
                    return self.mapper(self.dicts[index], rng)
                except ImageReadError as e:
                    logger.warning("Skipping an unreadable training image: %s", e)
                    index = int(rng.integers(len(self.dicts)))
            raise ImageReadError("5 unreadable training images in a row; check the dataset")
        return self.mapper(self.dicts[item])


def build_detection_train_loader(cfg, seed: int, start_iter: int = 0) -> torchdata.DataLoader:
    """Infinite loader of this process's share of SOLVER.IMS_PER_BATCH, from DATASETS.TRAIN."""
    if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
        raise ValueError(f"DATALOADER.SAMPLER_TRAIN: only 'TrainingSampler' is supported, got "
                         f"'{cfg.DATALOADER.SAMPLER_TRAIN}'")
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
