"""A dataset given as a path, in the format it comes in: a COCO instances json, an Ultralytics ``data.yaml``
(one of its splits) or a LabelMe folder. Each is read into a COCO instances dict and validated by the same pass
as a COCO file (:mod:`adet.data.validation`), so the loader and the evaluator see one kind of dataset."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from adet.errors import DatasetError

from .catalog import DatasetCatalog, MetadataCatalog
from .coco import coco_dataset_dicts
from .labelme import labelme_folder_to_coco
from .validation import load_coco, validate_coco
from .yolo import yolo_split_to_coco

logger = logging.getLogger(__name__)

FORMATS = ("coco", "yolo", "labelme")


def detect_format(path: str) -> str:
    """"coco" (a .json file), "yolo" (a .yaml file) or "labelme" (a folder of LabelMe JSONs)."""
    if os.path.isdir(path):
        return "labelme"
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: no such file or folder")
    if path.endswith((".yaml", ".yml")):
        return "yolo"
    if path.endswith(".json"):
        return "coco"
    raise DatasetError(f"{path}: not a dataset (expected a COCO .json, an Ultralytics data.yaml or a LabelMe "
                       "folder)")


def read_source(path: str, split: str = "train", images: str = "") -> tuple[dict[str, Any], str]:
    """(validated COCO dict, image root) of the dataset at ``path``: a COCO json (images in ``images``, default
    beside the json), the ``split`` of a data.yaml, or a LabelMe folder. Unusable entries are reported in the log
    and left out."""
    kind = detect_format(path)
    if kind == "coco":
        data, _ = load_coco(path, require_annotations=False)
        return data, images or os.path.dirname(os.path.abspath(path))
    raw = yolo_split_to_coco(path, split) if kind == "yolo" else labelme_folder_to_coco(path)
    data, report = validate_coco(raw, f"{path}" + (f" ({split})" if kind == "yolo" else ""), require_annotations=False)
    if report:
        logger.warning("%s", report.summary())
    return data, ""


def register_source(name: str, path: str, split: str = "train", images: str = "") -> str:
    """Register the dataset at ``path`` (any of :data:`FORMATS`) as ``name``; class names are set now, the dicts
    read on first use. Returns ``name``."""
    kind = detect_format(path)
    if kind == "coco":
        classes = [c["name"] for c in sorted(load_coco(path, require_annotations=False)[0]["categories"],
                                            key=lambda c: c["id"])]
    else:
        classes = [c["name"] for c in sorted(read_source(path, split, images)[0]["categories"],
                                            key=lambda c: c["id"])]

    def load() -> list[dict]:
        data, root = read_source(path, split, images)
        return coco_dataset_dicts(data, root, name, f"{path} ({kind})")

    if name in DatasetCatalog:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, load)
    metadata = {"thing_classes": classes, "evaluator_type": "coco", "source_format": kind}
    if kind == "coco":
        metadata.update(json_file=path, image_root=images or os.path.dirname(os.path.abspath(path)))
    MetadataCatalog.get(name).set(**metadata)
    return name


def write_coco_json(data: dict[str, Any], path: str) -> None:
    """A COCO instances dict to ``path`` (the fields COCO defines)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump({k: data[k] for k in ("images", "annotations", "categories")}, f)
