"""What ``model.train(...)``, ``model.val(...)`` and ``model.export(...)`` of the Python API do (Ultralytics'
pattern) on a config: datasets from ``data``, keyword overrides, a DefaultTrainer run, an evaluation, an export.

``data``: a registered dataset name (train on it; ``val`` evaluates on it), or ``{"train": ..., "val": ...}`` whose
values are registered names or ``(annotations.json, images_folder)`` pairs (registered as ``<json stem>``).
Overrides: config keys (``**{"SOLVER.BASE_LR": 0.01}``) or the short names of :data:`SHORT_NAMES`.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from adet.config import CfgNode
from adet.data import DatasetCatalog, MetadataCatalog, register_datasets_from_args
from adet.data.build import check_num_classes
from adet.data.sources import register_path
from adet.engine import DefaultTrainer, default_setup
from adet.engine.evaluate import evaluate_datasets, single_dataset_results
from adet.engine.training.hooks import Callbacks
from adet.errors import DatasetError
from adet.export import export_model

logger = logging.getLogger(__name__)

SHORT_NAMES = {"iterations": "SOLVER.MAX_ITER", "batch": "SOLVER.IMS_PER_BATCH", "lr": "SOLVER.BASE_LR",
               "workers": "DATALOADER.NUM_WORKERS", "device": "MODEL.DEVICE", "output_dir": "OUTPUT_DIR",
               "seed": "SEED", "eval_period": "TEST.EVAL_PERIOD", "checkpoint_period": "SOLVER.CHECKPOINT_PERIOD"}


def dataset_name(value: Any, split: str) -> str:
    """A registered dataset for ``value``: its name; a path (a COCO json with its images beside it, an Ultralytics
    data.yaml, whose ``split`` is used, or a LabelMe folder) registered under a name saying which; or a ``(json,
    images)`` pair registered under the json's stem."""
    if isinstance(value, (str, os.PathLike)) and os.fspath(value) not in DatasetCatalog.list():
        name = register_path(os.fspath(value), "val" if split == "val" else "train")
        if name is None:
            raise DatasetError(f"data {split}={os.fspath(value)!r}: no such registered dataset or dataset path (a "
                               "COCO .json, a data.yaml, a LabelMe folder, or (annotations.json, images_folder))")
        return name
    if isinstance(value, str):
        return value
    if isinstance(value, (tuple, list)) and len(value) == 2:
        json_file, images = map(os.fspath, value)
        name = os.path.splitext(os.path.basename(json_file))[0]
        return register_datasets_from_args([f"{name}={json_file}:{images}"], quiet=True)[0]
    raise DatasetError(f"data {split}: expected a dataset name or an (annotations.json, images_folder) pair, got "
                       f"{value!r}")


def split_data(data: Any) -> tuple[str | None, str | None]:
    """(training dataset, validation dataset) of ``data``."""
    if data is None:
        return None, None
    if isinstance(data, dict):
        unknown = set(data) - {"train", "val"}
        if unknown:
            raise DatasetError(f"data: unknown split(s) {sorted(unknown)}; use 'train' and 'val'")
        return (dataset_name(data["train"], "train") if data.get("train") is not None else None,
                dataset_name(data["val"], "val") if data.get("val") is not None else None)
    if isinstance(data, (str, os.PathLike)) and os.fspath(data).endswith((".yaml", ".yml")):
        return dataset_name(data, "train"), dataset_name(data, "val")  # a data.yaml: its train and val splits
    name = dataset_name(data, "data")
    return name, name


def with_overrides(cfg: CfgNode, overrides: dict[str, Any]) -> CfgNode:
    """A copy of ``cfg`` with ``overrides`` applied. ``iterations`` also scales SOLVER.STEPS and WARMUP_ITERS, so that
    a shorter run keeps the shape of the schedule (as Ultralytics' ``epochs`` does)."""
    cfg = cfg.clone()
    cfg.defrost()
    pairs: list[Any] = []
    for key, value in overrides.items():
        pairs += [SHORT_NAMES.get(key, key), value]
    if "iterations" in overrides and cfg.SOLVER.MAX_ITER > 0:
        scale = int(overrides["iterations"]) / cfg.SOLVER.MAX_ITER
        pairs = ["SOLVER.STEPS", tuple(int(s * scale) for s in cfg.SOLVER.STEPS),
                 "SOLVER.WARMUP_ITERS", int(cfg.SOLVER.WARMUP_ITERS * scale)] + pairs
    cfg.merge_from_list(pairs)
    return cfg


def train(cfg: CfgNode, data: Any, callbacks: dict[str, list], resume: bool, overrides: dict[str, Any]
          ) -> tuple[DefaultTrainer, CfgNode]:
    """Fine-tune (or train) ``cfg``'s model on ``data``'s training set in this process; MODEL.FCOS.NUM_CLASSES
    follows the dataset. Returns the trainer and the config of the trained weights (OUTPUT_DIR/model_final.pth)."""
    train_name, val_name = split_data(data)
    if train_name is None:
        raise DatasetError("train: data has no training set (pass a dataset name or {'train': ..., 'val': ...})")
    DatasetCatalog.get(train_name)  # loads it: the class names are known from here on
    cfg = with_overrides(cfg, {"OUTPUT_DIR": os.path.join("output", "train"), **overrides})
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (train_name,), ((val_name,) if val_name else ())
    cfg.MODEL.FCOS.NUM_CLASSES = len(MetadataCatalog.get(train_name).thing_classes)
    check_num_classes(cfg)
    cfg.freeze()
    default_setup(cfg)
    trainer = DefaultTrainer(cfg)  # claims OUTPUT_DIR; a fresh run moves an earlier one's metrics aside
    trainer.register_hooks([Callbacks(callbacks)])
    trainer.resume_or_load(resume=resume)
    trainer.train()
    trained = cfg.clone()
    trained.defrost()
    trained.MODEL.WEIGHTS = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    trained.freeze()
    return trainer, trained


def val(cfg: CfgNode, model, data: Any, overrides: dict[str, Any]) -> dict:
    """COCO results of ``model`` on ``data``'s validation set (default: the config's DATASETS.TEST), in
    detectron2's layout ({task: {metric: value}} for one dataset)."""
    _, val_name = split_data(data)
    cfg = with_overrides(cfg, {"OUTPUT_DIR": os.path.join("output", "val"), **overrides})
    if val_name is not None:
        cfg.DATASETS.TEST = (val_name,)
    return single_dataset_results(evaluate_datasets(cfg, model))


def export(cfg: CfgNode, path: str, int8: bool = False, calibration: Any = None, opset: int = 18,
           check: bool = True) -> str:
    """``cfg``'s weights exported to ``path`` (ONNX, checked in ONNX Runtime unless ``check`` is False; ``int8``
    with a ``calibration`` dataset: a registered name or an ``(annotations.json, images_folder)`` pair)."""
    export_model(cfg, os.fspath(path), opset, check=check, int8=int8,
                 calibration=dataset_name(calibration, "calibration") if int8 else "")
    return os.fspath(path)
