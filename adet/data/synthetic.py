"""A small synthetic instance-segmentation dataset in COCO format: coloured shapes (several classes, real masks,
occlusion) on textured backgrounds, deterministic for a seed. Registered as ``synthetic_train`` / ``synthetic_val``
and written on first use under ``$DETECTRON2_DATASETS/synthetic``.
"""

from __future__ import annotations

import json
import logging
import math
import os

import cv2
import numpy as np
import pycocotools.mask as mask_util

from .catalog import DatasetCatalog, MetadataCatalog
from .coco import load_coco_json

logger = logging.getLogger(__name__)

CLASSES = ["circle", "square", "triangle", "star"]
SPLITS = {"synthetic_train": (800, 1), "synthetic_val": (100, 2)}  # (images, seed)
IMAGE_SIZE = (128, 160)  # (height, width)
FORMAT_VERSION = 2  # bump when the generator changes so cached files are rewritten


def _shape_polygon(kind: str, cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
    """(V, 2) polygon (V vertices) of a shape centred at (cx, cy)."""
    if kind == "circle":
        t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        return np.stack([cx + radius * np.cos(t), cy + radius * np.sin(t)], axis=1)
    if kind == "square":
        t = angle + np.arange(4) * math.pi / 2 + math.pi / 4
        return np.stack([cx + radius * np.cos(t), cy + radius * np.sin(t)], axis=1)
    if kind == "triangle":
        t = angle + np.arange(3) * 2 * math.pi / 3
        return np.stack([cx + radius * np.cos(t), cy + radius * np.sin(t)], axis=1)
    t = angle + np.arange(10) * math.pi / 5  # star: 5 points, alternating radii
    r = np.where(np.arange(10) % 2 == 0, radius, radius * 0.45)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    base = rng.integers(40, 200, size=3)
    gradient = np.linspace(-30, 30, width)[None, :, None] * rng.uniform(-1, 1, size=3)
    noise = rng.normal(0, 12, size=(height, width, 3))
    return np.clip(base + gradient + noise, 0, 255).astype(np.uint8)


def _visible_polygons(mask: np.ndarray) -> list[list[float]]:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3 and cv2.contourArea(c) > 0]


def generate_image(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, list[dict]]:
    """One BGR image and its annotations (category index, visible-part polygons, bbox)."""
    image = _background(rng, height, width)
    shapes = []
    for _ in range(int(rng.integers(1, 5))):
        kind = int(rng.integers(len(CLASSES)))
        radius = rng.uniform(10, 34)
        cx, cy = rng.uniform(radius * 0.5, width - radius * 0.5), rng.uniform(radius * 0.5, height - radius * 0.5)
        polygon = _shape_polygon(CLASSES[kind], cx, cy, radius, rng.uniform(0, 2 * math.pi))
        mask = np.zeros((height, width), np.uint8)
        cv2.fillPoly(mask, [np.round(polygon).astype(np.int32)], 1)
        color = rng.integers(0, 256, size=3)
        image[mask > 0] = np.clip(color + rng.normal(0, 10, size=(int(mask.sum()), 3)), 0, 255).astype(np.uint8)
        for earlier in shapes:  # later shapes occlude earlier ones
            earlier["mask"] &= ~mask.astype(bool)
        shapes.append({"category": kind, "mask": mask.astype(bool)})
    annotations = []
    for shape in shapes:
        if shape["mask"].sum() < 30:
            continue  # (almost) fully occluded
        polygons = _visible_polygons(shape["mask"])
        if not polygons:
            continue
        rle = mask_util.encode(np.asfortranarray(shape["mask"].astype(np.uint8)))
        x, y, w, h = mask_util.toBbox(rle).tolist()
        annotations.append({"category": shape["category"], "segmentation": polygons, "bbox": [x, y, w, h],
                            "area": float(mask_util.area(rle))})
    return image, annotations


def write_split(folder: str, name: str, num_images: int, seed: int, size: tuple[int, int] = IMAGE_SIZE) -> str:
    """Write ``folder/<name>/*.png`` and ``folder/<name>.json``, images of ``size`` (height, width); returns the
    json path."""
    rng = np.random.default_rng(seed)
    image_dir = os.path.join(folder, name)
    os.makedirs(image_dir, exist_ok=True)
    images, annotations = [], []
    height, width = size
    for image_id in range(1, num_images + 1):
        image, objects = generate_image(rng, height, width)
        file_name = f"{image_id:05d}.png"
        cv2.imwrite(os.path.join(image_dir, file_name), image)
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for obj in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": obj["category"] + 1,
                                "segmentation": obj["segmentation"], "bbox": obj["bbox"], "area": obj["area"],
                                "iscrowd": 0})
    data = {"info": {"description": f"EmbedMask synthetic shapes, seed {seed}", "version": FORMAT_VERSION},
            "images": images, "annotations": annotations,
            "categories": [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)]}
    json_file = os.path.join(folder, f"{name}.json")
    tmp = json_file + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, json_file)  # the json appears last and whole: its presence means the split is complete
    return json_file


def ensure_split(root: str, name: str) -> tuple[str, str]:
    """The (json, image folder) of a synthetic split, generated first if missing or outdated."""
    folder = os.path.join(root, "synthetic")
    json_file = os.path.join(folder, f"{name}.json")
    current = False
    if os.path.isfile(json_file):
        with open(json_file) as f:
            current = json.load(f).get("info", {}).get("version") == FORMAT_VERSION
    if not current:
        num_images, seed = SPLITS[name]
        logger.info("Writing the synthetic dataset %s (%d images) to %s", name, num_images, folder)
        write_split(folder, name, num_images, seed)
    return json_file, os.path.join(folder, name)


def register_synthetic(root_fn) -> None:
    """Register the splits; files are generated under ``root_fn()`` when a split is first loaded."""
    for name in SPLITS:
        if name in DatasetCatalog:
            continue

        def load(name: str = name) -> list[dict]:
            json_file, image_root = ensure_split(root_fn(), name)
            meta = MetadataCatalog.get(name)
            if meta.get("json_file") is None:
                meta.set(json_file=json_file, image_root=image_root)
            return load_coco_json(json_file, image_root, name)

        DatasetCatalog.register(name, load)
        MetadataCatalog.get(name).set(thing_classes=list(CLASSES), evaluator_type="coco",
                                      thing_dataset_id_to_contiguous_id={i + 1: i for i in range(len(CLASSES))})
