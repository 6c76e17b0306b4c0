"""Detections as Label Studio regions: polygons in percent of the image, or brush strokes in Label Studio's RLE.

Label Studio's brush RLE (its front end's ``rle-pack`` format, not COCO's) packs the image's RGBA bytes, row-major,
as a bit stream: 32 bits for the number of values, 5 bits for the word size - 1 (8), four 4-bit run-length field
sizes - 1 (3, 4, 8 and 16 bits), then blocks. A block is 1 bit (1: one value repeated, 0: literal values), 2 bits
choosing a field size, that many bits for the block's length - 1, and the value(s) in words. The mask is its alpha
(and colour) bytes, 255 inside and 0 outside; the stream is padded with zero bits to whole bytes.
"""

from __future__ import annotations

import uuid

import numpy as np

from adet.api import Prediction

from .label_config import RegionTarget

RUN_FIELD_BITS = (3, 4, 8, 16)  # the four run-length field sizes this encoder declares (Label Studio's defaults)
WORD_BITS = 8


def brush_rle(mask: np.ndarray) -> list[int]:
    """Label Studio's brush RLE (a list of byte values) of an (H, W) bool mask, as RGBA 255/0 bytes."""
    flat = np.ascontiguousarray(mask, dtype=bool).reshape(-1)
    # Pixel runs of equal values; every pixel is 4 bytes (RGBA) of the same value.
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate([[0], change])
    lengths = np.diff(np.concatenate([starts, [flat.size]])) * 4
    values = np.where(flat[starts], 255, 0) if flat.size else np.zeros(0, np.int64)
    fields = [f"{flat.size * 4:032b}", f"{WORD_BITS - 1:05b}", *(f"{bits - 1:04b}" for bits in RUN_FIELD_BITS)]
    longest = 1 << RUN_FIELD_BITS[-1]
    for length, value in zip(lengths.tolist(), values.tolist()):
        word = f"{value:08b}"
        while length > 0:
            block = min(length, longest)
            size = next(k for k, bits in enumerate(RUN_FIELD_BITS) if block <= 1 << bits)
            fields.append(f"1{size:02b}{block - 1:0{RUN_FIELD_BITS[size]}b}{word}")
            length -= block
    bits = "".join(fields)
    bits += "0" * (-len(bits) % 8)
    return list(int(bits, 2).to_bytes(len(bits) // 8, "big"))


def largest_polygon(polygons: list[list[float]]) -> list[float]:
    """The outline of largest area (shoelace) among a detection's flat [x0, y0, x1, y1, ...] outlines."""
    def area(flat: list[float]) -> float:
        x, y = np.asarray(flat[0::2]), np.asarray(flat[1::2])
        return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
    return max(polygons, key=area)


def task_regions(prediction: Prediction, target: RegionTarget, min_score: float) -> tuple[list[dict], list[str]]:
    """(the regions of the detections scoring at least ``min_score`` whose class the project has a label for,
    the class names left out for want of a label)."""
    height, width = prediction.instances.image_size
    keep = [k for k, score in enumerate(prediction.scores.tolist()) if score >= min_score]
    names = prediction.class_names
    polygons = prediction.polygons if target.region_type == "polygonlabels" else None
    crops = prediction.local_masks.numpy_crops() if target.region_type == "brushlabels" else None
    regions, left_out = [], []
    for k in keep:
        label = target.label(names[k])
        if label is None:
            left_out.append(names[k])
            continue
        if polygons is not None:
            if not polygons[k]:
                continue
            outline = largest_polygon(polygons[k])
            value = {"points": [[x * 100.0 / width, y * 100.0 / height] for x, y in zip(outline[0::2],
                                                                                       outline[1::2])],
                     "closed": True}
        else:
            crop, top, left = crops[k]
            if not crop.any():
                continue
            mask = np.zeros((height, width), bool)
            mask[top:top + crop.shape[0], left:left + crop.shape[1]] = crop
            value = {"format": "rle", "rle": brush_rle(mask)}
        value[target.region_type] = [label]
        regions.append({"id": uuid.uuid4().hex[:10], "from_name": target.from_name, "to_name": target.to_name,
                        "type": target.region_type, "original_width": width, "original_height": height,
                        "image_rotation": 0, "value": value, "score": float(prediction.scores[k])})
    return regions, left_out
