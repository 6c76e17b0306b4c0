"""What the commands share: the argument parser, the options every command declares the same way, and the one
function that turns ``--config-file``, ``--weights`` and ``KEY VALUE`` overrides into a config.

Which value wins: ``--config-file`` (else the config a checkpoint of ours carries, else :func:`adet.config.get_cfg`,
the released model's), then the overrides in order (a key given twice takes its last value, as in detectron2), then
``--weights`` over any ``MODEL.WEIGHTS``.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from typing import Any, Sequence

import torch

from adet.checkpoint import checkpoint_config
from adet.config import CfgNode, get_cfg
from adet.data import DatasetCatalog, MetadataCatalog, coco_class_names, register_coco_instances
from adet.engine.launch import LAUNCHERS
from adet.errors import DatasetError
from adet.model_zoo import get_config_file

logger = logging.getLogger(__name__)

CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")
OVERRIDES_HELP = ("KEY VALUE pairs (anywhere on the line) override config keys, e.g. SOLVER.IMS_PER_BATCH 2 "
                  "MODEL.WEIGHTS models/x.pth; a key given twice takes its last value, and --weights wins over "
                  "MODEL.WEIGHTS")


class ArgumentParser(argparse.ArgumentParser):
    """Options and trailing ``KEY VALUE`` overrides in any order (``... OUTPUT_DIR out --resume`` resumes)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        kwargs.setdefault("epilog", OVERRIDES_HELP)
        super().__init__(*args, **kwargs)

    def parse_args(self, args=None, namespace=None):  # noqa: D102 - argparse's
        return self.parse_intermixed_args(args, namespace)


def add_config_arguments(parser: argparse.ArgumentParser, weights: bool = True, required: bool = False) -> None:
    """``--config-file``, ``--weights`` (unless ``weights`` is False) and the trailing ``KEY VALUE`` overrides."""
    parser.add_argument("--config-file", default="", required=required, metavar="FILE",
                        help="a config file, or a packaged config such as EmbedMask/MS_R_50_1x.yaml" +
                             ("" if required else " (default: a checkpoint's own config, else the released model's)"))
    if weights:
        parser.add_argument("--weights", default="", metavar="CKPT",
                            help="the weights (MODEL.WEIGHTS; this wins over a MODEL.WEIGHTS override); a checkpoint "
                                 "of ours carries its config, so --config-file may be left out")
    parser.add_argument("opts", nargs="*", default=[], metavar="KEY VALUE", help="config overrides")


def add_dataset_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", action="append", default=[], metavar="NAME=ANNOTATIONS.json:IMAGES/",
                        help="register a COCO-format dataset (repeatable); use NAME in DATASETS.TRAIN/TEST")


def add_launch_arguments(parser: argparse.ArgumentParser) -> None:
    """detectron2's launch options: processes per machine, machines, this machine's rank, the rendezvous."""
    parser.add_argument("--num-gpus", type=int, default=1, help="processes per machine (one per GPU; CPU processes "
                                                                "with MODEL.DEVICE cpu)")
    parser.add_argument("--num-machines", type=int, default=1, help="total number of machines")
    parser.add_argument("--machine-rank", type=int, default=0, help="the rank of this machine (0 .. machines-1)")
    parser.add_argument("--dist-url", default="auto", help="tcp://HOST:PORT of machine 0; 'auto' on one machine")
    parser.add_argument("--launcher", default="auto", choices=LAUNCHERS,
                        help="spawn: start --num-gpus processes here; torchrun / slurm: join the group torchrun or "
                             "srun started (one process per GPU); auto (default): torchrun under torchrun, slurm "
                             "under srun with several tasks, else spawn")


def register_datasets_from_args(specs: list[str], quiet: bool = False) -> list[str]:
    """Register ``NAME=ANNOTATIONS.json:IMAGES/`` datasets (class names come from the json); returns the names.
    With ``quiet``, a name already registered with the same files is left as it is (workers of one launch)."""
    names = []
    for spec in specs:
        name, sep, paths = spec.partition("=")
        json_file, sep2, image_root = paths.rpartition(":")
        if not (sep and sep2 and name and json_file and image_root):
            raise DatasetError(f"--dataset {spec}: expected NAME=ANNOTATIONS.json:IMAGES_FOLDER")
        if not os.path.isfile(json_file):
            raise DatasetError(f"--dataset {name}: annotation file {json_file} does not exist")
        if not os.path.isdir(image_root):
            raise DatasetError(f"--dataset {name}: image folder {image_root} does not exist")
        if name in DatasetCatalog:
            metadata = MetadataCatalog.get(name)
            if quiet and (metadata.get("json_file"), metadata.get("image_root")) == (json_file, image_root):
                names.append(name)
                continue
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_coco_instances(name, {"thing_classes": coco_class_names(json_file)}, json_file, image_root)
        names.append(name)
    return names


def last_value(overrides: Sequence[Any], key: str) -> Any:
    """The value of the last ``key`` in a ``[KEY, VALUE, ...]`` list (None when absent)."""
    pairs = list(zip(overrides[0::2], overrides[1::2]))
    return next((value for name, value in reversed(pairs) if name == key), None)


def resolve_config(config_file: str = "", weights: str = "", overrides: Sequence[Any] = (),
                   device: str | None = None, datasets: Sequence[str] = ()) -> CfgNode:
    """The (unfrozen) config of a command or API call; see the module docstring for which value wins.

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
    if cfg.DATASETS.TRAIN and cfg.DATASETS.TRAIN[0] in datasets and "MODEL.FCOS.NUM_CLASSES" not in overridden:
        classes = MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).get("thing_classes")
        if classes and len(classes) != cfg.MODEL.FCOS.NUM_CLASSES:
            logger.info("MODEL.FCOS.NUM_CLASSES set to %d, the classes of %s", len(classes), cfg.DATASETS.TRAIN[0])
            cfg.MODEL.FCOS.NUM_CLASSES = len(classes)
    return cfg
