"""Test-time augmentation for EmbedMask (``TEST.AUG``): the image at several scales and mirrored, the detections of
every pass merged.

Each pass resizes the original image (shortest side one of ``min_sizes``, longest at most ``max_size``; PIL bilinear
as at test time) and, with ``flip``, runs once more on its mirror image. Detections of all passes, in original-image
pixels, are merged by class-aware NMS at the model's NMS threshold and the ``max_detections`` best are kept, each
with its own box and score. A kept detection's mask is voted: the mean of the mask probabilities of every detection it
suppressed (same class, box IoU above the NMS threshold) and its own, pasted to the original image, > the mask
threshold. Masks are pasted only where a member's probability exceeds the threshold can reach.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.ops import batched_nms, box_iou

from adet.data.transforms import ResizeTransform, shortest_edge_size
from adet.structures import Boxes, Instances

from .postprocess import mask_factors, reach, resize_operator


class EmbedMaskWithTTA(nn.Module):
    """Wraps a trained :class:`EmbedMask`. Input: ``batched_inputs`` whose ``image`` is the original (3, H, W) uint8
    image (not resized); output: ``[{"instances": Instances}]`` in ``height`` x ``width`` pixels, as the model's."""

    def __init__(self, model: nn.Module, min_sizes: tuple[int, ...], max_size: int, flip: bool = True,
                 max_detections: int = 100):
        super().__init__()
        if not min_sizes:
            raise ValueError("TEST.AUG.MIN_SIZES is empty: test-time augmentation needs at least one scale")
        self.model = model
        self.min_sizes = tuple(min_sizes)
        self.max_size = max_size
        self.flip = flip
        self.max_detections = max_detections

    @property
    def device(self) -> torch.device:
        return self.model.device

    def forward(self, batched_inputs: list[dict[str, Any]]) -> list[dict[str, Instances]]:
        return [{"instances": self.predict(inputs)} for inputs in batched_inputs]

    def passes(self, image: np.ndarray) -> list[tuple[dict, bool]]:
        """(model input, mirrored) for every scale and flip of an (H, W, 3) uint8 image."""
        height, width = image.shape[:2]
        passes = []
        for size in self.min_sizes:
            new_h, new_w = shortest_edge_size(height, width, size, self.max_size)
            resized = ResizeTransform(height, width, new_h, new_w).apply_image(image)
            for mirrored in (False, True) if self.flip else (False,):
                pixels = resized[:, ::-1] if mirrored else resized
                tensor = torch.as_tensor(np.ascontiguousarray(pixels.transpose(2, 0, 1)).astype(np.float32))
                passes.append(({"image": tensor}, mirrored))
        return passes

    def predict(self, inputs: dict[str, Any]) -> Instances:
        image = inputs["image"].permute(1, 2, 0).cpu().numpy().astype(np.uint8)
        out_h, out_w = int(inputs.get("height", image.shape[0])), int(inputs.get("width", image.shape[1]))
        divisor = max(self.model.backbone.size_divisibility, 1)
        boxes, scores, classes, sources = [], [], [], []
        runs = []  # per pass: (mask probabilities, row operator, column operator)
        for pass_index, (pass_inputs, mirrored) in enumerate(self.passes(image)):
            detections = self.model([pass_inputs], do_postprocess=False)[0]
            resized_h, resized_w = detections.image_size
            padded = (math.ceil(resized_h / divisor) * divisor, math.ceil(resized_w / divisor) * divisor)
            box = detections.pred_boxes.tensor.float().clone()
            box[:, 0::2] *= out_w / resized_w  # not clipped yet: the model's own NMS sees unclipped boxes too
            box[:, 1::2] *= out_h / resized_h
            if mirrored:
                box = torch.stack([out_w - box[:, 2], box[:, 1], out_w - box[:, 0], box[:, 3]], dim=1)
            probabilities = detections.mask_probs.float()
            factors = mask_factors(probabilities.shape[-2:], padded, self.model.mask_out_stride)
            rows = resize_operator(probabilities.shape[1], factors, resized_h, out_h, probabilities.device)
            cols = resize_operator(probabilities.shape[2], factors, resized_w, out_w, probabilities.device)
            runs.append((probabilities, rows, cols.flip(0) if mirrored else cols))
            boxes.append(box)
            scores.append(detections.scores.float())
            classes.append(detections.pred_classes)
            sources += [(pass_index, k) for k in range(len(detections))]
        boxes, scores, classes = torch.cat(boxes), torch.cat(scores), torch.cat(classes)
        nms_thresh = self.model.proposal_generator.nms_thresh
        keep = batched_nms(boxes, scores, classes, nms_thresh)[: self.max_detections]  # by decreasing score
        clipped = Boxes(boxes[keep].clone())
        clipped.clip((out_h, out_w))
        nonempty = clipped.nonempty()
        keep, clipped = keep[nonempty], clipped[nonempty]
        result = Instances((out_h, out_w))
        result.pred_boxes = clipped
        result.scores = scores[keep]
        result.pred_classes = classes[keep]
        result.pred_masks = self.voted_masks(keep, boxes, classes, sources, runs, nms_thresh, (out_h, out_w))
        return result

    def voted_masks(self, keep: torch.Tensor, boxes: torch.Tensor, classes: torch.Tensor, sources: list,
                    runs: list, nms_thresh: float, size: tuple[int, int]) -> torch.Tensor:
        """(K, H, W) bool: per kept detection, the mean pasted probability of its cluster > the mask threshold."""
        threshold = self.model.mask_threshold
        masks = torch.zeros((len(keep), *size), dtype=torch.bool, device=boxes.device)
        overlaps = box_iou(boxes[keep], boxes)  # (K, every detection of every pass)
        same_class = classes[keep][:, None] == classes[None, :]
        for row, members in enumerate(((overlaps > nms_thresh) & same_class).tolist()):
            cluster = [sources[c] for c, member in enumerate(members) if member]
            cluster = cluster or [sources[int(keep[row])]]
            # Where the mean can pass the threshold: where some member's pasted probability can.
            y0, x0, y1, x1 = size[0], size[1], -1, -1
            for pass_index, k in cluster:
                probabilities, rows, cols = runs[pass_index]
                above = probabilities[k] > threshold - 1e-6
                first_y, last_y = reach(above.any(1)[None], rows)[0].tolist()
                first_x, last_x = reach(above.any(0)[None], cols)[0].tolist()
                y0, y1, x0, x1 = min(y0, first_y), max(y1, last_y), min(x0, first_x), max(x1, last_x)
            if y0 > y1 or x0 > x1:
                continue
            total = 0
            for pass_index, k in cluster:
                probabilities, rows, cols = runs[pass_index]
                total = total + rows[y0:y1 + 1] @ probabilities[k] @ cols[x0:x1 + 1].t()
            masks[row, y0:y1 + 1, x0:x1 + 1] = total / len(cluster) > threshold
        return masks


def build_tta(cfg, model: nn.Module) -> EmbedMaskWithTTA:
    aug = cfg.TEST.AUG
    return EmbedMaskWithTTA(model, tuple(aug.MIN_SIZES), aug.MAX_SIZE, aug.FLIP, cfg.MODEL.FCOS.POST_NMS_TOPK_TEST)
