"""Ultralytics YOLO segmentation datasets (``data.yaml`` + one label txt per image) read into COCO instances dicts,
so that they go through the same validation, loader and evaluator as a COCO file.

``data.yaml`` holds ``names`` (a list, or a dict {class id: name}), the splits ``train``/``val``/``test`` (each a
folder of images, a txt file listing image paths, or a list of either) and an optional ``path`` that the splits
are relative to (the yaml's folder without it; a relative one as Ultralytics resolves it, see
:func:`read_data_yaml`). An image's
labels are at the same path with its last ``images`` folder replaced by ``labels`` and a ``.txt`` extension; each
line is ``class x1 y1 x2 y2 ...``, polygon vertices normalised to [0, 1] by the image's width and height (a line of
4 values is a box ``cx cy w h``, as in detection datasets)."""

from __future__ import annotations

import logging
import os
from typing import Any

import yaml

from adet.errors import DatasetError

from .image_io import image_size

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
SPLITS = ("train", "val", "test")


def read_data_yaml(path: str) -> dict[str, Any]:
    """``path``'s yaml with ``names`` as a list (index = class id) and ``root``: the folder splits are relative to."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise DatasetError(f"{path}: not a readable YAML file ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict) or "names" not in data:
        raise DatasetError(f"{path}: not an Ultralytics data.yaml (no 'names')")
    names = data["names"]
    if isinstance(names, dict):
        if sorted(names) != list(range(len(names))):
            raise DatasetError(f"{path}: 'names' keys must be the class ids 0..{len(names) - 1}")
        names = [names[k] for k in range(len(names))]
    if not isinstance(names, list) or not names or not all(isinstance(n, (str, int)) for n in names):
        raise DatasetError(f"{path}: 'names' must be a non-empty list or dict of class names")
    folder = os.path.dirname(os.path.abspath(path))
    root = str(data.get("path") or "")
    if not root:
        root = folder  # no path: the splits are relative to the yaml (Roboflow's exports)
    elif not os.path.isabs(root):
        # Ultralytics takes a relative path from the working directory when it exists there (else from its
        # datasets folder, a setting of its own: here, the yaml's folder).
        root = os.path.abspath(root) if os.path.exists(root) else os.path.normpath(os.path.join(folder, root))
    return dict(data, names=[str(n) for n in names], root=root)


def split_images(data: dict[str, Any], split: str, source: str) -> list[str]:
    """The image paths of ``split``, in order (a folder is listed sorted, recursively)."""
    entries = data.get(split)
    if not entries:
        raise DatasetError(f"{source}: no '{split}' split (it has {', '.join(s for s in SPLITS if data.get(s))})")
    images = []
    for entry in entries if isinstance(entries, list) else [entries]:
        path = entry if os.path.isabs(entry) else os.path.normpath(os.path.join(data["root"], entry))
        if not os.path.exists(path) and entry.startswith("../"):  # as Ultralytics: Roboflow's "../train/images"
            path = os.path.normpath(os.path.join(data["root"], entry[3:]))
        if os.path.isdir(path):
            images += sorted(os.path.join(folder, name) for folder, _, names in os.walk(path) for name in names
                             if name.lower().endswith(IMAGE_EXTENSIONS))
        elif os.path.isfile(path) and path.endswith(".txt"):
            with open(path, encoding="utf-8") as f:
                listed = [line.strip() for line in f if line.strip()]
            images += [listed_path(p, os.path.dirname(path)) for p in listed]
        else:
            raise DatasetError(f"{source}: '{split}' entry {entry}: no such folder or .txt list (looked at {path})")
    if not images:
        raise DatasetError(f"{source}: the '{split}' split has no images")
    return images


def listed_path(line: str, folder: str) -> str:
    """An image path listed in a split's txt file, as Ultralytics reads it: ``./x`` from the file's ``folder``,
    other relative paths from the working directory (here: from ``folder`` when not found there)."""
    if line.startswith("./"):
        return os.path.normpath(os.path.join(folder, line[2:]))
    if os.path.isabs(line) or os.path.exists(line):
        return os.path.abspath(line)
    return os.path.normpath(os.path.join(folder, line))


def label_path(image: str) -> str:
    """Ultralytics' rule: the last ``/images/`` of the path becomes ``/labels/``, the extension ``.txt``."""
    marker = f"{os.sep}images{os.sep}"
    head, sep, tail = image.rpartition(marker)
    base = head + f"{os.sep}labels{os.sep}" + tail if sep else image
    return os.path.splitext(base)[0] + ".txt"


def parse_label_line(line: str, num_classes: int, width: int, height: int) -> tuple[int, list[float]] | str:
    """(class id, polygon in pixels) of one label line, or what is wrong with it."""
    values = line.split()
    try:
        class_id, coordinates = int(values[0]), [float(v) for v in values[1:]]
    except ValueError:
        return "not numbers"
    if not 0 <= class_id < num_classes:
        return f"class id {class_id} not in names (0..{num_classes - 1})"
    if len(coordinates) == 4:  # a detection box: cx cy w h
        cx, cy, w, h = coordinates
        coordinates = [cx - w / 2, cy - h / 2, cx + w / 2, cy - h / 2, cx + w / 2, cy + h / 2, cx - w / 2, cy + h / 2]
    if len(coordinates) < 6 or len(coordinates) % 2:
        return f"{len(coordinates)} coordinates (a polygon needs an even number, at least 6)"
    if not all(0.0 <= v <= 1.0 for v in coordinates):
        return "coordinates outside [0, 1] (they are normalised by the image size)"
    return class_id, [v * (width if k % 2 == 0 else height) for k, v in enumerate(coordinates)]


def yolo_split_to_coco(data_yaml: str, split: str) -> dict[str, Any]:
    """The ``split`` of an Ultralytics dataset as a COCO instances dict (absolute ``file_name``s, category ids =
    class ids, one annotation per label line). Unusable lines and images are left out with a warning naming the
    file and line and the count of each."""
    data = read_data_yaml(data_yaml)
    names = data["names"]
    images, annotations, problems = [], [], []
    for image_id, path in enumerate(split_images(data, split, data_yaml), start=1):
        size = image_size(path)
        if size is None:
            problems.append(f"{path}: missing or unreadable image, left out")
            continue
        width, height = size
        images.append({"id": image_id, "file_name": path, "width": width, "height": height})
        labels = label_path(path)
        if not os.path.isfile(labels):
            continue  # an image without objects (Ultralytics' background image)
        with open(labels, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                parsed = parse_label_line(line, len(names), width, height)
                if isinstance(parsed, str):
                    problems.append(f"{labels}:{number}: {parsed}, skipped")
                    continue
                class_id, polygon = parsed
                xs, ys = polygon[0::2], polygon[1::2]
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": class_id,
                                    "segmentation": [polygon], "iscrowd": 0,
                                    "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]})
    if problems:
        logger.warning("%s (%s): %d label line(s) or image(s) skipped: %s%s", data_yaml, split, len(problems),
                       "; ".join(problems[:5]), "; ..." if len(problems) > 5 else "")
    return {"images": images, "annotations": annotations,
            "categories": [{"id": k, "name": name} for k, name in enumerate(names)], "skipped": problems}
