"""LabelMe annotations (one JSON per image) read into a COCO instances dict, so that they go through the same
validation, loader and evaluator as a COCO file.

Each JSON has ``shapes`` (``label``, ``points``, ``shape_type`` polygon / rectangle / mask, ``group_id``), the image
as ``imagePath`` (relative to the JSON) and/or ``imageData`` (base64), and ``imageHeight``/``imageWidth``. Shapes
with the same label and ``group_id`` are one instance (several polygons, e.g. an object cut in two by an occluder);
a shape without ``group_id`` is an instance of its own. Class names are the labels, sorted."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image

from adet.errors import DatasetError

logger = logging.getLogger(__name__)


def labelme_files(folder: str) -> list[str]:
    """The LabelMe JSON files in ``folder`` (recursively), sorted."""
    found = sorted(os.path.join(root, name) for root, _, names in os.walk(folder) for name in names
                   if name.endswith(".json"))
    return [path for path in found if _is_labelme(path)]


def _is_labelme(path: str) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            head = f.read(4096)
    except OSError:
        return False
    return '"shapes"' in head


def _image_file(record: dict, json_path: str, cache: str) -> str | None:
    """The image's path: ``imagePath`` beside the JSON when it exists, else ``imageData`` decoded into ``cache``."""
    if record.get("imagePath"):
        path = os.path.normpath(os.path.join(os.path.dirname(json_path), record["imagePath"]))
        if os.path.isfile(path):
            return path
    if record.get("imageData"):
        data = base64.b64decode(record["imageData"])
        os.makedirs(cache, exist_ok=True)
        path = os.path.join(cache, hashlib.sha1(data).hexdigest()[:16] + ".png")
        if not os.path.isfile(path):
            Image.open(io.BytesIO(data)).save(path)
        return path
    return None


def _shape_segmentation(shape: dict, height: int, width: int) -> list[list[float]] | dict | str:
    """A shape as COCO polygons (or an RLE for a mask shape), or what is wrong with it."""
    kind = shape.get("shape_type") or "polygon"
    points = shape.get("points") or []
    if kind == "mask":
        if not shape.get("mask") or len(points) != 2:
            return "a mask shape without its mask or its 2 corner points"
        crop = np.asarray(Image.open(io.BytesIO(base64.b64decode(shape["mask"])))).astype(bool)
        if crop.ndim == 3:
            crop = crop.any(axis=2)
        full = np.zeros((height, width), dtype=np.uint8)
        left, top = (int(round(v)) for v in points[0])
        part = crop[: max(0, height - top), : max(0, width - left)]
        full[top:top + part.shape[0], left:left + part.shape[1]] = part
        rle = mask_util.encode(np.asfortranarray(full))
        rle["counts"] = rle["counts"].decode("ascii")
        return rle
    if kind == "rectangle":
        if len(points) != 2:
            return "a rectangle without its 2 corner points"
        (x0, y0), (x1, y1) = points
        x0, x1, y0, y1 = min(x0, x1), max(x0, x1), min(y0, y1), max(y0, y1)
        return [[x0, y0, x1, y0, x1, y1, x0, y1]]
    if kind != "polygon":
        return f"a {kind} shape (instances are polygons, rectangles or masks)"
    if len(points) < 3:
        return f"a polygon of {len(points)} point(s)"
    return [[float(v) for point in points for v in point]]


def labelme_folder_to_coco(folder: str, cache: str | None = None) -> dict[str, Any]:
    """The LabelMe JSONs under ``folder`` as a COCO instances dict (absolute ``file_name``s, category ids 0..K-1 in
    label order). Images embedded as ``imageData`` are written once to ``cache`` (default
    ``FOLDER/.embedmask_images``). Unusable shapes and images are left out with a warning naming the file and
    shape and the count of each."""
    files = labelme_files(folder)
    if not files:
        raise DatasetError(f"{folder}: no LabelMe JSON files (with 'shapes') in it")
    cache = cache or os.path.join(folder, ".embedmask_images")
    records, problems = [], []
    for path in files:
        try:
            with open(path, encoding="utf-8") as f:
                records.append((path, json.load(f)))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            problems.append(f"{path}: not readable JSON ({e}), left out")
    labels = sorted({str(s.get("label")) for _, r in records for s in r.get("shapes") or [] if s.get("label")})
    category = {label: k for k, label in enumerate(labels)}
    images, annotations = [], []
    for path, record in records:
        image = _image_file(record, path, cache)
        height, width = record.get("imageHeight"), record.get("imageWidth")
        if image is None or not height or not width:
            problems.append(f"{path}: no image (imagePath missing, no imageData) or no imageHeight/imageWidth, "
                            "left out")
            continue
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": image, "height": int(height), "width": int(width)})
        instances: dict[tuple, list] = {}
        for number, shape in enumerate(record.get("shapes") or []):
            segmentation = _shape_segmentation(shape, int(height), int(width)) if shape.get("label") else "no label"
            if isinstance(segmentation, str):
                problems.append(f"{path}: shape {number}: {segmentation}, skipped")
                continue
            group = shape.get("group_id")
            key = (str(shape["label"]), group) if group is not None else (str(shape["label"]), None, number)
            instances.setdefault(key, []).append(segmentation)
        for key, parts in instances.items():
            rles = [p for p in parts if isinstance(p, dict)]
            polygons = [polygon for p in parts if isinstance(p, list) for polygon in p]
            if rles and polygons:  # a mask and polygons in one group: one mask of their union
                rles.append(mask_util.merge(mask_util.frPyObjects(polygons, int(height), int(width))))
            segmentation = polygons if not rles else _merged(rles)
            box = mask_util.toBbox(segmentation).tolist() if isinstance(segmentation, dict) else _polygons_box(
                polygons)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category[key[0]],
                                "segmentation": segmentation, "iscrowd": 0, "bbox": box})
    if problems:
        logger.warning("%s: %d LabelMe shape(s) or file(s) skipped: %s%s", folder, len(problems),
                       "; ".join(problems[:5]), "; ..." if len(problems) > 5 else "")
    if not labels:
        raise DatasetError(f"{folder}: the LabelMe files have no labelled shapes")
    return {"images": images, "annotations": annotations,
            "categories": [{"id": k, "name": label} for k, label in enumerate(labels)], "skipped": problems}


def _merged(rles: list[dict]) -> dict:
    rles = [dict(r, counts=r["counts"].encode("ascii")) if isinstance(r["counts"], str) else r for r in rles]
    merged = mask_util.merge(rles) if len(rles) > 1 else rles[0]
    return {"size": list(merged["size"]), "counts": merged["counts"].decode("ascii")
            if isinstance(merged["counts"], bytes) else merged["counts"]}


def _polygons_box(polygons: list[list[float]]) -> list[float]:
    xs = [v for p in polygons for v in p[0::2]]
    ys = [v for p in polygons for v in p[1::2]]
    return [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
