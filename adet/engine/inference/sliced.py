"""Sliced inference for images larger than the model's input (aerial, microscopy, scans): the image is cut into
overlapping tiles, each tile predicted at its own resolution (in batches), and the detections mapped back and merged.

Every detection keeps its mask as a crop of its box plus the crop's offset, never as a full-image array: memory is
bounded by the tiles, not by the image. Two detections of one class from different passes are one object when, in
the window both passes saw, one mask lies mostly inside the other (intersection over the smaller area >=
``match_threshold``): an object crossing a tile border is seen in full in the overlap by both tiles, while two
neighbouring objects barely intersect there. Merged detections take the union of the masks and the higher score.
An optional pass over the whole image (at the model's test size) adds the objects too large for a tile (those of at
least half a tile; smaller ones the tiles see better).

The merge looks for partners through a grid over the image (cells of a tile), so its time grows with the number of
detections, not with its square, and compares two masks only where both crops and their shared window meet.
:class:`SlicedBackend` is all of this as a backend (``backend.py``): it slices whatever backend it wraps (PyTorch,
test-time augmented or not, ONNX Runtime).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np
import torch

from adet.engine.inference.backend import Backend, ImageInput, image_input
from adet.errors import ConfigError
from adet.structures import Boxes, Instances, LocalMasks

Window = tuple[int, int, int, int]  # y0, x0, y1, x1 in the image


@dataclass
class LocalDetection:
    score: float
    class_id: int
    top: int  # where ``mask`` sits in the image
    left: int
    mask: np.ndarray  # (h, w) bool: the mask's extent
    windows: list[Window] = field(default_factory=list)  # the passes it was seen in
    model_box: tuple[float, float, float, float] | None = None  # XYXY in image pixels, as the model gave it
    cut: bool = False  # its box reaches an edge of its tile inside the image: the object may go on beyond

    @property
    def box(self) -> tuple[float, float, float, float]:
        """XYXY in image pixels: the model's box, else the mask's extent."""
        if self.model_box is not None:
            return self.model_box
        rows, cols = np.flatnonzero(self.mask.any(1)), np.flatnonzero(self.mask.any(0))
        if rows.size == 0:
            return self.left, self.top, self.left, self.top
        return self.left + cols[0], self.top + rows[0], self.left + cols[-1] + 1, self.top + rows[-1] + 1

    def within(self, window: Window) -> np.ndarray:
        """The mask restricted to ``window``, as a (window height, window width) array."""
        y0, x0, y1, x1 = window
        out = np.zeros((y1 - y0, x1 - x0), dtype=bool)
        h, w = self.mask.shape
        top, left = max(self.top, y0), max(self.left, x0)
        bottom, right = min(self.top + h, y1), min(self.left + w, x1)
        if bottom > top and right > left:
            out[top - y0:bottom - y0, left - x0:right - x0] = self.mask[top - self.top:bottom - self.top,
                                                                        left - self.left:right - self.left]
        return out


def tile_windows(height: int, width: int, tile: tuple[int, int], overlap: float) -> list[Window]:
    """Tiles of ``tile`` (h, w) covering the image, neighbours overlapping by ``overlap`` of a tile; the last row and
    column are moved back to end at the image's edge (a tile larger than the image is the image)."""
    def starts(size: int, length: int) -> list[int]:
        if length >= size:
            return [0]
        stride = max(int(length * (1 - overlap)), 1)
        values = list(range(0, size - length, stride))
        return values + [size - length]

    tile_h, tile_w = tile
    return [(y, x, min(y + tile_h, height), min(x + tile_w, width)) for y in starts(height, tile_h)
            for x in starts(width, tile_w)]


def _shared(a: LocalDetection, b: LocalDetection) -> Window | None:
    """The largest window two detections' passes both saw (None if they come from the same pass only)."""
    best, best_area = None, 0
    for wa in a.windows:
        for wb in b.windows:
            if wa == wb:
                continue
            window = (max(wa[0], wb[0]), max(wa[1], wb[1]), min(wa[2], wb[2]), min(wa[3], wb[3]))
            area = (window[2] - window[0]) * (window[3] - window[1])
            if window[2] > window[0] and window[3] > window[1] and area > best_area:
                best, best_area = window, area
    return best


