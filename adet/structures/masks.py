"""Instance masks as polygons (COCO's format) or as full-image bitmaps."""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import pycocotools.mask as mask_util
import torch

from .boxes import Boxes


def polygons_to_bitmask(polygons: Sequence[np.ndarray], height: int, width: int) -> np.ndarray:
    """Rasterise the polygons of one instance (their union) into a (height, width) bool array, with pycocotools
    as COCO's own tools do."""
    if len(polygons) == 0:
        return np.zeros((height, width), dtype=bool)
    return mask_util.decode(segmentation_to_rle(list(polygons), height, width)).astype(bool)


def segmentation_to_rle(segmentation: list | dict, height: int, width: int) -> dict:
    """A COCO segmentation (polygons, uncompressed or compressed RLE) of an image of (height, width) as one
    compressed RLE, as pycocotools' functions take it."""
    if isinstance(segmentation, list):
        polygons = [np.asarray(p, dtype=np.float64).ravel().tolist() for p in segmentation]
        return mask_util.merge(mask_util.frPyObjects(polygons, height, width))
    if isinstance(segmentation["counts"], list):
        return mask_util.frPyObjects(segmentation, height, width)
    counts = segmentation["counts"]
    return {"size": list(segmentation["size"]), "counts": counts.encode() if isinstance(counts, str) else counts}


def _polygon_area(x: np.ndarray, y: np.ndarray) -> float:
    # Shoelace formula.
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


class PolygonMasks:
    """One list of polygons per instance; each polygon is a flat float64 array [x0, y0, x1, y1, ...] of >= 3
    points in absolute pixel coordinates."""

    def __init__(self, polygons: Sequence[Sequence[np.ndarray | Sequence[float]]]):
        if not isinstance(polygons, (list, tuple)):
            raise ValueError(f"PolygonMasks expects a list of lists of polygons, got {type(polygons).__name__}")

        def as_array(poly) -> np.ndarray:
            if isinstance(poly, torch.Tensor):
                poly = poly.cpu().numpy()
            arr = np.asarray(poly, dtype=np.float64).ravel()
            if len(arr) % 2 != 0 or len(arr) < 6:
                raise ValueError(f"a polygon needs an even number >= 6 of coordinates, got {len(arr)}")
            return arr

        self.polygons: list[list[np.ndarray]] = []
        for instance in polygons:
            if not isinstance(instance, (list, tuple)):
                raise ValueError("PolygonMasks expects one list of polygons per instance")
            self.polygons.append([as_array(p) for p in instance])

    def to(self, *args, **kwargs) -> PolygonMasks:
        return self

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def get_bounding_boxes(self) -> Boxes:
        boxes = torch.zeros(len(self.polygons), 4, dtype=torch.float32)
        for i, instance in enumerate(self.polygons):
            points = np.concatenate(instance).reshape(-1, 2) if instance else np.zeros((1, 2))
            boxes[i] = torch.as_tensor([*points.min(axis=0), *points.max(axis=0)], dtype=torch.float32)
        return Boxes(boxes)

    def nonempty(self) -> torch.Tensor:
        return torch.tensor([len(instance) > 0 for instance in self.polygons], dtype=torch.bool)

    def area(self) -> torch.Tensor:
        """(N,) polygon area (overlapping parts of one instance's polygons counted twice)."""
        areas = [sum(_polygon_area(p[0::2], p[1::2]) for p in instance) for instance in self.polygons]
        return torch.tensor(areas, dtype=torch.float32)

    def __getitem__(self, item) -> PolygonMasks:
        if isinstance(item, int):
            return PolygonMasks([self.polygons[item]])
        if isinstance(item, slice):
            return PolygonMasks(self.polygons[item])
        if isinstance(item, torch.Tensor):
            if item.dtype == torch.bool:
                item = item.nonzero().squeeze(1)
            item = item.cpu().tolist()
        return PolygonMasks([self.polygons[i] for i in item])

    def __len__(self) -> int:
        return len(self.polygons)

    def __iter__(self):
        return iter(self.polygons)

    def __repr__(self) -> str:
        return f"PolygonMasks(num_instances={len(self.polygons)})"

    @staticmethod
    def cat(masks_list: list[PolygonMasks]) -> PolygonMasks:
        return PolygonMasks([instance for masks in masks_list for instance in masks.polygons])


