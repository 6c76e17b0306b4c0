"""Draw instances on an image: translucent masks with outlines and boxes in their class's colour, and "class score%"
labels placed where they cover no other label."""

from __future__ import annotations

import colorsys

import cv2
import numpy as np
import pycocotools.mask as mask_util

from adet.structures import Instances, LocalMasks, segmentation_to_rle, xywh_box


def class_color(class_id: int) -> tuple[int, int, int]:
    """The BGR colour of a class: well-separated hues (golden-ratio steps), the same for a class in every image."""
    r, g, b = colorsys.hsv_to_rgb((class_id * 0.618033988749895 + 0.1) % 1.0, 0.75, 0.95)
    return int(b * 255), int(g * 255), int(r * 255)


def class_label(class_id: int, class_names: list[str] | None) -> str:
    if class_names and 0 <= class_id < len(class_names):
        return class_names[class_id]
    return f"class {class_id}"


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def place_label(box: tuple[int, int, int, int], size: tuple[int, int], image_size: tuple[int, int],
                taken: list[tuple[int, int, int, int]]) -> tuple[int, int, int, int]:
    """Where a label of ``size`` (w, h) goes for ``box`` (x1, y1, x2, y2): above the box, else inside its top, else
    below it, else inside its bottom; the first of those inside the image and clear of the ``taken`` labels, else
    the first one moved down until it is clear (or as far as the image allows)."""
    (w, h), (height, width) = size, image_size
    x1, y1, x2, y2 = box
    x = min(max(x1, 0), max(width - w, 0))
    candidates = [y1 - h, y1, y2, y2 - h]
    rects = [(x, y, x + w, y + h) for y in candidates if 0 <= y and y + h <= height]
    for rect in rects:
        if not any(_overlaps(rect, other) for other in taken):
            return rect
    x, y = (rects[0][0], rects[0][1]) if rects else (x, min(max(y1, 0), max(height - h, 0)))
    while y + 2 * h <= height and any(_overlaps((x, y, x + w, y + h), other) for other in taken):
        y += h
    return x, y, x + w, y + h


def _mask_crops(masks: np.ndarray | LocalMasks) -> list[tuple[np.ndarray, int, int]]:
    """(crop, top, left) per mask: LocalMasks' own crops, a full-size mask as its own crop at (0, 0)."""
    if isinstance(masks, LocalMasks):
        return masks.numpy_crops()
    return [(np.asarray(mask).astype(bool, copy=False), 0, 0) for mask in masks]


def draw_instances(image_bgr: np.ndarray, boxes: np.ndarray, class_ids: np.ndarray,
                   masks: np.ndarray | LocalMasks | None = None, scores: np.ndarray | None = None,
                   class_names: list[str] | None = None, alpha: float = 0.5) -> np.ndarray:
    """A copy of ``image_bgr`` (H, W, 3 uint8) with N instances drawn: ``boxes`` (N, 4) XYXY, ``class_ids`` (N,),
    ``masks`` (N, H, W) bool, :class:`LocalMasks` (drawn from their crops) or None, ``scores`` (N,) or None
    (ground truth). Masks and boxes go from the lowest score up (the best on top), then labels from the highest
    score down (the best in the best place)."""
    canvas = image_bgr.copy()
    if len(boxes) == 0:
        return canvas
    order = np.argsort(scores, kind="stable").tolist() if scores is not None else list(range(len(boxes)))
    height, width = canvas.shape[:2]
    thickness = max(1, round(min(height, width) / 400))
    font_scale = max(0.4, min(height, width) / 1000)
    crops = _mask_crops(masks) if masks is not None else None
    for index in order:
        color = class_color(int(class_ids[index]))
        if crops is not None and crops[index][0].any():
            crop, top, left = crops[index]
            region = canvas[top:top + crop.shape[0], left:left + crop.shape[1]]
            region[crop] = (region[crop] * (1 - alpha) + np.array(color) * alpha).astype(np.uint8)
            contours, _ = cv2.findContours(crop.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE,
                                           offset=(left, top))
            cv2.drawContours(canvas, contours, -1, color, thickness, lineType=cv2.LINE_AA)
        x1, y1, x2, y2 = (int(round(float(v))) for v in boxes[index])
        cv2.rectangle(canvas, (x1, y1), (x2, y2), color, thickness, lineType=cv2.LINE_AA)
    taken: list[tuple[int, int, int, int]] = []
    for index in reversed(order):
        text = class_label(int(class_ids[index]), class_names)
        if scores is not None:
            text += f" {float(scores[index]) * 100:.0f}%"
        (text_w, text_h), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
        box = tuple(int(round(float(v))) for v in boxes[index])
        rect = place_label(box, (text_w + 2, text_h + baseline + 2), (height, width), taken)
        taken.append(rect)
        cv2.rectangle(canvas, rect[:2], (rect[2] - 1, rect[3] - 1), class_color(int(class_ids[index])), -1)
        cv2.putText(canvas, text, (rect[0] + 1, rect[1] + text_h + 1), cv2.FONT_HERSHEY_SIMPLEX, font_scale,
                    (255, 255, 255), thickness, lineType=cv2.LINE_AA)
    return canvas


