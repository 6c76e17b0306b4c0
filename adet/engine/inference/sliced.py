"""Sliced inference for images larger than the model's input (aerial, microscopy, scans): the image is cut into
overlapping tiles, each tile predicted at its own resolution (in batches), and the detections mapped back and merged.

Every detection keeps its mask as a crop of its box plus the crop's offset, never as a full-image array: memory is
bounded by the tiles, not by the image. Two detections of one class from different passes are one object when, in
the window both passes saw, one mask lies mostly inside the other (intersection over the smaller area >=
``match_threshold``): an object crossing a tile border is seen in full in the overlap by both tiles, while two
neighbouring objects barely intersect there. Merged detections take the union of the masks and the higher score.
An optional pass over the whole image (at the model's test size) adds the objects too large for a tile (those of at
least half a tile; smaller ones the tiles see better).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import cv2
import numpy as np
import torch

from adet.engine.inference.predictor import prepare_image, resize_for_test
from adet.structures import Boxes, Instances
from adet.structures.rle import encode_local_mask

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


def same_object(a: LocalDetection, b: LocalDetection, match_threshold: float) -> bool:
    if a.class_id != b.class_id:
        return False
    box_a, box_b = a.box, b.box
    if box_a[0] >= box_b[2] or box_b[0] >= box_a[2] or box_a[1] >= box_b[3] or box_b[1] >= box_a[3]:
        return False
    window = _shared(a, b)
    if window is None:
        return False
    mask_a, mask_b = a.within(window), b.within(window)
    smaller = min(mask_a.sum(), mask_b.sum())
    return smaller > 0 and (mask_a & mask_b).sum() / smaller >= match_threshold


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


def merge(detections: list[LocalDetection], match_threshold: float = 0.5) -> list[LocalDetection]:
    """Greedy, from the highest score: a detection joins the first kept one that is the same object."""
    kept: list[LocalDetection] = []
    for detection in sorted(detections, key=lambda d: -d.score):
        for index, other in enumerate(kept):
            if same_object(other, detection, match_threshold):
                kept[index] = union(other, detection)
                break
        else:
            kept.append(detection)
    return kept


def _local(instances, window: Window, image_size: tuple[int, int], scale: float = 1.0) -> list[LocalDetection]:
    """A pass's Instances (masks at the pass's resolution; ``scale`` back to image pixels) as LocalDetections, each
    mask cut to its extent and marked ``cut`` when its box reaches an inner edge of the window."""
    found = []
    y0, x0, y1, x1 = window
    inner = (x0 > 0, y0 > 0, x1 < image_size[1], y1 < image_size[0])  # left, top, right, bottom edges
    for score, class_id, box, mask in zip(instances.scores.tolist(), instances.pred_classes.tolist(),
                                          instances.pred_boxes.tensor.tolist(), instances.pred_masks.numpy()):
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        top, left = (int(rows[0]), int(cols[0])) if rows.size else (int(box[1]), int(box[0]))
        crop = mask[top:rows[-1] + 1, left:cols[-1] + 1] if rows.size else np.zeros((1, 1), dtype=bool)
        if scale != 1.0:
            size = (max(round(crop.shape[1] * scale), 1), max(round(crop.shape[0] * scale), 1))
            crop = cv2.resize(crop.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
            top, left = round(top * scale), round(left * scale)
        image_box = (x0 + box[0] * scale, y0 + box[1] * scale, x0 + box[2] * scale, y0 + box[3] * scale)
        margin = 2.0  # pixels
        cut = ((inner[0] and image_box[0] <= x0 + margin) or (inner[1] and image_box[1] <= y0 + margin)
               or (inner[2] and image_box[2] >= x1 - margin) or (inner[3] and image_box[3] >= y1 - margin))
        found.append(LocalDetection(score, class_id, y0 + top, x0 + left, crop, [window], image_box, cut))
    return found


def predict_sliced(predictor, image: np.ndarray, tile: tuple[int, int], overlap: float = 0.2,
                   full_image: bool = True, match_threshold: float = 0.5, batch_size: int = 4
                   ) -> list[LocalDetection]:
    """The merged detections of a BGR image, tile by tile (``batch_size`` tiles per model call) and, with
    ``full_image``, one pass over the whole image at the model's test size. ``predictor``: a DefaultPredictor (or
    anything with its ``preprocess`` and ``model``)."""
    height, width = image.shape[:2]
    windows = tile_windows(height, width, tile, overlap)
    detections: list[LocalDetection] = []
    with torch.inference_mode():
        for start in range(0, len(windows), batch_size):
            batch = windows[start:start + batch_size]
            inputs = [predictor.preprocess(np.ascontiguousarray(image[y0:y1, x0:x1])) for y0, x0, y1, x1 in batch]
            for window, output in zip(batch, predictor.model(inputs)):
                detections += _local(output["instances"].to("cpu"), window, (height, width))
        if full_image and len(windows) > 1:
            whole = predictor.preprocess(image)
            resized = whole["image"].shape[1:]
            whole["height"], whole["width"] = resized  # masks at the network's resolution, scaled per box
            instances = predictor.model([whole])[0]["instances"].to("cpu")
            # Only objects of at least half a tile: the tiles see smaller ones at a better resolution.
            detections += [d for d in _local(instances, (0, 0, height, width), (height, width), height / resized[0])
                           if max((d.box[3] - d.box[1]) / tile[0], (d.box[2] - d.box[0]) / tile[1]) >= 0.5]
    return merge(detections, match_threshold)


def to_coco(detections: list[LocalDetection], image_id, height: int, width: int) -> list[dict]:
    """COCO results (RLE masks of the full image, encoded from the crops)."""
    results = []
    for d in detections:
        x0, y0, x1, y1 = (float(v) for v in d.box)
        results.append({"image_id": image_id, "category_id": d.class_id, "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "score": d.score, "segmentation": encode_local_mask(d.mask, d.top, d.left, height, width)})
    return results


def to_instances(detections: list[LocalDetection], height: int, width: int) -> Instances:
    """Instances with full-size masks (for the evaluator and the Python API on images of ordinary size)."""
    masks = torch.zeros((len(detections), height, width), dtype=torch.bool)
    for index, d in enumerate(detections):
        h, w = d.mask.shape
        masks[index, d.top:d.top + h, d.left:d.left + w] = torch.from_numpy(d.mask)
    return Instances((height, width), pred_boxes=Boxes(torch.tensor([d.box for d in detections],
                                                                    dtype=torch.float32).reshape(-1, 4)),
                     scores=torch.tensor([d.score for d in detections]),
                     pred_classes=torch.tensor([d.class_id for d in detections], dtype=torch.int64),
                     pred_masks=masks)


class SlicedModel(torch.nn.Module):
    """The model under TEST.SLICE for evaluation: inputs are the original images (the test mapper does not resize
    under TEST.SLICE), outputs the merged detections at their size."""

    def __init__(self, cfg, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.slice = cfg.TEST.SLICE
        self.input_format = cfg.INPUT.FORMAT
        self.resize = resize_for_test(cfg)

    def preprocess(self, image_bgr: np.ndarray) -> dict:
        prepared = prepare_image(image_bgr, self.input_format, self.resize)
        return {"image": torch.from_numpy(np.ascontiguousarray(prepared.transpose(2, 0, 1))),
                "height": image_bgr.shape[0], "width": image_bgr.shape[1]}

    def forward(self, batched_inputs: list[dict]) -> list[dict]:
        outputs = []
        for inputs in batched_inputs:
            image = inputs["image"].permute(1, 2, 0).numpy()
            image = image[:, :, ::-1] if self.input_format == "RGB" else image  # back to BGR
            detections = predict_sliced(self, np.ascontiguousarray(image), tuple(self.slice.SIZE),
                                        self.slice.OVERLAP, self.slice.FULL_IMAGE, self.slice.MATCH_THRESHOLD)
            outputs.append({"instances": to_instances(detections, *image.shape[:2])})
        return outputs
