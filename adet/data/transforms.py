"""Geometric transforms of an image and its annotations, with detectron2's exact arithmetic (spec section 2)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image


def shortest_edge_size(height: int, width: int, short_edge: int, max_size: int) -> tuple[int, int]:
    """(new_h, new_w): the short side becomes ``short_edge`` unless the long side would exceed ``max_size``; each
    side is rounded half up, ``int(x + 0.5)``, as detectron2 does."""
    scale = short_edge * 1.0 / min(height, width)
    if height < width:
        new_h, new_w = short_edge * 1.0, scale * width
    else:
        new_h, new_w = scale * height, short_edge * 1.0
    if max(new_h, new_w) > max_size:
        scale = max_size * 1.0 / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


class GeometricTransform:
    """Boxes and polygons follow from ``apply_coords`` (a (V, 2) array of x, y points)."""

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def apply_box(self, boxes: np.ndarray) -> np.ndarray:
        """(N, 4) XYXY boxes -> the axis-aligned boxes around their transformed corners."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        corners = boxes[:, [0, 1, 2, 1, 0, 3, 2, 3]].reshape(-1, 2)
        corners = self.apply_coords(corners).reshape(-1, 4, 2)
        return np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1)

    def apply_polygons(self, polygons: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [self.apply_coords(np.asarray(p).reshape(-1, 2)).reshape(-1) for p in polygons]


class ResizeTransform(GeometricTransform):
    """Resize from (h, w) to (new_h, new_w). uint8 images go through PIL's bilinear filter (anti-aliased when
    shrinking), which is what the official models saw."""

    def __init__(self, h: int, w: int, new_h: int, new_w: int):
        self.h, self.w, self.new_h, self.new_w = h, w, new_h, new_w

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        if image.shape[:2] != (self.h, self.w):
            raise ValueError(f"ResizeTransform made for {(self.h, self.w)} got an image of {image.shape[:2]}")
        if image.dtype != np.uint8:
            raise ValueError(f"ResizeTransform expects a uint8 image, got {image.dtype}")
        if image.ndim == 3 and image.shape[2] == 1:
            resized = Image.fromarray(image[:, :, 0], mode="L").resize((self.new_w, self.new_h), Image.BILINEAR)
            return np.asarray(resized)[:, :, None]
        return np.asarray(Image.fromarray(image).resize((self.new_w, self.new_h), Image.BILINEAR))

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        """(V, 2) x, y points."""
        coords = np.asarray(coords, dtype=np.float64).copy()
        coords[:, 0] *= self.new_w * 1.0 / self.w
        coords[:, 1] *= self.new_h * 1.0 / self.h
        return coords

    def apply_segmentation(self, mask: np.ndarray) -> np.ndarray:
        """A (h, w) label or 0/1 mask, resized with nearest neighbour."""
        return np.asarray(Image.fromarray(mask).resize((self.new_w, self.new_h), Image.NEAREST))


class HFlipTransform(GeometricTransform):
    """Mirror left-right an image of the given width: x' = width - x (no -1: coordinates are continuous)."""

    def __init__(self, width: int):
        self.width = width

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(image[:, ::-1])

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords = np.asarray(coords, dtype=np.float64).copy()
        coords[:, 0] = self.width - coords[:, 0]
        return coords

    def apply_segmentation(self, mask: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(mask[:, ::-1])


class TransformList:
    """Transforms applied in order."""

    def __init__(self, transforms: list):
        self.transforms = transforms

    def __getattr__(self, name: str):
        if not name.startswith("apply_"):
            raise AttributeError(name)

        def apply(x):
            for t in self.transforms:
                x = getattr(t, name)(x)
            return x

        return apply


class ResizeShortestEdge:
    """Resize so the short side is one of ``short_edge_lengths`` ("choice") or in their range ("range")."""

    def __init__(self, short_edge_lengths: Sequence[int] | int, max_size: int = 1333, sample_style: str = "range"):
        if isinstance(short_edge_lengths, int):
            short_edge_lengths = (short_edge_lengths, short_edge_lengths)
        if sample_style not in ("range", "choice"):
            raise ValueError(f"sample_style must be 'range' or 'choice', got '{sample_style}'")
        if sample_style == "range" and len(short_edge_lengths) != 2:
            raise ValueError(f"sample_style 'range' needs two sizes (min, max), got {list(short_edge_lengths)}")
        self.short_edge_lengths = list(short_edge_lengths)
        self.max_size = max_size
        self.sample_style = sample_style

    def get_transform(self, image: np.ndarray, rng: np.random.Generator | None = None) -> ResizeTransform:
        h, w = image.shape[:2]
        if self.sample_style == "range":
            low, high = self.short_edge_lengths
            size = int(rng.integers(low, high + 1)) if rng is not None else int(np.random.randint(low, high + 1))
        else:
            size = int(rng.choice(self.short_edge_lengths)) if rng is not None else int(
                np.random.choice(self.short_edge_lengths))
        new_h, new_w = shortest_edge_size(h, w, size, self.max_size)
        return ResizeTransform(h, w, new_h, new_w)


class ResizeForTest:
    """The test-time resize (detectron2's ``ResizeShortestEdge`` with one size): the short side becomes
    ``short_edge`` unless the long side would exceed ``max_size``. No randomness; the same for every predictor,
    the test loader and each scale of test-time augmentation."""

    def __init__(self, short_edge: int, max_size: int):
        self.short_edge = short_edge
        self.max_size = max_size

    def get_transform(self, image: np.ndarray, rng: np.random.Generator | None = None) -> ResizeTransform:
        """``rng`` is accepted (and unused) so the dataset mapper may call any resize the same way."""
        height, width = image.shape[:2]
        return ResizeTransform(height, width, *shortest_edge_size(height, width, self.short_edge, self.max_size))
