"""Datasets and loaders: the training loader (infinite, deterministic, resumable) and the test loader."""

from __future__ import annotations

import atexit
import logging
import multiprocessing.util  # noqa: F401 - its exit hook is registered before ours, which must run first
import os
import signal
import weakref
from typing import Sequence

import numpy as np
import torch
import torch.utils.data as torchdata

from adet.errors import ConfigError, DatasetError, ImageReadError
from adet.utils.comm import get_rank, get_world_size

from .catalog import DatasetCatalog, MetadataCatalog
from .mapper import DatasetMapper
from .samplers import InferenceSampler, TrainingBatchSampler
from .validation import load_coco

logger = logging.getLogger(__name__)


def trivial_batch_collator(batch: list) -> list:
    """Batches stay lists of dicts: images of different sizes are padded inside the model."""
    return batch


def leave_stop_signals_to_the_trainer(worker_id: int) -> None:
    """Data-loader workers ignore the stop signals (SIGTERM, SIGUSR1, SIGUSR2: a cluster's preemption, sent to every
    process of the job): the training process stops at an iteration boundary and shuts them down. torch's worker
    handler would end them at once, and the batch the stop checkpoint waits for with them."""
    for signum in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(signum, signal.SIG_IGN)


# The worker processes of our loaders, recorded by the parent as the iterator starts them: a name or mark the child
# gave itself would come too late for a worker still starting when the program exits.
_our_workers: weakref.WeakSet = weakref.WeakSet()


class DataLoader(torchdata.DataLoader):
    """torch's DataLoader whose worker processes this process ends at exit, if they are still running then."""

    def _get_iterator(self):
        iterator = super()._get_iterator()
        _our_workers.update(getattr(iterator, "_workers", ()))
        return iterator


@atexit.register
def _end_workers_left_running() -> None:
    """At exit, multiprocessing ends daemonic children with SIGTERM and joins them: a loader of ours whose iterator
    is still referenced (by a traceback, say) would keep this process from ever exiting, its workers ignoring SIGTERM.
    Only our own loaders' workers are ended: other code's children are its own business."""
    # a forked child inherits the set: only the parent may end (and ask after) the workers
    left = [worker for worker in list(_our_workers) if worker._parent_pid == os.getpid() and worker.is_alive()]
    if left:
        # torch's SIGCHLD handler would report each as a worker killed by a signal
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for worker in left:
        worker.kill()


def pin_memory(device: str) -> bool:
    """Page-locked batches when the model is on a GPU: their copy to it can then overlap the computation
    (``non_blocking`` in the model's preprocessing)."""
    return device.startswith("cuda") and torch.cuda.is_available()


def required_datasets(names: Sequence[str], key: str, purpose: str) -> tuple[str, ...]:
    """``names`` (the value of config key ``key``), which must not be empty for ``purpose``."""
    if not names:
        raise ConfigError(f"{key} is empty: nothing to {purpose}")
    return tuple(names)


def per_process_batch(cfg, world_size: int) -> int:
    """Each process's share of SOLVER.IMS_PER_BATCH, the total over all processes."""
    if cfg.SOLVER.IMS_PER_BATCH % world_size != 0:
        raise ConfigError(f"SOLVER.IMS_PER_BATCH ({cfg.SOLVER.IMS_PER_BATCH}) must be divisible by the number of "
                          f"processes ({world_size})")
    return cfg.SOLVER.IMS_PER_BATCH // world_size


def check_num_classes(cfg) -> None:
    """The first training dataset's class count, when known, is MODEL.FCOS.NUM_CLASSES."""
    if not cfg.DATASETS.TRAIN:
        return
    metadata = MetadataCatalog.get(cfg.DATASETS.TRAIN[0])
    names = metadata.get("thing_classes")
    if names is None and metadata.get("json_file") and os.path.isfile(metadata.json_file):
        names = load_coco(metadata.json_file, require_annotations=False)[0]["categories"]
    if names is not None and len(names) != cfg.MODEL.FCOS.NUM_CLASSES:
        raise ConfigError(f"DATASETS.TRAIN {cfg.DATASETS.TRAIN[0]} has {len(names)} classes but "
                          f"MODEL.FCOS.NUM_CLASSES is {cfg.MODEL.FCOS.NUM_CLASSES}; add MODEL.FCOS.NUM_CLASSES "
                          f"{len(names)}")