class BitMasks:
    """A (N, H, W) bool tensor, one full-image mask per instance."""

    def __init__(self, tensor: torch.Tensor | np.ndarray):
        tensor = torch.as_tensor(tensor)
        if tensor.dim() != 3:
            raise ValueError(f"BitMasks expects a (N, H, W) tensor, got shape {tuple(tensor.shape)}")
        self.tensor = tensor.to(dtype=torch.bool)
        self.image_size = tuple(tensor.shape[1:])

    def to(self, *args, **kwargs) -> BitMasks:
        return BitMasks(self.tensor.to(*args, **kwargs))

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    def __getitem__(self, item) -> BitMasks:
        if isinstance(item, int):
            return BitMasks(self.tensor[item].unsqueeze(0))
        return BitMasks(self.tensor[item])

    def __len__(self) -> int:
        return self.tensor.shape[0]

    def __iter__(self):
        yield from self.tensor

    def __repr__(self) -> str:
        return f"BitMasks(num_instances={len(self)})"

    def nonempty(self) -> torch.Tensor:
        return self.tensor.flatten(1).any(dim=1)

    def area(self) -> torch.Tensor:
        return self.tensor.flatten(1).sum(dim=1).float()

    def get_bounding_boxes(self) -> Boxes:
        """Tight XYXY boxes (x2, y2 exclusive: a mask covering pixel column 5 only has x1 = 5, x2 = 6)."""
        boxes = torch.zeros(len(self), 4, dtype=torch.float32)
        cols = self.tensor.any(dim=1)
        rows = self.tensor.any(dim=2)
        for i in range(len(self)):
            xs = torch.where(cols[i])[0]
            ys = torch.where(rows[i])[0]
            if len(xs) and len(ys):
                boxes[i] = torch.tensor([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1], dtype=torch.float32)
        return Boxes(boxes)

    @staticmethod
    def from_polygon_masks(polygon_masks: PolygonMasks, height: int, width: int) -> BitMasks:
        masks = [polygons_to_bitmask(p, height, width) for p in polygon_masks.polygons]
        if not masks:
            return BitMasks(torch.zeros(0, height, width, dtype=torch.bool))
        return BitMasks(torch.from_numpy(np.stack(masks)))

    @staticmethod
    def cat(masks_list: list[BitMasks]) -> BitMasks:
        return BitMasks(torch.cat([m.tensor for m in masks_list], dim=0))


def mask_to_polygons(mask: np.ndarray, offset: tuple[int, int] = (0, 0)) -> list[list[float]]:
    """Outer outlines of a bool mask as flat [x0, y0, x1, y1, ...] lists in continuous pixel coordinates (pixel
    (row r, column c) covers [c, c + 1) x [r, r + 1)), each of at least 3 points; ``offset`` (top, left) places a
    crop in its image. The outlines follow the pixels' outer edges, not their centres, so a polygon rasterised back
    (pycocotools, cv2.fillPoly) gives the mask again: straight borders exactly, 45-degree staircases by the line
    that keeps their area.

    OpenCV traces the border pixels' centres (8 directions between them); each edge of that trace is moved out by
    the half pixel the centre line leaves outside: 0.5 for a horizontal or vertical edge, 0.5 / sqrt(2) for a
    diagonal, with corners where neighbouring moved edges meet and a half-pixel cap where the trace turns back (a
    one-pixel-wide line or spur)."""
    contours, _ = cv2.findContours(np.ascontiguousarray(mask, dtype=np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    top, left = offset
    polygons = []
    for contour in contours:
        centres = contour.reshape(-1, 2).astype(np.float64) + 0.5  # (x, y) of border pixel centres
        outline = _outline_around(centres) + (left, top)
        polygons.append(outline.reshape(-1).tolist())
    return polygons


def _outline_around(centres: np.ndarray) -> np.ndarray:
    """(K, 2) corners of the outline of the pixels whose centres an OpenCV outer contour visits, in order."""
    if len(centres) == 1:
        x, y = centres[0]
        return np.array([[x - 0.5, y - 0.5], [x + 0.5, y - 0.5], [x + 0.5, y + 0.5], [x - 0.5, y + 0.5]])
    directions = np.roll(centres, -1, axis=0) - centres  # edge k: centres[k] -> centres[k + 1]
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    # OpenCV runs outer contours clockwise on screen (y down): the outside is on the left of each edge.
    normals = np.stack([-directions[:, 1], directions[:, 0]], axis=1)
    distances = 0.5 * np.abs(normals).max(axis=1)  # 0.5 straight, 0.5 / sqrt(2) diagonal
    corners = []
    for k in range(len(centres)):
        before, after = k - 1, k  # the edges ending and starting at centres[k]
        n1, n2 = normals[before], normals[after]
        det = n1[0] * n2[1] - n1[1] * n2[0]
        if abs(det) > 1e-9:  # where the two moved edges meet
            c1, c2 = n1 @ centres[k] + distances[before], n2 @ centres[k] + distances[after]
            corners.append(np.linalg.solve(np.stack([n1, n2]), [c1, c2]))
        elif n1 @ n2 < 0:  # the trace turns back: cap the end half a pixel beyond the centre
            cap = centres[k] + directions[before] * 0.5
            corners += [cap + n1 * distances[before], cap + n2 * distances[after]]
        else:  # straight on (not produced by CHAIN_APPROX_SIMPLE, but harmless)
            corners.append(centres[k] + n1 * distances[before])
    return np.array(corners)