def draw_instance_predictions(image_bgr: np.ndarray, instances: Instances, class_names: list[str] | None = None,
                              alpha: float = 0.5) -> np.ndarray:
    """A model's output Instances (``pred_boxes``, ``scores``, ``pred_classes``, optional ``pred_masks``) drawn."""
    instances = instances.to("cpu")
    masks = LocalMasks.of(instances) if instances.has("pred_masks") else None
    return draw_instances(image_bgr, instances.pred_boxes.tensor.numpy(), instances.pred_classes.numpy(), masks,
                          instances.scores.numpy(), class_names, alpha)


class ColorMode:
    """detectron2's colour modes: IMAGE (the image under translucent masks), SEGMENTATION (the same here: colours
    are per class already), IMAGE_BW (the image in grey outside the masks, to make the instances stand out)."""

    IMAGE = 0
    SEGMENTATION = 1
    IMAGE_BW = 2


class VisImage:
    """The drawing: ``get_image()`` -> (H*scale, W*scale, 3) uint8 RGB; ``save(path)``."""

    def __init__(self, drawn_bgr: np.ndarray, scale: float):
        self.scale = scale
        self._bgr = drawn_bgr if scale == 1.0 else cv2.resize(drawn_bgr, None, fx=scale, fy=scale,
                                                              interpolation=cv2.INTER_AREA)

    def get_image(self) -> np.ndarray:
        return np.ascontiguousarray(self._bgr[:, :, ::-1])

    def save(self, path: str) -> None:
        if not cv2.imwrite(path, self._bgr):
            raise OSError(f"{path}: could not write the image (unknown extension or unwritable location)")


class Visualizer:
    """detectron2's ``Visualizer(img_rgb, metadata, scale, instance_mode)``: ``draw_instance_predictions(instances)``
    and ``draw_dataset_dict(record)`` return a :class:`VisImage`. Class names come from ``metadata.thing_classes``."""

    def __init__(self, img_rgb: np.ndarray, metadata=None, scale: float = 1.0, instance_mode: int = ColorMode.IMAGE):
        self.image_bgr = np.ascontiguousarray(np.asarray(img_rgb)[:, :, ::-1]).astype(np.uint8)
        self.class_names = metadata.get("thing_classes") if metadata is not None else None
        self.scale = scale
        self.instance_mode = instance_mode

    def _background(self, masks: np.ndarray | LocalMasks | None) -> np.ndarray:
        if self.instance_mode != ColorMode.IMAGE_BW:
            return self.image_bgr
        grey = cv2.cvtColor(cv2.cvtColor(self.image_bgr, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
        for crop, top, left in _mask_crops(masks) if masks is not None else []:
            rows, cols = slice(top, top + crop.shape[0]), slice(left, left + crop.shape[1])
            grey[rows, cols][crop] = self.image_bgr[rows, cols][crop]
        return grey

    def draw_instance_predictions(self, predictions: Instances) -> VisImage:
        predictions = predictions.to("cpu")
        masks = LocalMasks.of(predictions) if predictions.has("pred_masks") else None
        drawn = draw_instance_predictions(self._background(masks), predictions, self.class_names)
        return VisImage(drawn, self.scale)

    def draw_dataset_dict(self, record: dict) -> VisImage:
        """The ground truth of a dataset dict (boxes in either BoxMode, polygon or RLE masks, contiguous ids)."""
        annotations = [a for a in record.get("annotations", []) if not a.get("iscrowd", 0)]
        height, width = self.image_bgr.shape[:2]
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in map(xywh_box, annotations)], np.float64)
        masks = None
        if annotations and all("segmentation" in a for a in annotations):
            masks = np.stack([mask_util.decode(segmentation_to_rle(a["segmentation"], height, width)).astype(bool)
                              for a in annotations])
        class_ids = np.array([a["category_id"] for a in annotations], np.int64)
        drawn = draw_instances(self._background(masks), boxes.reshape(-1, 4), class_ids, masks, None,
                               self.class_names)
        return VisImage(drawn, self.scale)