def dataset_classes(cfg) -> tuple[list[str] | None, list[int] | None]:
    """Class names and dataset category ids (in contiguous order) of DATASETS.TRAIN, saved in checkpoints."""
    if not cfg.DATASETS.TRAIN:
        return None, None
    check_num_classes(cfg)
    metadata = MetadataCatalog.get(cfg.DATASETS.TRAIN[0])
    names = metadata.get("thing_classes")
    id_map = metadata.get("thing_dataset_id_to_contiguous_id")
    ids = [k for k, _ in sorted(id_map.items(), key=lambda kv: kv[1])] if id_map else None
    return names, ids


def get_detection_dataset_dicts(names: list[str] | tuple[str, ...], filter_empty: bool = True) -> list[dict]:
    """The concatenated dicts of the named datasets (COCO files are validated as they are loaded), without images
    lacking a non-crowd annotation when ``filter_empty``."""
    names = required_datasets(names, "DATASETS.TRAIN", "train on")
    dicts = [d for name in names for d in DatasetCatalog.get(name)]
    classes = [MetadataCatalog.get(n).get("thing_classes") for n in names]  # set while loading
    if any(c != classes[0] for c in classes[1:]):
        raise DatasetError(f"DATASETS.TRAIN {list(names)} have different class lists")
    if filter_empty:
        before = len(dicts)
        dicts = [d for d in dicts if any(not a.get("iscrowd", 0) for a in d["annotations"])]
        if before != len(dicts):
            logger.info("Removed %d images without usable annotations; %d left", before - len(dicts), len(dicts))
    if not dicts:
        raise DatasetError(f"DATASETS.TRAIN {list(names)}: no image with annotations left to train on")
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


def build_detection_train_loader(cfg, mapper=None, *, seed: int | None = None, start_iter: int = 0
                                 ) -> torchdata.DataLoader:
    """Infinite loader of this process's share of SOLVER.IMS_PER_BATCH, from DATASETS.TRAIN, through ``mapper``
    (default: the config's DatasetMapper; it is called as ``mapper(dataset_dict, rng)``). Its order and
    augmentations follow from ``seed`` (default SEED, 0 if negative) and it begins at batch ``start_iter``; the
    trainer sets both on any loader this function built (:func:`position_train_loader`)."""
    world_size = get_world_size()
    batch_size = per_process_batch(cfg, world_size)
    seed = (cfg.SEED if cfg.SEED >= 0 else 0) if seed is None else seed
    dicts = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS)
    group_ids = [int(d["width"] > d["height"]) if cfg.DATALOADER.ASPECT_RATIO_GROUPING else 0 for d in dicts]
    sampler = TrainingBatchSampler(group_ids, batch_size, seed, get_rank(), world_size,
                                   start_iter)
    dataset = MapDataset(dicts, mapper or DatasetMapper.from_config(cfg, is_train=True), seed)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.DATALOADER.NUM_WORKERS,
                      collate_fn=trivial_batch_collator, worker_init_fn=leave_stop_signals_to_the_trainer,
                      pin_memory=pin_memory(cfg.MODEL.DEVICE))


def position_train_loader(loader, seed: int, start_iter: int) -> bool:
    """Make a loader of :func:`build_detection_train_loader` draw the run's seed and begin at ``start_iter``, so a
    resumed run sees the batches an uninterrupted one would. False for a loader built otherwise (left as it is)."""
    sampler, dataset = getattr(loader, "batch_sampler", None), getattr(loader, "dataset", None)
    if not isinstance(sampler, TrainingBatchSampler) or not isinstance(dataset, MapDataset):
        return False
    sampler.seed, sampler.start_iter, dataset.seed = seed, start_iter, seed
    return True


def build_detection_test_loader(cfg, dataset_name: str, mapper=None, num_workers: int | None = None
                                ) -> torchdata.DataLoader:
    """Loader over ``dataset_name`` with the test-time resize, batch size 1, this process's shard only."""
    dicts = DatasetCatalog.get(dataset_name)
    dataset = MapDataset(dicts, mapper or DatasetMapper.from_config(cfg, is_train=False))
    workers = cfg.DATALOADER.NUM_WORKERS if num_workers is None else num_workers
    return DataLoader(dataset, batch_size=1, sampler=InferenceSampler(len(dataset)), num_workers=workers,
                      collate_fn=trivial_batch_collator, worker_init_fn=leave_stop_signals_to_the_trainer,
                      pin_memory=pin_memory(cfg.MODEL.DEVICE))
