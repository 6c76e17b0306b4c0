"""A dataset given as a path, in the format it comes in: a COCO instances json, an Ultralytics ``data.yaml``
(one of its splits) or a LabelMe folder. Each is read into a COCO instances dict and validated by the same pass
as a COCO file (:mod:`adet.data.validation`), so the loader and the evaluator see one kind of dataset."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import pycocotools.mask as mask_util

from adet.errors import DatasetError
from adet.structures.masks import segmentation_to_rle

from .catalog import DatasetCatalog, MetadataCatalog
from .coco import coco_class_names, coco_dataset_dicts
from .image_io import image_id_from_name, image_size
from .labelme import labelme_files, labelme_folder_to_coco
from .validation import load_coco, validate_coco
from .yolo import IMAGE_EXTENSIONS, SPLITS, yolo_split_to_coco

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
    if kind == "coco":  # read (and validated) on first use; the class names now
        classes = coco_class_names(path)

        def load() -> list[dict]:
            data, root = read_source(path, split, images)
            return coco_dataset_dicts(data, root, name, path)
    else:  # YOLO and LabelMe: read once, now (their class names need the files anyway)
        data, root = read_source(path, split, images)
        classes = [c["name"] for c in sorted(data["categories"], key=lambda c: c["id"])]

        def load() -> list[dict]:
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


def predictions_to_coco(predictions_json: str, source: str, images: str = "", split: str = "train",
                        threshold: float = 0.5) -> tuple[dict[str, Any], str]:
    """A dataset of pseudo-labels: the detections of ``predictions_json`` (COCO results, as ``embedmask predict
    --json`` writes them) scoring at least ``threshold``, on the images of ``source``: a dataset (any format; its
    categories are kept, its annotations replaced) or a folder of images (categories from the detections'
    ``category_name``). Detections find their image by ``file_name`` when they carry one, else by ``image_id``."""
    try:
        with open(predictions_json, encoding="utf-8") as f:
            predictions = json.load(f)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"--from-predictions {predictions_json}: not a readable JSON file ({e})") from None
    if not isinstance(predictions, list) or not all(isinstance(p, dict) and "segmentation" in p for p in predictions):
        raise DatasetError(f"--from-predictions {predictions_json}: not a list of COCO results with masks")
    if os.path.isdir(source) and not labelme_files(source):  # a folder of images
        files = sorted(f for f in os.listdir(source) if f.lower().endswith(IMAGE_EXTENSIONS))
        sized = [(f, image_size(os.path.join(source, f))) for f in files]
        data = {"images": [{"id": k + 1, "file_name": f, "width": s[0], "height": s[1]}
                           for k, (f, s) in enumerate(sized) if s is not None],
                "categories": [{"id": i, "name": n} for i, n in sorted(
                    {(p["category_id"], p.get("category_name") or f"class {p['category_id']}") for p in predictions})]}
        root = source
        by_id = {image_id_from_name(image["file_name"]): image["id"] for image in data["images"]}
    else:
        data, root = read_source(source, split, images)
        by_id = {image["id"]: image["id"] for image in data["images"]}
    by_file = {os.path.basename(image["file_name"]): image["id"] for image in data["images"]}
    confident = [p for p in predictions if p.get("score", 0) >= threshold]
    kept = [p for p in confident if mask_util.area(segmentation_to_rle(p["segmentation"], *p["segmentation"]["size"]))]
    if len(kept) < len(confident):
        logger.warning("--from-predictions %s: %d detection(s) with an empty mask left out", predictions_json,
                       len(confident) - len(kept))
    annotations = []
    for p in kept:
        image_id = by_file.get(os.path.basename(p["file_name"])) if p.get("file_name") else by_id.get(p["image_id"])
        if image_id is not None:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": p["category_id"],
                                "segmentation": p["segmentation"], "bbox": p.get("bbox"), "iscrowd": 0})
    if len(annotations) < len(kept):
        logger.warning("--from-predictions %s: %d detection(s) of images not in %s left out", predictions_json,
                       len(kept) - len(annotations), source)
    clean, report = validate_coco(dict(data, annotations=annotations), predictions_json, require_annotations=False)
    if report:
        logger.warning("%s", report.summary())
    logger.info("%d of %d detections score at least %s", len(annotations), len(predictions), threshold)
    return clean, root


def path_and_split(entry: str) -> tuple[str, str] | None:
    """(path, split) of a dataset named by its path (``data.yaml:val``, ``data.yaml``, ``ann.json``, a LabelMe
    folder), or None when ``entry`` is not one. The split is "" unless given."""
    path, sep, split = entry.rpartition(":")
    if sep and split in SPLITS and os.path.exists(path):
        return path, split
    return (entry, "") if os.path.exists(entry) else None


def register_path_name(name: str, default_split: str = "train") -> bool:
    """Register ``name`` if it is a dataset's path (see :func:`path_and_split`); True when it now is registered."""
    found = path_and_split(name)
    if found is None:
        return False
    path, split = found
    register_source(name, path, split or default_split)
    return True


def register_path(entry: str, default_split: str) -> str | None:
    """The registered name of the dataset at path ``entry`` (registered now if needed): a data.yaml is named with
    its split (``data.yaml:val``; ``default_split`` unless ``entry`` names one), other paths by themselves. None
    when ``entry`` is no dataset path."""
    found = path_and_split(entry)
    if found is None:
        return None
    path, split = found
    name = f"{path}:{split or default_split}" if detect_format(path) == "yolo" else entry
    if name not in DatasetCatalog:
        register_source(name, path, split or default_split)
    return name


def register_dataset_paths(cfg) -> list[str]:
    """Datasets given by path in DATASETS.TRAIN and DATASETS.TEST registered under names that say what they are: a
    data.yaml becomes ``data.yaml:train`` in TRAIN and ``data.yaml:val`` in TEST (unless a split is named), other
    paths keep their path as name. ``cfg`` is changed in place; returns the names registered from paths."""
    registered = []
    frozen = cfg.is_frozen()
    cfg.defrost()
    for key, default_split in (("TRAIN", "train"), ("TEST", "val")):
        entries = []
        for entry in cfg.DATASETS[key]:
            name = None if entry in DatasetCatalog else register_path(entry, default_split)
            if name is not None:
                registered.append(name)
            entries.append(name or entry)
        cfg.DATASETS[key] = tuple(entries)
    if frozen:
        cfg.freeze()
    return registered


DatasetCatalog.path_registrar = register_path_name
