"""COCO-format instance annotations <-> detectron2's list-of-dicts dataset format."""

from __future__ import annotations

import json
import logging
import os
from enum import IntEnum

from .catalog import DatasetCatalog, MetadataCatalog

logger = logging.getLogger(__name__)


class BoxMode(IntEnum):
    """How a dataset dict's ``bbox`` is written (detectron2's values)."""

    XYXY_ABS = 0
    XYWH_ABS = 1


def xywh_box(obj: dict) -> list[float]:
    """An annotation's ``bbox`` as [x, y, width, height], whatever its ``bbox_mode``."""
    x, y, a, b = obj["bbox"]
    if obj.get("bbox_mode", BoxMode.XYWH_ABS) == BoxMode.XYXY_ABS:
        return [x, y, a - x, b - y]
    return [x, y, a, b]


class DatasetError(ValueError):
    """A dataset file or folder that cannot be used; the message names it."""


def read_coco_json(json_file: str) -> dict:
    """A COCO instances file as a dict; DatasetError naming the file if it is missing or not one."""
    if not os.path.isfile(json_file):
        raise DatasetError(f"{json_file}: annotation file does not exist")
    try:
        with open(json_file) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{json_file}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or "images" not in data or "categories" not in data:
        raise DatasetError(f"{json_file}: not a COCO instances file (needs 'images' and 'categories')")
    return data


def load_coco_json(json_file: str, image_root: str, dataset_name: str | None = None) -> list[dict]:
    """Read a COCO instances json into dataset dicts.

    Each dict has ``file_name``, ``height``, ``width``, ``image_id`` and ``annotations``: ``bbox`` (XYWH),
    ``bbox_mode``, ``category_id`` (contiguous 0..K-1), ``segmentation`` (polygons or RLE) and ``iscrowd``.
    Polygons with fewer than 3 points are dropped, and annotations left without a valid polygon are skipped, with
    a count in the log. With ``dataset_name``, the class names and id mapping are stored in its metadata.
    """
    if not os.path.isdir(image_root):
        raise DatasetError(f"{image_root}: image folder does not exist")
    data = read_coco_json(json_file)
    categories = sorted(data["categories"], key=lambda c: c["id"])
    id_map = {c["id"]: i for i, c in enumerate(categories)}
    if dataset_name is not None:
        MetadataCatalog.get(dataset_name).set(thing_classes=[c["name"] for c in categories],
                                              thing_dataset_id_to_contiguous_id=id_map)
    annotations_per_image: dict[int, list[dict]] = {}
    for ann in data.get("annotations", []):
        annotations_per_image.setdefault(ann["image_id"], []).append(ann)

    dataset, dropped_polygons, dropped_instances, bad_category = [], 0, 0, 0
    for image in data["images"]:
        objects = []
        for ann in annotations_per_image.get(image["id"], []):
            if ann.get("category_id") not in id_map:
                bad_category += 1
                continue
            obj = {"bbox": [float(v) for v in ann["bbox"]], "bbox_mode": BoxMode.XYWH_ABS,
                   "category_id": id_map[ann["category_id"]], "iscrowd": int(ann.get("iscrowd", 0))}
            segmentation = ann.get("segmentation")
            if isinstance(segmentation, list):
                valid = [p for p in segmentation if len(p) % 2 == 0 and len(p) >= 6]
                dropped_polygons += len(segmentation) - len(valid)
                if not valid:
                    dropped_instances += 1
                    continue
                obj["segmentation"] = valid
            elif isinstance(segmentation, dict):
                obj["segmentation"] = segmentation
            objects.append(obj)
        dataset.append({"file_name": os.path.join(image_root, image["file_name"]), "height": image["height"],
                        "width": image["width"], "image_id": image["id"], "annotations": objects})
    if dropped_instances or dropped_polygons or bad_category:
        logger.warning("%s: dropped %d polygons with < 3 points, %d instances without a valid polygon and %d "
                       "annotations of unknown categories", json_file, dropped_polygons, dropped_instances,
                       bad_category)
    logger.info("Loaded %d images from %s", len(dataset), json_file)
    return dataset


def register_coco_instances(name: str, metadata: dict, json_file: str, image_root: str) -> None:
    """Register a COCO-format dataset under ``name`` (loaded lazily, on first ``DatasetCatalog.get``)."""
    DatasetCatalog.register(name, lambda: load_coco_json(json_file, image_root, name))
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, evaluator_type="coco", **metadata)


def coco_class_names(json_file: str) -> list[str]:
    """The category names of a COCO json, in contiguous-id order (sorted by COCO id)."""
    return [c["name"] for c in sorted(read_coco_json(json_file)["categories"], key=lambda c: c["id"])]
