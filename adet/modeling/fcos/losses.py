"""FCOS losses: focal classification, GIoU box regression weighted by centerness, centerness BCE (spec 4.3).

The classification and centerness terms are normalised by the number of positives averaged over processes, the box
term by the summed centerness targets averaged over processes, so every GPU's loss has the same scale.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from adet.utils.comm import reduce_mean

from .targets import LocationTargets


def centerness_targets(ltrb: torch.Tensor) -> torch.Tensor:
    """(P,) sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)) of (P, 4) ltrb distances."""
    if len(ltrb) == 0:
        return ltrb.new_zeros(0)
    left_right, top_bottom = ltrb[:, [0, 2]], ltrb[:, [1, 3]]
    ratio = (left_right.min(dim=-1)[0] / left_right.max(dim=-1)[0]) * \
            (top_bottom.min(dim=-1)[0] / top_bottom.max(dim=-1)[0])
    return torch.sqrt(ratio)


def giou_ltrb(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IoU and GIoU of boxes given as (P, 4) ltrb distances from one shared point.

    IoU is +1-smoothed, (inter + 1) / (union + 1), as in the official code; GIoU has no epsilon.
    """
    pred_l, pred_t, pred_r, pred_b = pred.unbind(-1)
    target_l, target_t, target_r, target_b = target.unbind(-1)
    target_area = (target_l + target_r) * (target_t + target_b)
    pred_area = (pred_l + pred_r) * (pred_t + pred_b)
    inter_w = torch.min(pred_l, target_l) + torch.min(pred_r, target_r)
    inter_h = torch.min(pred_b, target_b) + torch.min(pred_t, target_t)
    enclosing_w = torch.max(pred_l, target_l) + torch.max(pred_r, target_r)
    enclosing_h = torch.max(pred_b, target_b) + torch.max(pred_t, target_t)
    enclosing = enclosing_w * enclosing_h
    inter = inter_w * inter_h
    union = target_area + pred_area - inter
    ious = (inter + 1.0) / (union + 1.0)
    gious = ious - (enclosing - union) / enclosing
    return ious, gious


def fcos_losses(class_logits: torch.Tensor, ltrb_strides: torch.Tensor, ctrness_logits: torch.Tensor,
                targets: LocationTargets, strides: torch.Tensor, focal_alpha: float, focal_gamma: float
                ) -> dict[str, torch.Tensor]:
    """``loss_fcos_cls``, ``loss_fcos_loc`` and ``loss_fcos_ctr`` (unweighted) over all R locations of a batch.

    Args:
        class_logits: (R, K); ltrb_strides: (R, 4) predicted distances in strides; ctrness_logits: (R,).
        targets: what each location must predict (rows in the same order).
        strides: (L,) float, the stride of each FPN level.
    """
    num_classes = class_logits.shape[1]
    positive = torch.nonzero(targets.labels != num_classes).squeeze(1)  # (P,)
    num_pos_avg = max(reduce_mean(torch.ones_like(positive).sum()).item(), 1.0)

    class_targets = torch.zeros_like(class_logits)
    class_targets[positive, targets.labels[positive]] = 1
    loss_cls = sigmoid_focal_loss(class_logits, class_targets, alpha=focal_alpha, gamma=focal_gamma,
                                  reduction="sum") / num_pos_avg

    # The official code regresses in units of each level's stride.
    target_ltrb = targets.ltrb_px[positive] / strides[targets.level[positive]][:, None]  # (P, 4)
    _, gious = giou_ltrb(ltrb_strides[positive], target_ltrb)
    ctr_targets = centerness_targets(target_ltrb)
    loss_denorm = max(reduce_mean(ctr_targets.sum()).item(), 1e-6)
    loss_loc = ((1 - gious) * ctr_targets).sum() / loss_denorm
    loss_ctr = F.binary_cross_entropy_with_logits(ctrness_logits[positive], ctr_targets, reduction="sum") / num_pos_avg
    return {"loss_fcos_cls": loss_cls, "loss_fcos_loc": loss_loc, "loss_fcos_ctr": loss_ctr}
