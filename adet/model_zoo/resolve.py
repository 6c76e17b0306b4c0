"""The one function that turns a config file (or packaged name), weights and ``KEY VALUE`` overrides into a
config, for the commands and the Python API alike.

Which value wins: the config file (else the config a checkpoint of ours carries, else :func:`adet.config.get_cfg`,
the released model's), then the overrides in order (a key given twice takes its last value, as in detectron2), then
the weights over any ``MODEL.WEIGHTS``.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import torch

from adet.checkpoint import checkpoint_config
from adet.config import CfgNode, get_cfg, get_config_file
from adet.data import MetadataCatalog
from adet.data.sources import register_dataset_paths

logger = logging.getLogger(__name__)


def last_value(overrides: Sequence[Any], key: str) -> Any:
    """The value of the last ``key`` in a ``[KEY, VALUE, ...]`` list (None when absent)."""
    pairs = list(zip(overrides[0::2], overrides[1::2]))
    return next((value for name, value in reversed(pairs) if name == key), None)


def resolve_config(config_file: str = "", weights: str = "", overrides: Sequence[Any] = (),
                   device: str | None = None, datasets: Sequence[str] = ()) -> CfgNode:
    """The (unfrozen) config of a command or API call; see this module's docstring for which value wins.

    Args:
        device: None keeps the config's MODEL.DEVICE; "auto" picks CUDA when available, else the CPU, unless an
            override names MODEL.DEVICE; anything else sets it.
        datasets: the names registered from ``--dataset``: when DATASETS.TRAIN's first is one of them,
            MODEL.FCOS.NUM_CLASSES follows its annotation file (unless an override sets it).
    """
    overrides = list(overrides)
    weights = weights or str(last_value(overrides, "MODEL.WEIGHTS") or "")
    cfg = get_cfg()
    if config_file:
        cfg.merge_from_file(get_config_file(config_file))
    elif weights:
        embedded = checkpoint_config(weights)
        if embedded is not None:
            cfg.merge_from_other_cfg(embedded)
    cfg.merge_from_list(overrides)
    if weights:
        cfg.MODEL.WEIGHTS = weights
    overridden = set(overrides[0::2])
    if device == "auto":
        if "MODEL.DEVICE" not in overridden:
            cfg.MODEL.DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
    elif device is not None:
        cfg.MODEL.DEVICE = device
    datasets = [*datasets, *register_dataset_paths(cfg)]  # DATASETS entries given as paths (any format)
    if cfg.DATASETS.TRAIN and cfg.DATASETS.TRAIN[0] in datasets and "MODEL.FCOS.NUM_CLASSES" not in overridden:
        classes = MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).get("thing_classes")
        if classes and len(classes) != cfg.MODEL.FCOS.NUM_CLASSES:
            logger.info("MODEL.FCOS.NUM_CLASSES set to %d, the classes of %s", len(classes), cfg.DATASETS.TRAIN[0])
            cfg.MODEL.FCOS.NUM_CLASSES = len(classes)
    return cfg
