"""Writing a dataset (a validated COCO instances dict and its images) in each format's usual layout: COCO
(``annotations/<split>.json`` + ``images/<split>/``), Ultralytics YOLO-seg (``data.yaml``, ``images/<split>/``,
``labels/<split>/``) and LabelMe (one JSON beside each image). What a format cannot hold is counted and reported:
YOLO and LabelMe keep polygons only (an RLE mask becomes the outlines of its parts, traced on pixel corners; holes
are lost), YOLO one polygon per instance (parts joined by zero-width bridges, as Ultralytics' loader expects), and
neither keeps crowd annotations."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from typing import Any

import cv2
import numpy as np
import pycocotools.mask as mask_util
import yaml

from adet.structures.masks import mask_to_polygons, segmentation_to_rle


def _polygons_of(annotation: dict, height: int, width: int, lost: Counter) -> list[list[float]]:
    """The instance's outlines as flat polygons (an RLE traced on pixel corners; its holes counted in ``lost``)."""
    segmentation = annotation["segmentation"]
    if isinstance(segmentation, list):
        return segmentation
    mask = mask_util.decode(segmentation_to_rle(segmentation, height, width)).astype(np.uint8)
    _, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is not None and (hierarchy[0][:, 3] >= 0).any():
        lost["masks with holes (polygons cannot hold them; filled)"] += 1
    return mask_to_polygons(mask.astype(bool))


def join_parts(polygons: list[list[float]]) -> list[float]:
    """One polygon of several: each next part is reached from the closest vertex of the joined outline and left
    from the same place (a zero-width bridge), so it fills as the union of the parts."""
    joined = np.asarray(polygons[0], dtype=np.float64).reshape(-1, 2)
    for polygon in polygons[1:]:
        part = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
        distances = ((joined[:, None, :] - part[None, :, :]) ** 2).sum(-1)
        i, j = np.unravel_index(int(distances.argmin()), distances.shape)
        around = np.concatenate([part[j:], part[:j + 1]])  # from part[j] around back to part[j]
        joined = np.concatenate([joined[:i + 1], around, joined[i:]])
    return joined.reshape(-1).tolist()


def _copy_image(source: str, folder: str, used: set[str]) -> str:
    """Copy ``source`` into ``folder`` under its own name (numbered if taken); returns the new name."""
    os.makedirs(folder, exist_ok=True)
    stem, extension = os.path.splitext(os.path.basename(source))
    name, k = stem + extension, 1
    while name in used:
        name, k = f"{stem}_{k}{extension}", k + 1
    used.add(name)
    shutil.copyfile(source, os.path.join(folder, name))
    return name


def _per_image(data: dict) -> dict[int, list[dict]]:
    found: dict[int, list[dict]] = {image["id"]: [] for image in data["images"]}
    for annotation in data["annotations"]:
        found[annotation["image_id"]].append(annotation)
    return found


def write_coco(data: dict, image_root: str, output: str, split: str) -> dict[str, Any]:
    """``annotations/<split>.json`` and ``images/<split>/`` under ``output``; everything is kept."""
    images_folder, used = os.path.join(output, "images", split), set()
    images = [dict(image, file_name=_copy_image(os.path.join(image_root, image["file_name"]), images_folder, used))
              for image in data["images"]]
    path = os.path.join(output, "annotations", f"{split}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    keys = ("id", "image_id", "category_id", "segmentation", "bbox", "area", "iscrowd")
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"images": images, "categories": data["categories"],
                   "annotations": [{k: a[k] for k in keys if k in a} for a in data["annotations"]]}, f)
    return {"written": path, "images": len(images), "instances": len(data["annotations"]), "lost": {}}


def write_yolo(data: dict, image_root: str, output: str, split: str) -> dict[str, Any]:
    """``data.yaml`` (absolute ``path``, ``train`` and ``val``: a single split is named for both), ``images/<split>/``
    and ``labels/<split>/`` (class = the category's rank by id)."""
    categories = sorted(data["categories"], key=lambda c: c["id"])
    class_of = {c["id"]: k for k, c in enumerate(categories)}
    lost: Counter = Counter()
    written = 0
    used: set[str] = set()
    for image, instances in zip(data["images"], _per_image(data).values()):
        name = _copy_image(os.path.join(image_root, image["file_name"]), os.path.join(output, "images", split), used)
        lines = []
        for annotation in instances:
            if annotation.get("iscrowd"):
                lost["crowd annotations (not in the format)"] += 1
                continue
            polygons = _polygons_of(annotation, image["height"], image["width"], lost)
            if len(polygons) > 1:
                lost["multi-part instances joined by bridges (kept)"] += 1
            polygon = np.asarray(join_parts(polygons)).reshape(-1, 2) / (image["width"], image["height"])
            lines.append(" ".join([str(class_of[annotation["category_id"]])] +
                                  [f"{v:.6f}" for v in np.clip(polygon, 0, 1).reshape(-1)]))
            written += 1
        labels = os.path.join(output, "labels", split, os.path.splitext(name)[0] + ".txt")
        os.makedirs(os.path.dirname(labels), exist_ok=True)
        with open(labels, "w", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in lines))
    yaml_path = os.path.join(output, "data.yaml")
    with open(yaml_path, "w", encoding="utf-8") as f:
        yaml.safe_dump({"path": os.path.abspath(output), "train": f"images/{split}", "val": f"images/{split}",
                        "names": {k: c["name"] for k, c in enumerate(categories)}}, f, sort_keys=False)
    return {"written": yaml_path, "images": len(data["images"]), "instances": written, "lost": dict(lost)}


def write_labelme(data: dict, image_root: str, output: str, split: str = "") -> dict[str, Any]:
    """One LabelMe JSON beside each copied image in ``output``; an instance of several parts is one ``group_id``."""
    names = {c["id"]: c["name"] for c in data["categories"]}
    lost: Counter = Counter()
    written = 0
    used: set[str] = set()
    for image, instances in zip(data["images"], _per_image(data).values()):
        name = _copy_image(os.path.join(image_root, image["file_name"]), output, used)
        shapes = []
        for number, annotation in enumerate(instances):
            if annotation.get("iscrowd"):
                lost["crowd annotations (not in the format)"] += 1
                continue
            polygons = _polygons_of(annotation, image["height"], image["width"], lost)
            group = number if len(polygons) > 1 else None
            shapes += [{"label": names[annotation["category_id"]], "points": np.asarray(p).reshape(-1, 2).tolist(),
                        "group_id": group, "shape_type": "polygon", "flags": {}} for p in polygons]
            written += 1
        record = {"version": "5.4.1", "flags": {}, "shapes": shapes, "imagePath": name, "imageData": None,
                  "imageHeight": image["height"], "imageWidth": image["width"]}
        with open(os.path.join(output, os.path.splitext(name)[0] + ".json"), "w", encoding="utf-8") as f:
            json.dump(record, f, indent=1)
    return {"written": output, "images": len(data["images"]), "instances": written, "lost": dict(lost)}


WRITERS = {"coco": write_coco, "yolo": write_yolo, "labelme": write_labelme}