def _clip(rect: Window, d: LocalDetection) -> Window:
    """``rect`` (y0, x0, y1, x1) cut to the extent of ``d``'s crop (empty when y1 <= y0 or x1 <= x0)."""
    h, w = d.mask.shape
    return max(rect[0], d.top), max(rect[1], d.left), min(rect[2], d.top + h), min(rect[3], d.left + w)


def _part(d: LocalDetection, rect: Window) -> np.ndarray:
    """The part of ``d``'s crop inside ``rect`` (a view, nothing allocated); ``rect`` lies inside the crop."""
    if rect[2] <= rect[0] or rect[3] <= rect[1]:
        return d.mask[:0, :0]
    return d.mask[rect[0] - d.top:rect[2] - d.top, rect[1] - d.left:rect[3] - d.left]


def same_object(a: LocalDetection, b: LocalDetection, match_threshold: float) -> bool:
    if a.class_id != b.class_id:
        return False
    box_a, box_b = a.box, b.box
    if box_a[0] >= box_b[2] or box_b[0] >= box_a[2] or box_a[1] >= box_b[3] or box_b[1] >= box_a[3]:
        return False
    window = _shared(a, b)
    if window is None:
        return False
    in_a, in_b = _clip(window, a), _clip(window, b)
    smaller = min(int(_part(a, in_a).sum()), int(_part(b, in_b).sum()))
    both = _clip(in_a, b)  # the window, both crops
    return smaller > 0 and int((_part(a, both) & _part(b, both)).sum()) / smaller >= match_threshold


def union(a: LocalDetection, b: LocalDetection) -> LocalDetection:
    """One object seen twice: the view that saw it whole when the other was cut by its tile's edge; the higher
    score's when both saw it whole; the union of the masks (and boxes) when both were cut (an object larger than
    the overlap)."""
    windows = a.windows + b.windows
    if not (a.cut and b.cut):
        whole = b if a.cut else a  # a scores higher: it wins a tie
        return replace(whole, windows=windows)
    top, left = min(a.top, b.top), min(a.left, b.left)
    bottom = max(a.top + a.mask.shape[0], b.top + b.mask.shape[0])
    right = max(a.left + a.mask.shape[1], b.left + b.mask.shape[1])
    mask = a.within((top, left, bottom, right)) | b.within((top, left, bottom, right))
    box_a, box_b = a.box, b.box
    box = (min(box_a[0], box_b[0]), min(box_a[1], box_b[1]), max(box_a[2], box_b[2]), max(box_a[3], box_b[3]))
    return LocalDetection(max(a.score, b.score), a.class_id, top, left, mask, windows, box, cut=True)


