"""Draw instance predictions on an image: translucent masks with outlines, boxes, and "class score%" labels."""

from __future__ import annotations

import colorsys

import cv2
import numpy as np

from adet.structures import Instances


def instance_colors(count: int) -> list[tuple[int, int, int]]:
    """``count`` well-separated BGR colours (golden-ratio hues), the same for the same index every time."""
    colors = []
    for i in range(count):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.75, 0.95)
        colors.append((int(b * 255), int(g * 255), int(r * 255)))
    return colors


def class_label(class_id: int, class_names: list[str] | None) -> str:
    if class_names and 0 <= class_id < len(class_names):
        return class_names[class_id]
    return f"class {class_id}"


def draw_instance_predictions(image_bgr: np.ndarray, instances: Instances, class_names: list[str] | None = None,
                              alpha: float = 0.5) -> np.ndarray:
    """A copy of ``image_bgr`` (H, W, 3 uint8) with the predictions drawn, highest score on top."""
    canvas = image_bgr.copy()
    if len(instances) == 0:
        return canvas
    instances = instances.to("cpu")
    order = instances.scores.argsort().tolist()  # draw low scores first so high scores end up on top
    colors = instance_colors(len(instances))
    height, width = canvas.shape[:2]
    thickness = max(1, round(min(height, width) / 400))
    font_scale = max(0.4, min(height, width) / 1000)
    for index in order:
        color = colors[index]
        if instances.has("pred_masks"):
            mask = instances.pred_masks[index].numpy() > 0.5
            if mask.any():
                canvas[mask] = (canvas[mask] * (1 - alpha) + np.array(color) * alpha).astype(np.uint8)
                contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
                cv2.drawContours(canvas, contours, -1, color, thickness, lineType=cv2.LINE_AA)
        x1, y1, x2, y2 = (int(round(v)) for v in instances.pred_boxes.tensor[index].tolist())
        cv2.rectangle(canvas, (x1, y1), (x2, y2), color, thickness, lineType=cv2.LINE_AA)
        text = f"{class_label(int(instances.pred_classes[index]), class_names)} {instances.scores[index] * 100:.0f}%"
        (text_w, text_h), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
        top = y1 - text_h - baseline - 2 if y1 - text_h - baseline - 2 >= 0 else y1
        cv2.rectangle(canvas, (x1, top), (x1 + text_w + 2, top + text_h + baseline + 2), color, -1)
        cv2.putText(canvas, text, (x1 + 1, top + text_h + 1), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (255, 255, 255),
                    thickness, lineType=cv2.LINE_AA)
    return canvas
