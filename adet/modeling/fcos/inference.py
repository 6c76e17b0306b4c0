"""FCOS detections from head outputs: threshold, per-level top-k, boxes, class-aware NMS, and a global top-k.

The op sequence follows AdelaiDet's ``FCOSOutputs.predict_proposals`` (spec section 4.4) so that, on the same
hardware and torch, ties in top-k and NMS break the same way as in the official code.
"""

from __future__ import annotations

import torch
from torchvision.ops import batched_nms

from adet.structures import Boxes, Instances


def detections_for_level(locations: torch.Tensor, logits: torch.Tensor, ltrb: torch.Tensor, ctrness: torch.Tensor,
                         top_feats: torch.Tensor | None, image_sizes: list[tuple[int, int]], score_thresh: float,
                         pre_nms_topk: int, thresh_with_ctr: bool) -> list[Instances]:
    """Candidates of one FPN level for each image.

    Args:
        locations: (H*W, 2) cell centres in input pixels.
        logits: (N, K, H, W) class logits.
        ltrb: (N, 4, H, W) left/top/right/bottom distances in input pixels.
        ctrness: (N, 1, H, W) centerness logits.
        top_feats: (N, C, H, W) per-location proposal features, or None.

    Returns:
        per image, Instances with ``pred_boxes``, ``scores`` = sqrt(cls * ctr), ``pred_classes``, ``locations`` and
        ``top_feat`` (when given).
    """
    num_images, num_classes, height, width = logits.shape
    class_probs = logits.permute(0, 2, 3, 1).reshape(num_images, -1, num_classes).sigmoid()  # (N, HW, K)
    ltrb = ltrb.permute(0, 2, 3, 1).reshape(num_images, -1, 4)  # (N, HW, 4)
    ctr_probs = ctrness.permute(0, 2, 3, 1).reshape(num_images, -1).sigmoid()  # (N, HW)
    if top_feats is not None:
        top_feats = top_feats.permute(0, 2, 3, 1).reshape(num_images, height * width, -1)  # (N, HW, C)

    # THRESH_WITH_CTR thresholds cls * ctr; otherwise cls alone, and multiplies afterwards.
    if thresh_with_ctr:
        class_probs = class_probs * ctr_probs[:, :, None]
    candidates = class_probs > score_thresh  # (N, HW, K)
    num_kept = candidates.reshape(num_images, -1).sum(1).clamp(max=pre_nms_topk)
    if not thresh_with_ctr:
        class_probs = class_probs * ctr_probs[:, :, None]

    results = []
    for i in range(num_images):
        candidates_i = candidates[i]
        scores = class_probs[i][candidates_i]
        nonzero = candidates_i.nonzero()
        location_index, classes = nonzero[:, 0], nonzero[:, 1]
        ltrb_i = ltrb[i][location_index]
        locations_i = locations[location_index]
        top_feat_i = top_feats[i][location_index] if top_feats is not None else None
        if candidates_i.sum().item() > num_kept[i].item():
            scores, top = scores.topk(int(num_kept[i]), sorted=False)
            classes, ltrb_i, locations_i = classes[top], ltrb_i[top], locations_i[top]
            if top_feat_i is not None:
                top_feat_i = top_feat_i[top]
        boxes = torch.stack([
            locations_i[:, 0] - ltrb_i[:, 0],
            locations_i[:, 1] - ltrb_i[:, 1],
            locations_i[:, 0] + ltrb_i[:, 2],
            locations_i[:, 1] + ltrb_i[:, 3],
        ], dim=1)
        result = Instances(image_sizes[i])
        result.pred_boxes = Boxes(boxes)
        result.scores = torch.sqrt(scores)
        result.pred_classes = classes
        result.locations = locations_i
        if top_feat_i is not None:
            result.top_feat = top_feat_i
        results.append(result)
    return results


def select_over_all_levels(per_image: list[Instances], nms_thresh: float, post_nms_topk: int) -> list[Instances]:
    """Class-aware NMS (IoU > ``nms_thresh`` suppresses), then keep the ``post_nms_topk`` best scores per image
    (every detection tied with the last kept one stays, as in the official code). Output is score-descending."""
    results = []
    for instances in per_image:
        if nms_thresh > 0:
            keep = batched_nms(instances.pred_boxes.tensor.float(), instances.scores, instances.pred_classes,
                               nms_thresh)
            instances = instances[keep]
        num_detections = len(instances)
        if num_detections > post_nms_topk > 0:
            threshold, _ = torch.kthvalue(instances.scores.cpu(), num_detections - post_nms_topk + 1)
            keep = torch.nonzero(instances.scores >= threshold.item()).squeeze(1)
            instances = instances[keep]
        results.append(instances)
    return results


def predict_detections(locations: list[torch.Tensor], logits: list[torch.Tensor], ltrb: list[torch.Tensor],
                       ctrness: list[torch.Tensor], top_feats: list[torch.Tensor], strides: list[int],
                       image_sizes: list[tuple[int, int]], score_thresh: float, pre_nms_topk: int,
                       post_nms_topk: int, nms_thresh: float, thresh_with_ctr: bool) -> list[Instances]:
    """Detections of every image over all levels (lists indexed by level). ``ltrb`` is in strides; each result
    also carries ``fpn_levels``."""
    per_level = []
    for level, stride in enumerate(strides):
        level_results = detections_for_level(
            locations[level], logits[level], ltrb[level] * stride, ctrness[level],
            top_feats[level] if top_feats else None, image_sizes, score_thresh, pre_nms_topk, thresh_with_ctr)
        for result in level_results:
            result.fpn_levels = locations[level].new_ones(len(result), dtype=torch.long) * level
        per_level.append(level_results)
    per_image = [Instances.cat(list(levels)) for levels in zip(*per_level)]
    return select_over_all_levels(per_image, nms_thresh, post_nms_topk)
