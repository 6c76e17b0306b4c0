"""FCOS detections from head outputs: threshold, per-level top-k, boxes, class-aware NMS, and a global top-k.

The steps are written on tensors alone (no Python numbers read from tensors, no branches on data), so the very same
functions run eagerly and in an exported ONNX graph (adet/export/). They keep AdelaiDet's ``predict_proposals``
semantics (spec section 4.4); only the order of equally scored candidates may differ.
"""

from __future__ import annotations

import torch
from torchvision.ops import nms

from adet.structures import Boxes, Instances


def level_candidates(locations: torch.Tensor, logits: torch.Tensor, ltrb: torch.Tensor, ctrness: torch.Tensor,
                     top_feats: torch.Tensor | None, score_thresh: float, pre_nms_topk: int, thresh_with_ctr: bool
                     ) -> tuple[torch.Tensor, ...]:
    """Candidates of one FPN level of one image: every (location, class) above the threshold, at most
    ``pre_nms_topk`` of them (the best).

    Args:
        locations: (H*W, 2) cell centres in input pixels.
        logits: (K, H, W) class logits.
        ltrb: (4, H, W) left/top/right/bottom distances in input pixels.
        ctrness: (1, H, W) centerness logits.
        top_feats: (C, H, W) per-location proposal features, or None.

    Returns:
        boxes (n, 4) XYXY, scores (n,) = sqrt(cls * ctr), classes (n,), locations (n, 2), top_feats (n, C) or None;
        in location-major order (then class), as the official code's nonzero() gives them.
    """
    num_classes = logits.shape[0]
    class_probs = logits.permute(1, 2, 0).reshape(-1, num_classes).sigmoid()  # (HW, K)
    ctr_probs = ctrness.reshape(-1).sigmoid()  # (HW,)
    # THRESH_WITH_CTR thresholds cls * ctr; otherwise cls alone, and multiplies afterwards.
    if thresh_with_ctr:
        class_probs = class_probs * ctr_probs[:, None]
    candidates = (class_probs > score_thresh).reshape(-1)  # (HW * K,)
    if not thresh_with_ctr:
        class_probs = class_probs * ctr_probs[:, None]
    flat = class_probs.reshape(-1)
    # The best pre_nms_topk candidates, as a top-k over all scores with non-candidates pushed below every score.
    masked = torch.where(candidates, flat, torch.full_like(flat, -1.0))
    top_scores, top_index = masked.topk(torch.sym_min(pre_nms_topk, flat.shape[0]))
    chosen = top_index[top_scores >= 0].sort().values  # (n,) back in location-major order
    location_index, classes = chosen // num_classes, chosen % num_classes
    ltrb = ltrb.reshape(4, -1)[:, location_index]  # (4, n)
    points = locations[location_index]  # (n, 2)
    boxes = torch.stack([points[:, 0] - ltrb[0], points[:, 1] - ltrb[1], points[:, 0] + ltrb[2],
                         points[:, 1] + ltrb[3]], dim=1)
    feats = top_feats.reshape(top_feats.shape[0], -1)[:, location_index].t() if top_feats is not None else None
    return boxes, torch.sqrt(flat[chosen]), classes, points, feats


def class_aware_nms(boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, threshold: float
                    ) -> torch.Tensor:
    """Indices kept by NMS within each class (IoU > ``threshold`` suppresses), by decreasing score: boxes of
    different classes are moved apart so one NMS call sees no overlap between classes (torchvision's
    ``batched_nms``, always by this route: no branch on the box count)."""
    extent = torch.cat([boxes.reshape(-1), boxes.new_zeros(1)]).max() + 1
    return nms(boxes + (classes.to(boxes.dtype) * extent)[:, None], scores, threshold)


def best_with_ties(scores: torch.Tensor, k: int) -> torch.Tensor:
    """(m,) bool: the ``k`` best scores and every score tied with the k-th, as the official ``kthvalue`` rule."""
    padded = torch.cat([scores, scores.new_full((1,), float("-inf"))])  # so that k-th always exists
    kth = padded.topk(torch.sym_min(k, padded.shape[0])).values[-1]
    return scores >= kth


def select_detections(boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, nms_thresh: float,
                      post_nms_topk: int) -> torch.Tensor:
    """Indices of the final detections of one image, by decreasing score: class-aware NMS, then the
    ``post_nms_topk`` best (ties with the last kept included)."""
    keep = class_aware_nms(boxes.float(), scores, classes, nms_thresh) if nms_thresh > 0 else \
        scores.argsort(descending=True)
    if post_nms_topk > 0:
        keep = keep[best_with_ties(scores[keep], post_nms_topk)]
    return keep


def image_candidates(locations: list[torch.Tensor], logits: list[torch.Tensor], ltrb: list[torch.Tensor],
                     ctrness: list[torch.Tensor], top_feats: list[torch.Tensor] | None, strides: list[int],
                     score_thresh: float, pre_nms_topk: int, thresh_with_ctr: bool) -> tuple[torch.Tensor, ...]:
    """The candidates of every level of one image (inputs per level, without the batch dimension), concatenated,
    with each one's level: boxes, scores, classes, locations, top_feats (or None), levels."""
    parts = []
    for level, stride in enumerate(strides):
        candidates = level_candidates(locations[level], logits[level], ltrb[level] * stride, ctrness[level],
                                      top_feats[level] if top_feats else None, score_thresh, pre_nms_topk,
                                      thresh_with_ctr)
        parts.append((*candidates, torch.full_like(candidates[2], level)))
    merged = [torch.cat(list(column)) if column[0] is not None else None for column in zip(*parts)]
    return tuple(merged)


def predict_detections(locations: list[torch.Tensor], logits: list[torch.Tensor], ltrb: list[torch.Tensor],
                       ctrness: list[torch.Tensor], top_feats: list[torch.Tensor], strides: list[int],
                       image_sizes: list[tuple[int, int]], score_thresh: float, pre_nms_topk: int,
                       post_nms_topk: int, nms_thresh: float, thresh_with_ctr: bool) -> list[Instances]:
    """Detections of every image (lists indexed by level, tensors batched; ``ltrb`` in strides) as Instances with
    ``pred_boxes``, ``scores``, ``pred_classes``, ``locations``, ``fpn_levels`` and ``top_feat``."""
    results = []
    for i, image_size in enumerate(image_sizes):
        boxes, scores, classes, points, feats, levels = image_candidates(
            locations, [x[i] for x in logits], [x[i] for x in ltrb], [x[i] for x in ctrness],
            [x[i] for x in top_feats] if top_feats else None, strides, score_thresh, pre_nms_topk, thresh_with_ctr)
        keep = select_detections(boxes, scores, classes, nms_thresh, post_nms_topk)
        result = Instances(image_size)
        result.pred_boxes = Boxes(boxes[keep])
        result.scores = scores[keep]
        result.pred_classes = classes[keep]
        result.locations = points[keep]
        result.fpn_levels = levels[keep]
        if feats is not None:
            result.top_feat = feats[keep]
        results.append(result)
    return results
