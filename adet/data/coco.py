"""COCO-format instance annotations <-> detectron2's list-of-dicts dataset format."""

from __future__ import annotations

import logging
import os

from adet.errors import DatasetError
from adet.structures import BoxMode

from .catalog import DatasetCatalog, MetadataCatalog
from .validation import load_coco

logger = logging.getLogger(__name__)


def read_coco_json(json_file: str, require_annotations: bool = False) -> dict:
    """A COCO instances file, validated and cleaned (:mod:`adet.data.validation`); read-only."""
    return load_coco(json_file, require_annotations)[0]


def load_coco_json(json_file: str, image_root: str, dataset_name: str | None = None) -> list[dict]:
    """Read a COCO instances json into dataset dicts, through the shared validation pass (bad entries dropped or
    repaired, with a report in the log).

    Each dict has ``file_name``, ``height``, ``width``, ``image_id`` and ``annotations``: ``bbox`` (XYWH),
    ``bbox_mode``, ``category_id`` (contiguous 0..K-1), ``segmentation`` (polygons or RLE) and ``iscrowd``.
    With ``dataset_name``, the class names and id mapping are stored in its metadata.
    """
    if not os.path.isdir(image_root):
        raise DatasetError(f"{image_root}: image folder does not exist")
    data, _ = load_coco(json_file, require_annotations=False)  # an image-info file (test-dev) is inference input
    return coco_dataset_dicts(data, image_root, dataset_name, json_file)


def coco_dataset_dicts(data: dict, image_root: str, dataset_name: str | None, source: str) -> list[dict]:
    """Dataset dicts of a validated COCO dict (:func:`adet.data.validation.validate_coco`), whatever format it was
    read from; ``file_name``s are joined to ``image_root`` (absolute ones stay as they are)."""
    categories = sorted(data["categories"], key=lambda c: c["id"])
    id_map = {c["id"]: i for i, c in enumerate(categories)}
    if dataset_name is not None:
        MetadataCatalog.get(dataset_name).set(thing_classes=[c["name"] for c in categories],
                                              thing_dataset_id_to_contiguous_id=id_map)
    annotations_per_image: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        obj = {"bbox": list(ann["bbox"]), "bbox_mode": BoxMode.XYWH_ABS, "category_id": id_map[ann["category_id"]],
               "iscrowd": ann["iscrowd"], "segmentation": ann["segmentation"], "id": ann["id"]}
        annotations_per_image.setdefault(ann["image_id"], []).append(obj)
    dataset = [{"file_name": os.path.join(image_root, image["file_name"]), "height": image["height"],
                "width": image["width"], "image_id": image["id"], "annotations": annotations_per_image.get(
                    image["id"], [])} for image in data["images"]]
    logger.info("Loaded %d images and %d annotations from %s", len(dataset), len(data["annotations"]), source)
    return dataset


def register_coco_instances(name: str, metadata: dict, json_file: str, image_root: str) -> None:
    """Register a COCO-format dataset under ``name`` (loaded lazily, on first ``DatasetCatalog.get``)."""
    DatasetCatalog.register(name, lambda: load_coco_json(json_file, image_root, name))
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, evaluator_type="coco", **metadata)


def coco_class_names(json_file: str) -> list[str]:
    """The category names of a COCO json, in contiguous-id order (sorted by COCO id)."""
    return [c["name"] for c in sorted(read_coco_json(json_file)["categories"], key=lambda c: c["id"])]
