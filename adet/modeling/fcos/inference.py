"""FCOS detections from head outputs: threshold, per-level top-k, boxes, class-aware NMS, and a global top-k.

The steps are written on tensors alone (no Python numbers read from tensors, no branches on data), so the very same
functions run eagerly and in an exported ONNX graph (adet/export/). They keep AdelaiDet's ``predict_proposals``
semantics (spec section 4.4); only the order of equally scored candidates may differ.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.ops import nms

from adet.structures import Boxes, Instances


@dataclass
class Detections:
    """The P detections of one image, by decreasing score, in network-input pixels (before any rescaling)."""

    boxes: torch.Tensor  # (P, 4) XYXY
    scores: torch.Tensor  # (P,) sqrt(class probability x centerness)
    classes: torch.Tensor  # (P,) int64 contiguous class ids
    locations: torch.Tensor  # (P, 2) x, y of the cell that predicted each
    levels: torch.Tensor  # (P,) int64 its FPN level
    location_index: torch.Tensor  # (P,) its row among the image's locations, levels concatenated
    mask_probs: torch.Tensor | None = None  # (P, H_pad/8, W_pad/8) coupling probabilities, set by EmbedMask

    def to_instances(self, image_size: tuple[int, int]) -> Instances:
        """detectron2's Instances with ``pred_boxes``, ``scores``, ``pred_classes``, ``locations``, ``fpn_levels``
        (and ``mask_probs``), for an image of ``image_size`` (h, w)."""
        fields = {"pred_boxes": Boxes(self.boxes), "scores": self.scores, "pred_classes": self.classes,
                  "locations": self.locations, "fpn_levels": self.levels}
        if self.mask_probs is not None:
            fields["mask_probs"] = self.mask_probs
        return Instances(image_size, **fields)


def level_candidates(locations: torch.Tensor, logits: torch.Tensor, ltrb_px: torch.Tensor, ctrness: torch.Tensor,
                     score_thresh: float, pre_nms_topk: int, thresh_with_ctr: bool) -> tuple[torch.Tensor, ...]:
    """Candidates of one FPN level of one image: every (location, class) above the threshold, at most
    ``pre_nms_topk`` of them (the best).

    Args:
        locations: (H*W, 2) cell centres in input pixels.
        logits: (K, H, W) class logits.
        ltrb_px: (4, H, W) left/top/right/bottom distances in input pixels.
        ctrness: (1, H, W) centerness logits.

    Returns:
        boxes (n, 4) XYXY, scores (n,) = sqrt(cls * ctr), classes (n,), locations (n, 2), location_index (n,) (the
        row in ``locations``); in location-major order (then class), as the official code's nonzero() gives them.
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
    chosen_ltrb_px = ltrb_px.reshape(4, -1)[:, location_index]  # (4, n)
    points = locations[location_index]  # (n, 2)
    boxes = torch.stack([points[:, 0] - chosen_ltrb_px[0], points[:, 1] - chosen_ltrb_px[1],
                         points[:, 0] + chosen_ltrb_px[2], points[:, 1] + chosen_ltrb_px[3]], dim=1)
    return boxes, torch.sqrt(flat[chosen]), classes, points, location_index


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


def detect_image(locations: list[torch.Tensor], logits: list[torch.Tensor], ltrb_strides: list[torch.Tensor],
                 ctrness: list[torch.Tensor], strides: list[int], score_thresh: float, pre_nms_topk: int,
                 post_nms_topk: int, nms_thresh: float, thresh_with_ctr: bool) -> Detections:
    """The detections of one image from its head outputs per level (no batch dimension: logits (K, H_l, W_l),
    ltrb_strides (4, H_l, W_l), ctrness (1, H_l, W_l)) and the levels' locations (H_l * W_l, 2)."""
    parts, first_row = [], 0
    for level, stride in enumerate(strides):
        *candidates, location_index = level_candidates(locations[level], logits[level], ltrb_strides[level] * stride,
                                                       ctrness[level], score_thresh, pre_nms_topk, thresh_with_ctr)
        parts.append((*candidates, torch.full_like(candidates[2], level), location_index + first_row))
        first_row += locations[level].shape[0]
    boxes, scores, classes, points, levels, rows = (torch.cat(list(column)) for column in zip(*parts))
    keep = select_detections(boxes, scores, classes, nms_thresh, post_nms_topk)
    return Detections(boxes[keep], scores[keep], classes[keep], points[keep], levels[keep], rows[keep])