def merge(detections: list[LocalDetection], match_threshold: float = 0.5, cell: tuple[int, int] = (512, 512)
          ) -> list[LocalDetection]:
    """Greedy, from the highest score: a detection joins the first kept one (by score) that is the same object.
    Kept detections are found through a grid of ``cell`` (h, w) pixels: only those whose box shares a cell with
    the detection's are compared."""
    kept: list[LocalDetection] = []
    grid: dict[tuple[int, int], list[int]] = defaultdict(list)

    def cells(box: tuple[float, float, float, float]) -> list[tuple[int, int]]:
        x0, y0, x1, y1 = box
        return [(row, col) for row in range(int(y0 // cell[0]), int(y1 // cell[0]) + 1)
                for col in range(int(x0 // cell[1]), int(x1 // cell[1]) + 1)]

    for detection in sorted(detections, key=lambda d: -d.score):
        candidates = sorted({index for key in cells(detection.box) for index in grid[key]})
        for index in candidates:
            if same_object(kept[index], detection, match_threshold):
                kept[index] = union(kept[index], detection)
                for key in cells(kept[index].box):  # its box may have grown
                    if index not in grid[key]:
                        grid[key].append(index)
                break
        else:
            kept.append(detection)
            for key in cells(detection.box):
                grid[key].append(len(kept) - 1)
    return kept


def _local(instances: Instances, window: Window, image_size: tuple[int, int]) -> list[LocalDetection]:
    """A pass's Instances (in the pixels of ``window``) as LocalDetections in the image's, each mask cut to its
    extent and marked ``cut`` when its box reaches an inner edge of the window."""
    found = []
    y0, x0, y1, x1 = window
    inner = (x0 > 0, y0 > 0, x1 < image_size[1], y1 < image_size[0])  # left, top, right, bottom edges
    crops = LocalMasks.of(instances).numpy_crops()
    for score, class_id, box, (mask, crop_top, crop_left) in zip(
            instances.scores.tolist(), instances.pred_classes.tolist(), instances.pred_boxes.tensor.tolist(), crops):
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        if rows.size:
            top, left = crop_top + int(rows[0]), crop_left + int(cols[0])
            crop = mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        else:
            top, left, crop = int(box[1]), int(box[0]), np.zeros((1, 1), dtype=bool)
        image_box = (x0 + box[0], y0 + box[1], x0 + box[2], y0 + box[3])
        margin = 2.0  # pixels
        cut = ((inner[0] and image_box[0] <= x0 + margin) or (inner[1] and image_box[1] <= y0 + margin)
               or (inner[2] and image_box[2] >= x1 - margin) or (inner[3] and image_box[3] >= y1 - margin))
        found.append(LocalDetection(score, class_id, y0 + top, x0 + left, crop, [window], image_box, cut))
    return found


def predict_sliced(backend: Backend, image: np.ndarray, tile: tuple[int, int], overlap: float = 0.5,
                   full_image: bool = True, match_threshold: float = 0.5, batch_size: int = 4
                   ) -> list[LocalDetection]:
    """The merged detections of a BGR image, tile by tile (``batch_size`` tiles per ``backend.predict_batch``) and,
    with ``full_image``, one pass over the whole image (resized by the backend as any image)."""
    height, width = image.shape[:2]
    windows = tile_windows(height, width, tile, overlap)
    detections: list[LocalDetection] = []
    for start in range(0, len(windows), batch_size):
        batch = windows[start:start + batch_size]
        inputs = [backend.preprocess(np.ascontiguousarray(image[y0:y1, x0:x1])) for y0, x0, y1, x1 in batch]
        for window, instances in zip(batch, backend.predict_batch(inputs)):
            detections += _local(instances.to("cpu"), window, (height, width))
    if full_image and len(windows) > 1:
        instances = backend.predict_batch([backend.preprocess(image)])[0].to("cpu")
        # Only objects of at least half a tile: the tiles see smaller ones at a better resolution.
        detections += [d for d in _local(instances, (0, 0, height, width), (height, width))
                       if max((d.box[3] - d.box[1]) / tile[0], (d.box[2] - d.box[0]) / tile[1]) >= 0.5]
    return merge(detections, match_threshold, tile)


def to_instances(detections: list[LocalDetection], height: int, width: int) -> Instances:
    """Instances whose masks are the detections' crops (read as full-size masks only when asked)."""
    masks = LocalMasks([torch.from_numpy(np.ascontiguousarray(d.mask)) for d in detections],
                       [(d.top, d.left) for d in detections], (height, width))
    return Instances((height, width), pred_boxes=Boxes(torch.tensor([d.box for d in detections],
                                                                    dtype=torch.float32).reshape(-1, 4)),
                     scores=torch.tensor([d.score for d in detections], dtype=torch.float32),
                     pred_classes=torch.tensor([d.class_id for d in detections], dtype=torch.int64),
                     pred_masks=masks)


class SlicedBackend:
    """A backend predicting each image in overlapping tiles of ``tile`` (h, w) through ``backend`` (any backend:
    PyTorch, test-time augmented or not, ONNX Runtime) and merging them (:func:`predict_sliced`). Its inputs are
    the originals (not resized: each tile is resized by ``backend``); its ``cfg`` is the wrapped one's with
    TEST.SLICE saying how it slices."""

    def __init__(self, backend: Backend, tile: tuple[int, int], overlap: float, full_image: bool = True,
                 match_threshold: float = 0.5, batch_size: int = 4):
        if len(tile) != 2 or min(tile) <= 0 or not 0 <= overlap < 1 or batch_size < 1:
            raise ConfigError(f"slicing: tiles of {tuple(tile)} pixels overlapping by {overlap}, {batch_size} "
                                   "per call: needs a positive (height, width), an overlap in [0, 1) and a batch of 1+")
        self.backend = backend
        self.tile, self.overlap, self.full_image = (int(tile[0]), int(tile[1])), float(overlap), bool(full_image)
        self.match_threshold, self.batch_size = match_threshold, int(batch_size)
        self.cfg = backend.cfg.clone()
        self.cfg.defrost()
        self.cfg.TEST.SLICE.update(ENABLED=True, SIZE=self.tile, OVERLAP=self.overlap, FULL_IMAGE=self.full_image,
                                   MATCH_THRESHOLD=match_threshold, BATCH_SIZE=self.batch_size)
        self.input_format = backend.cfg.INPUT.FORMAT
        self.class_names, self.category_ids = backend.class_names, backend.category_ids
        self.size_divisibility = backend.size_divisibility

    def preprocess(self, image_bgr: np.ndarray) -> ImageInput:
        return image_input(image_bgr, self.input_format, None)

    def predict_batch(self, batch: Sequence[ImageInput]) -> list[Instances]:
        results = []
        for item in batch:
            image = item.image.numpy() if isinstance(item.image, torch.Tensor) else item.image
            image = image.transpose(1, 2, 0)
            image = image[:, :, ::-1] if self.input_format == "RGB" else image  # back to BGR
            detections = predict_sliced(self.backend, np.ascontiguousarray(image), self.tile, self.overlap,
                                        self.full_image, self.match_threshold, self.batch_size)
            results.append(to_instances(detections, *image.shape[:2]))
        return results


def with_slicing(backend: Backend, slice_cfg) -> Backend:
    """``backend`` sliced as TEST.SLICE (``slice_cfg``) says, or itself when TEST.SLICE.ENABLED is off."""
    if not slice_cfg.ENABLED:
        return backend
    return SlicedBackend(backend, tuple(slice_cfg.SIZE), slice_cfg.OVERLAP, slice_cfg.FULL_IMAGE,
                         slice_cfg.MATCH_THRESHOLD, slice_cfg.get("BATCH_SIZE", 4))


def slice_overrides(tile: tuple[int, int], overlap: float | None = None, full_image: bool | None = None,
                    batch_size: int | None = None) -> list:
    """The KEY VALUE overrides that turn slicing on with tiles of ``tile`` (h, w); a setting left None keeps the
    config's (TEST.SLICE.OVERLAP, FULL_IMAGE, BATCH_SIZE)."""
    overrides = ["TEST.SLICE.ENABLED", True, "TEST.SLICE.SIZE", tuple(int(v) for v in tile)]
    for key, value in (("OVERLAP", overlap), ("FULL_IMAGE", full_image), ("BATCH_SIZE", batch_size)):
        if value is not None:
            overrides += [f"TEST.SLICE.{key}", value]
    return overrides


def sliced(backend: Backend, overrides: list) -> Backend:
    """``backend`` (one that cannot take overrides, e.g. ONNX Runtime's) sliced as its TEST.SLICE with
    ``overrides`` (:func:`slice_overrides`) says."""
    slice_cfg = backend.cfg.TEST.SLICE.clone()
    slice_cfg.defrost()
    for key, value in zip(overrides[::2], overrides[1::2]):
        slice_cfg[key.rsplit(".", 1)[1]] = value
    return with_slicing(backend, slice_cfg)
