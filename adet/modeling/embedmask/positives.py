"""The positive locations of a training batch as the mask loss sees them, and which of them it trains on
(spec 5.6)."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class Positives:
    """The P locations FCOS assigned to an object, with what the proposal head predicted there."""

    embeddings: torch.Tensor  # (P, D) proposal embeddings
    margins: torch.Tensor  # (P, D) proposal margins
    gt_index: torch.Tensor  # (P,) int64 index into the batch's GTs concatenated image by image
    image_index: torch.Tensor  # (P,) int64
    scores: torch.Tensor  # (P,) max class probability x centerness, no gradient (TOPK_PROPOSALS_PER_IM ranks by it)

    def __len__(self) -> int:
        return len(self.gt_index)

    def __getitem__(self, index: torch.Tensor) -> Positives:
        return Positives(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


def select_for_mask_loss(positives: Positives, max_proposals: int = -1, topk_per_image: int = -1) -> Positives:
    """All positives; or, with ``max_proposals``, a uniformly random ``max_proposals`` of them (torch's RNG);
    or, with ``topk_per_image``, per image that many split evenly over its objects (at least one each), the best
    scoring of each object's positives. The selection keeps the positives' order (the official code's)."""
    if max_proposals != -1 and topk_per_image != -1:
        raise ValueError("MODEL.EMBEDMASK: MAX_PROPOSALS and TOPK_PROPOSALS_PER_IM cannot both be set")
    if max_proposals != -1:
        if max_proposals < len(positives):
            order = torch.randperm(len(positives), device=positives.gt_index.device).long()
            positives = positives[order[:max_proposals]]
        return positives
    if topk_per_image == -1:
        return positives
    kept = []
    for image in positives.image_index.unique(sorted=True).tolist():
        in_image = (positives.image_index == image).nonzero().squeeze(1)
        objects = positives.gt_index[in_image].unique()
        per_object = max(int(topk_per_image / len(objects)), 1)
        for gt in objects:
            candidates = in_image[positives.gt_index[in_image] == gt]
            if len(candidates) > per_object:
                candidates = candidates[positives.scores[candidates].topk(k=per_object, dim=0)[1]]
            kept.append(candidates)
    return positives[torch.cat(kept)] if kept else positives[:0]
