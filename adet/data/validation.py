"""One validation pass over a COCO instances file, shared by training, evaluation and the demo.

:func:`validate_coco` checks the structure and every image, category and annotation, and returns a cleaned copy
plus a :class:`ValidationReport`. What cannot be used at all (no images, no categories, no usable annotation when
some are needed, an unreadable file) is a one-line :class:`DatasetError`. A bad image entry is dropped with its
annotations; a bad annotation is dropped; what can be repaired without guessing is repaired and counted (a box
derived from the mask, an area computed from it, duplicate or missing annotation ids renumbered, a degenerate
polygon removed from an instance that has others). The report counts each kind of problem and keeps the first ids.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter, defaultdict
from typing import Any

import numpy as np
import pycocotools.mask as mask_util

from adet.errors import DatasetError
from adet.structures.masks import segmentation_to_rle

logger = logging.getLogger(__name__)

EXAMPLES = 5  # ids kept per kind of problem

# Kinds of problem, by what happens to the entry.
IMAGE_DROPPED = "image dropped"
ANNOTATION_DROPPED = "annotation dropped"
REPAIRED = "repaired"


class ValidationReport:
    """Counts of problems found in one annotation file, by kind, with the first few offending ids."""

    def __init__(self, source: str):
        self.source = source
        self.counts: Counter = Counter()
        self.examples: dict[tuple[str, str], list] = defaultdict(list)

    def add(self, outcome: str, kind: str, ident: Any) -> None:
        key = (outcome, kind)
        self.counts[key] += 1
        if len(self.examples[key]) < EXAMPLES:
            self.examples[key].append(ident)

    def total(self, outcome: str) -> int:
        return sum(n for (o, _), n in self.counts.items() if o == outcome)

    @property
    def images_dropped(self) -> int:
        return self.total(IMAGE_DROPPED)

    @property
    def annotations_dropped(self) -> int:
        """Annotations dropped for their own problems (those of dropped images are counted with the image)."""
        return self.total(ANNOTATION_DROPPED)

    def __bool__(self) -> bool:
        return bool(self.counts)

    def summary(self) -> str:
        """One line per outcome, e.g. "x.json: 3 annotations dropped: 2 with a non-finite bbox (ids 5, 9); 1 ...";
        repairs are counted per repair (an annotation may need two)."""
        lines = []
        for outcome in (IMAGE_DROPPED, ANNOTATION_DROPPED, REPAIRED):
            kinds = [(k, n) for (o, k), n in self.counts.items() if o == outcome]
            if not kinds:
                continue
            total = sum(n for _, n in kinds)
            what = {IMAGE_DROPPED: "image{} dropped", ANNOTATION_DROPPED: "annotation{} dropped",
                    REPAIRED: "repair{}"}[outcome].format("s" if total != 1 else "")
            parts = [f"{n} {kind} (ids {', '.join(map(str, self.examples[(outcome, kind)]))}"
                     f"{', ...' if n > EXAMPLES else ''})" for kind, n in kinds]
            lines.append(f"{self.source}: {total} {what}: {'; '.join(parts)}")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {"source": self.source, "images_dropped": self.images_dropped,
                "annotations_dropped": self.annotations_dropped, "annotations_repaired": self.total(REPAIRED),
                "problems": [{"outcome": o, "kind": k, "count": n, "first_ids": self.examples[(o, k)]}
                             for (o, k), n in self.counts.items()]}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _as_int(value: Any) -> int | None:
    """``value`` as an int if it is an integral number (JSON may write 480.0), else None."""
    if isinstance(value, bool) or not _is_number(value) or not math.isfinite(value) or value != int(value):
        return None
    return int(value)


def _polygon_area(flat: list[float]) -> float:
    xy = np.asarray(flat, dtype=np.float64).reshape(-1, 2)
    return 0.5 * abs(float(np.dot(xy[:, 0], np.roll(xy[:, 1], 1)) - np.dot(xy[:, 1], np.roll(xy[:, 0], 1))))


def rle_counts(counts: str) -> list[int] | None:
    """The run lengths of a compressed COCO RLE string (pycocotools' rleFrString), or None if it is malformed.
    Checked here because pycocotools decodes malformed strings without bounds checks."""
    runs: list[int] = []
    position = 0
    while position < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(counts):
                return None
            code = ord(counts[position]) - 48
            if not 0 <= code < 64:
                return None
            value |= (code & 0x1F) << (5 * shift)
            more = bool(code & 0x20)
            position += 1
            shift += 1
            if not more and code & 0x10:
                value |= -1 << (5 * shift)
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def _check_rle(segmentation: dict, height: int, width: int) -> str | None:
    """None if ``segmentation`` is a usable RLE of an image of (height, width), else what is wrong."""
    size, counts = segmentation.get("size"), segmentation.get("counts")
    size = [_as_int(v) for v in size] if isinstance(size, (list, tuple)) and len(size) == 2 else None
    if size is None or None in size:
        return "malformed RLE"
    if size != [height, width]:
        return "RLE whose size differs from the image"
    if isinstance(counts, list):
        runs = [_as_int(v) for v in counts]
    elif isinstance(counts, (str, bytes)):
        runs = rle_counts(counts.decode("ascii", "replace") if isinstance(counts, bytes) else counts)
    else:
        return "malformed RLE"
    if runs is None or any(r is None or r < 0 for r in runs) or sum(runs) != height * width:
        return "malformed RLE"
    return None


def _clean_annotation(ann: dict, image: dict, report: ValidationReport, ident: Any) -> dict | None:
    """A checked copy of ``ann`` (polygons filtered, box and area filled in), or None to drop it."""
    height, width = image["height"], image["width"]
    ann = dict(ann)
    crowd = ann.get("iscrowd", 0)
    if crowd not in (0, 1):  # False and True compare equal to 0 and 1
        report.add(ANNOTATION_DROPPED, "with iscrowd neither 0 nor 1", ident)
        return None
    ann["iscrowd"] = int(crowd)
    segmentation = ann.get("segmentation")
    if segmentation is None:
        report.add(ANNOTATION_DROPPED, "without segmentation", ident)
        return None
    if isinstance(segmentation, list):
        polygons = [[float(v) for v in polygon] for polygon in segmentation
                    if isinstance(polygon, list) and len(polygon) >= 6 and len(polygon) % 2 == 0
                    and all(_is_number(v) and math.isfinite(v) for v in polygon) and _polygon_area(polygon) > 0]
        if not polygons:
            report.add(ANNOTATION_DROPPED, "without a valid polygon (>= 3 points, non-zero area)", ident)
            return None
        if len(polygons) < len(segmentation):
            report.add(REPAIRED, "invalid polygons removed from an instance that has valid ones", ident)
        ann["segmentation"] = polygons
    elif isinstance(segmentation, dict):
        problem = _check_rle(segmentation, height, width)
        if problem:
            report.add(ANNOTATION_DROPPED, problem, ident)
            return None
    else:
        report.add(ANNOTATION_DROPPED, "with a segmentation that is neither polygons nor RLE", ident)
        return None

    rle = None
    bbox = ann.get("bbox")
    if bbox is None:
        rle = segmentation_to_rle(ann["segmentation"], height, width)
        bbox = mask_util.toBbox(rle).tolist()
        report.add(REPAIRED, "without bbox, its box derived from the mask", ident)
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        report.add(ANNOTATION_DROPPED, "with a bbox that is not 4 numbers", ident)
        return None
    x, y, w, h = (float(v) for v in bbox)
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        report.add(ANNOTATION_DROPPED, "with a non-finite bbox", ident)
        return None
    if w <= 0 or h <= 0:
        report.add(ANNOTATION_DROPPED, "with a bbox of zero or negative size", ident)
        return None
    if x >= width or y >= height or x + w <= 0 or y + h <= 0:
        report.add(ANNOTATION_DROPPED, "with a bbox outside the image", ident)
        return None
    ann["bbox"] = [x, y, w, h]
    area = ann.get("area")
    if not _is_number(area) or not math.isfinite(area) or area < 0:
        rle = rle if rle is not None else segmentation_to_rle(ann["segmentation"], height, width)
        ann["area"] = float(mask_util.area(rle))
        report.add(REPAIRED, "without a valid area, computed from the mask", ident)
    return ann


def _clean_images(data: dict, report: ValidationReport) -> dict[int, dict]:
    images = data["images"]
    ids = Counter(_as_int(i.get("id")) for i in images if isinstance(i, dict))
    valid = {}
    for position, image in enumerate(images):
        if not isinstance(image, dict):
            report.add(IMAGE_DROPPED, "entry that is not an object", f"#{position}")
            continue
        image_id = _as_int(image.get("id"))
        ident = image.get("id", f"#{position}")
        if image_id is None:
            report.add(IMAGE_DROPPED, "without an integer id", ident)
        elif ids[image_id] > 1:
            report.add(IMAGE_DROPPED, "sharing its id with another image (annotations ambiguous)", ident)
        elif not isinstance(image.get("file_name"), str) or not image["file_name"]:
            report.add(IMAGE_DROPPED, "without a file_name", ident)
        elif (_as_int(image.get("height")) or 0) <= 0 or (_as_int(image.get("width")) or 0) <= 0:
            report.add(IMAGE_DROPPED, "without a positive integer height and width", ident)
        else:
            valid[image_id] = dict(image, id=image_id, height=_as_int(image["height"]),
                                   width=_as_int(image["width"]))
    return valid


def _clean_categories(data: dict, source: str, report: ValidationReport) -> list[dict]:
    categories = data.get("categories")
    if not isinstance(categories, list) or not categories:
        raise DatasetError(f"{source}: no categories (a COCO instances file needs a non-empty 'categories' list)")
    cleaned, seen = [], set()
    for position, category in enumerate(categories):
        category_id = _as_int(category.get("id")) if isinstance(category, dict) else None
        if category_id is None:
            raise DatasetError(f"{source}: category #{position} has no integer id")
        if category_id in seen:
            raise DatasetError(f"{source}: category id {category_id} appears twice")
        seen.add(category_id)
        name = category.get("name")
        if not isinstance(name, str) or not name:
            report.add(REPAIRED, "category without a name, named by its id", category_id)
            name = f"class {category_id}"
        cleaned.append(dict(category, id=category_id, name=name))
    return cleaned


def validate_coco(data: Any, source: str, require_annotations: bool = True) -> tuple[dict, ValidationReport]:
    """The cleaned copy of a COCO instances dict and the report of what was dropped or repaired.

    Args:
        data: the parsed json.
        source: its file name, for messages.
        require_annotations: training and evaluation need at least one usable annotation; a file that only lists
            images (the demo's ground truth for ids) does not.
    """
    report = ValidationReport(source)
    if not isinstance(data, dict):
        raise DatasetError(f"{source}: not a COCO instances file (the top level is a {type(data).__name__}, not an "
                           "object with 'images', 'annotations' and 'categories')")
    if not isinstance(data.get("images"), list):
        raise DatasetError(f"{source}: not a COCO instances file (no 'images' list)")
    if not data["images"]:
        raise DatasetError(f"{source}: lists no images")
    categories = _clean_categories(data, source, report)
    category_ids = {c["id"] for c in categories}
    images = _clean_images(data, report)
    if not images:
        raise DatasetError(f"{source}: no usable image entry ({report.summary().split(': ', 1)[1]})")
    annotations = data.get("annotations")
    if annotations is not None and not isinstance(annotations, list):
        raise DatasetError(f"{source}: 'annotations' is a {type(annotations).__name__}, not a list")
    all_image_ids = Counter(_as_int(i.get("id")) for i in data["images"] if isinstance(i, dict))
    cleaned, used_ids = [], set()
    annotation_ids = Counter(_as_int(a.get("id")) for a in annotations or [] if isinstance(a, dict))
    next_id = max([i for i in annotation_ids if i is not None] or [0]) + 1
    for position, ann in enumerate(annotations or []):
        if not isinstance(ann, dict):
            report.add(ANNOTATION_DROPPED, "entry that is not an object", f"#{position}")
            continue
        ann_id = _as_int(ann.get("id"))
        ident = ann.get("id", f"#{position}")
        image_id = _as_int(ann.get("image_id"))
        if image_id not in images:
            report.add(ANNOTATION_DROPPED, "of a dropped image" if image_id in all_image_ids else
                       "of an image id that is not in 'images'", ident)
            continue
        if _as_int(ann.get("category_id")) not in category_ids:
            report.add(ANNOTATION_DROPPED, "of a category id that is not in 'categories'", ident)
            continue
        ann = _clean_annotation(ann, images[image_id], report, ident)
        if ann is None:
            continue
        ann["image_id"], ann["category_id"] = image_id, _as_int(ann["category_id"])
        if ann_id is None or (annotation_ids[ann_id] > 1 and ann_id in used_ids):
            report.add(REPAIRED, "with a missing or duplicate id, renumbered", ident)
            ann_id, next_id = next_id, next_id + 1
        ann["id"] = ann_id
        used_ids.add(ann_id)
        cleaned.append(ann)
    clean = {key: value for key, value in data.items() if key not in ("images", "annotations", "categories")}
    clean.update(images=list(images.values()), annotations=cleaned, categories=categories,
                 has_annotations=annotations is not None)
    if require_annotations:
        check_has_annotations(clean, report)
    return clean, report


def check_has_annotations(clean: dict, report: ValidationReport) -> None:
    """DatasetError unless ``clean`` (from :func:`validate_coco`) has a usable non-crowd annotation."""
    if not clean["has_annotations"]:
        raise DatasetError(f"{report.source}: has no 'annotations' (an image-info file cannot be trained or "
                           "evaluated on)")
    if not any(not a["iscrowd"] for a in clean["annotations"]):
        dropped = f" ({report.annotations_dropped} dropped: see the log)" if report.annotations_dropped else ""
        raise DatasetError(f"{report.source}: no usable annotation{dropped}")


_cache: dict[tuple, tuple[dict, ValidationReport]] = {}
CACHE_MAX_BYTES = 64 * 2**20  # files up to this size stay parsed (COCO val: 25 MB); COCO train (450 MB) is re-read


def load_coco(json_file: str, require_annotations: bool = True) -> tuple[dict, ValidationReport]:
    """Read and validate a COCO instances file (training, evaluation and the demo all see the same cleaned data);
    the report is logged when the file is read. Small files are read once per process. The result is shared:
    treat it as read-only."""
    if not os.path.isfile(json_file):
        raise DatasetError(f"{json_file}: annotation file does not exist")
    stat = os.stat(json_file)
    key = (os.path.abspath(json_file), stat.st_mtime_ns, stat.st_size)
    if key in _cache:
        clean, report = _cache[key]
    else:
        try:
            with open(json_file, encoding="utf-8") as f:
                data = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DatasetError(f"{json_file}: not valid JSON ({e})") from None
        except OSError as e:
            raise DatasetError(f"{json_file}: cannot be read ({e.strerror or e})") from None
        clean, report = validate_coco(data, json_file, require_annotations=False)
        if report:
            logger.warning("%s", report.summary())
        if stat.st_size <= CACHE_MAX_BYTES:
            _cache[key] = (clean, report)
    if require_annotations:
        check_has_annotations(clean, report)
    return clean, report
