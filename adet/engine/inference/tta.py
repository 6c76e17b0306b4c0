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

import numpy as np
import torch
from torch import nn
from torchvision.ops import batched_nms, box_iou

from adet.data.transforms import ResizeForTest
from adet.modeling.embedmask.embedmask import EmbedMask, image_sizes_tensor
from adet.modeling.embedmask.postprocess import mask_operators, mask_reach, paste_region
from adet.structures import Boxes, Instances, LocalMasks


class EmbedMaskWithTTA(nn.Module):
    """Wraps a trained :class:`EmbedMask`. Input: ``batched_inputs`` whose ``image`` is the original (3, H, W) uint8
    image (not resized); output: ``[{"instances": Instances}]`` in ``height`` x ``width`` pixels, as the model's."""

    def __init__(self, model: EmbedMask, min_sizes: tuple[int, ...], max_size: int, flip: bool = True,
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

    def forward(self, batched_inputs: list[dict]) -> list[dict[str, Instances]]:
        return [{"instances": self.predict(inputs)} for inputs in batched_inputs]

    def passes(self, image: np.ndarray) -> list[tuple[dict, bool]]:
        """(model input, mirrored) for every scale and flip of an (H, W, 3) uint8 image."""
        passes = []
        for size in self.min_sizes:
            resized = ResizeForTest(size, self.max_size).get_transform(image).apply_image(image)
            for mirrored in (False, True) if self.flip else (False,):
                pixels = resized[:, ::-1] if mirrored else resized
                passes.append(({"image": torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))},
                               mirrored))
        return passes

    def predict(self, inputs: dict) -> Instances:
        image = inputs["image"].permute(1, 2, 0).cpu().numpy().astype(np.uint8)
        out_h, out_w = int(inputs.get("height", image.shape[0])), int(inputs.get("width", image.shape[1]))
        boxes, scores, classes, sources = [], [], [], []
        runs = []  # per pass: (mask probabilities, row operator, column operator)
        for pass_index, (pass_inputs, mirrored) in enumerate(self.passes(image)):
            images = self.model.preprocess([pass_inputs])
            found = self.model.detect(images.tensor, image_sizes_tensor(images))[0]
            resized_h, resized_w = images.image_sizes[0]
            box = Boxes(found.boxes.float().clone())  # not clipped yet: the model's own NMS sees unclipped boxes too
            box.scale(out_w / resized_w, out_h / resized_h)
            box = box.tensor
            if mirrored:
                box = torch.stack([out_w - box[:, 2], box[:, 1], out_w - box[:, 0], box[:, 3]], dim=1)
            probabilities = found.mask_probs.float()
            rows, cols = mask_operators(probabilities.shape[-2:], tuple(images.tensor.shape[-2:]),
                                        (resized_h, resized_w), (out_h, out_w), self.model.mask_out_stride,
                                        probabilities.device)
            runs.append((probabilities, rows, cols.flip(0) if mirrored else cols))
            boxes.append(box)
            scores.append(found.scores.float())
            classes.append(found.classes)
            sources += [(pass_index, k) for k in range(len(found.scores))]
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
                    runs: list, nms_thresh: float, size: tuple[int, int]) -> LocalMasks:
        """P masks of ``size``: per kept detection, the mean pasted probability of its cluster (the detections it
        suppressed, same class and box IoU above the NMS threshold, and itself) > the mask threshold."""
        threshold = self.model.mask_threshold
        # Per pass, the output rectangle each of its masks can reach.
        reaches = [mask_reach(probabilities, rows, cols, threshold) for probabilities, rows, cols in runs]
        crops = [torch.zeros((0, 0), dtype=torch.bool, device=boxes.device)] * len(keep)
        offsets = [(0, 0)] * len(keep)
        overlaps = box_iou(boxes[keep], boxes)  # (P, every detection of every pass)
        same_class = classes[keep][:, None] == classes[None, :]
        for row, members in enumerate(((overlaps > nms_thresh) & same_class).tolist()):
            cluster = [sources[c] for c, member in enumerate(members) if member]
            cluster = cluster or [sources[int(keep[row])]]
            # Where the mean can pass the threshold: where some member's pasted probability can.
            ranges = [reaches[pass_index][k] for pass_index, k in cluster]
            y0, y1 = min(r[0] for r in ranges), max(r[1] for r in ranges)
            x0, x1 = min(r[2] for r in ranges), max(r[3] for r in ranges)
            if y0 > y1 or x0 > x1:
                continue
            members_maps = [(runs[p][0][k], runs[p][1], runs[p][2]) for p, k in cluster]
            crops[row] = paste_region(members_maps, (y0, y1, x0, x1)) > threshold
            offsets[row] = (y0, x0)
        return LocalMasks(crops, offsets, size)


def build_tta(cfg, model: EmbedMask) -> EmbedMaskWithTTA:
    aug = cfg.TEST.AUG
    return EmbedMaskWithTTA(model, tuple(aug.MIN_SIZES), aug.MAX_SIZE, aug.FLIP, cfg.MODEL.FCOS.POST_NMS_TOPK_TEST)
