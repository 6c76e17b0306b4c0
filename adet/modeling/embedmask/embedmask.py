"""EmbedMask (Ying et al., "Embedding Coupling for One-stage Instance Segmentation"), as in the first author's
AdelaiDet fork.

FCOS detects objects on P3..P7; at each detection's location the proposal head predicts an embedding and a margin
(per-dimension precision). The mask branch and pixel head predict one embedding per stride-8 pixel. A detection's
mask is the coupling probability exp(-sum_d margin_d (pixel_d - proposal_d)^2) over the whole image, upsampled and
thresholded at 0.5. Training adds a Lovasz hinge mask loss and an auxiliary semantic loss to the FCOS losses.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from adet.layers import aligned_bilinear, mask_probability
from adet.layers.mask_losses import dice_loss_on_probabilities, lovasz_loss_on_probabilities
from adet.structures import ImageList, Instances, PolygonMasks, polygons_to_bitmask

from ..backbone.fpn import FPN
from ..fcos import FCOS
from .heads import EmbedHead, ProposalHead
from .mask_branch import MaskBranch
from .postprocess import postprocess

logger = logging.getLogger(__name__)


class EmbedMask(nn.Module):
    """Input: detectron2's ``batched_inputs``, a list of dicts with ``image`` (3, H, W) BGR 0..255 tensor,
    optional ``height``/``width`` (output size) and, in training, ``instances`` with ``gt_boxes``, ``gt_classes``
    and ``gt_masks`` (PolygonMasks or BitMasks).

    Output: training, a dict of losses; eval, ``[{"instances": Instances}]`` per image with ``pred_boxes``,
    ``scores``, ``pred_classes`` and ``pred_masks`` in output-size pixels.
    """

    def __init__(self, backbone: FPN, proposal_generator: FCOS, mask_branch: MaskBranch, proposal_head: ProposalHead,
                 pixel_head: EmbedHead, pixel_mean: list[float], pixel_std: list[float], mask_out_stride: int = 4,
                 max_proposals: int = -1, topk_proposals_per_im: int = -1, mask_threshold: float = 0.5,
                 mask_loss_type: str = "Lovasz", mask_loss_alpha: float = 1.0,
                 inference_dtype: torch.dtype = torch.float32):
        super().__init__()
        if max_proposals != -1 and topk_proposals_per_im != -1:
            raise ValueError("MODEL.EMBEDMASK: MAX_PROPOSALS and TOPK_PROPOSALS_PER_IM cannot both be set")
        if mask_loss_type not in ("Lovasz", "Dice"):
            raise ValueError(f"MODEL.EMBEDMASK.MASK_LOSS_TYPE must be 'Lovasz' or 'Dice', got '{mask_loss_type}'")
        self.backbone = backbone
        self.proposal_generator = proposal_generator
        self.mask_branch = mask_branch
        self.proposal_head = proposal_head
        self.pixel_head = pixel_head
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(3, 1, 1), False)
        self.mask_out_stride = mask_out_stride
        self.max_proposals = max_proposals
        self.topk_proposals_per_im = topk_proposals_per_im
        self.mask_threshold = mask_threshold
        self.mask_loss_type = mask_loss_type
        self.mask_loss_alpha = mask_loss_alpha
        # The network's precision at inference (autocast); decoding and the coupling run in float32 regardless.
        self.inference_dtype = inference_dtype
        # Class names and dataset category ids (e.g. COCO's) of the data the weights were trained on, saved in our
        # checkpoints: labels and scorable results without the dataset at hand.
        self.class_names: list[str] | None = None
        self.category_ids: list[int] | None = None
        # channels_last after prepare_for_inference on the CPU.
        self.input_memory_format = torch.contiguous_format

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess(self, batched_inputs: list[dict[str, Any]]) -> ImageList:
        """Normalise each image, then zero-pad the batch (in normalised space) to a multiple of 32."""
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        images = ImageList.from_tensors(images, self.backbone.size_divisibility)
        images.tensor = images.tensor.contiguous(memory_format=self.input_memory_format)
        return images

    def forward(self, batched_inputs: list[dict[str, Any]], do_postprocess: bool = True):
        """Losses in training; in eval, per-image results (``do_postprocess=False``: raw detections at network
        resolution with stride-8 ``mask_probs``; :meth:`postprocess_results` finishes them)."""
        low_precision = not self.training and self.inference_dtype != torch.float32
        with torch.autocast(self.device.type, dtype=self.inference_dtype, enabled=low_precision):
            return self._forward(batched_inputs, do_postprocess)

    def _forward(self, batched_inputs: list[dict[str, Any]], do_postprocess: bool):
        images = self.preprocess(batched_inputs)
        features = self.backbone(images.tensor)
        gt_instances = None
        if self.training:
            if any("instances" not in x for x in batched_inputs):
                raise ValueError("training needs 'instances' in every input dict")
            gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
            self.add_bitmasks(gt_instances, *images.tensor.shape[-2:])

        mask_features, sem_losses = self.mask_branch(features, gt_instances)
        pixel_embeddings = self.pixel_head(mask_features, self.mask_branch.out_stride)  # (N, D, H/8, W/8)
        proposals, proposal_losses = self.proposal_generator(images, features, gt_instances, self.proposal_head)

        if self.training:
            losses = {**sem_losses, **proposal_losses}
            losses.update(self.mask_losses(proposals, pixel_embeddings, gt_instances))
            return losses
        detections = self.inference(proposals, pixel_embeddings)
        if not do_postprocess:
            return detections
        return self.postprocess_results(detections, batched_inputs, tuple(images.tensor.shape[-2:]))

    # ---- masks -------------------------------------------------------------------------------------------------------
    def coupling(self, pixel_embeddings: torch.Tensor, top_feats: torch.Tensor, image_indices: torch.Tensor
                 ) -> torch.Tensor:
        """(P, H/8, W/8) coupling probabilities at the pixel embeddings' stride, in float32 also under autocast
        (in half precision exp(-distance) loses the tails that rank and threshold masks)."""
        dim = pixel_embeddings.shape[1]
        with torch.autocast(pixel_embeddings.device.type, enabled=False):
            return mask_probability(pixel_embeddings, top_feats[:, :dim], top_feats[:, dim:], image_indices)

    def mask_probabilities(self, pixel_embeddings: torch.Tensor, top_feats: torch.Tensor,
                           image_indices: torch.Tensor) -> torch.Tensor:
        """(P, 1, H/4, W/4): the coupling upsampled (aligned x2) to MASK_OUT_STRIDE, where the loss compares it with
        the ground truth."""
        probs = self.coupling(pixel_embeddings, top_feats, image_indices)
        factor = self.mask_branch.out_stride // self.mask_out_stride
        return aligned_bilinear(probs.unsqueeze(1), factor)

    def select_training_proposals(self, positives: Instances) -> Instances:
        """All positive locations, or a uniformly random MAX_PROPOSALS of them, or TOPK_PROPOSALS_PER_IM per image
        split over its GTs by cls * ctr score (spec 5.6)."""
        if self.max_proposals != -1:
            if self.max_proposals < len(positives):
                order = torch.randperm(len(positives), device=positives.gt_inds.device).long()
                logger.debug("clipping proposals from %d to %d", len(positives), self.max_proposals)
                positives = positives[order[: self.max_proposals]]
            return positives
        if self.topk_proposals_per_im == -1:
            return positives
        kept = []
        for image_index in positives.im_inds.unique(sorted=True).tolist():
            per_image = positives[positives.im_inds == image_index]
            gt_indices = per_image.gt_inds.unique()
            per_gt = max(int(self.topk_proposals_per_im / len(gt_indices)), 1)
            for gt_index in gt_indices:
                candidates = per_image[per_image.gt_inds == gt_index]
                if len(candidates) > per_gt:
                    quality = candidates.logits_pred.sigmoid().max(dim=1)[0] * candidates.ctrness_pred.sigmoid()
                    candidates = candidates[quality.topk(k=per_gt, dim=0)[1]]
                kept.append(candidates)
        return Instances.cat(kept) if kept else positives[:0]

    def mask_losses(self, positives: Instances, pixel_embeddings: torch.Tensor,
                    gt_instances: list[Instances]) -> dict[str, torch.Tensor]:
        proposals = self.select_training_proposals(positives)
        if len(proposals) == 0:
            # Keep every input in the graph so DDP sees gradients (zeros) for all parameters.
            dummy = pixel_embeddings.sum() * 0 + positives.top_feats.sum() * 0
            return {"loss_mask": dummy}
        gt_bitmasks = torch.cat([gt.gt_bitmasks for gt in gt_instances])[proposals.gt_inds]  # (P, H/4, W/4)
        probs = self.mask_probabilities(pixel_embeddings, proposals.top_feats, proposals.im_inds)
        if self.mask_loss_type == "Lovasz":
            per_proposal = lovasz_loss_on_probabilities(probs, gt_bitmasks.to(probs.dtype))
        else:
            per_proposal = dice_loss_on_probabilities(probs, gt_bitmasks)
        return {"loss_mask": per_proposal.mean() * self.mask_loss_alpha}

    def add_bitmasks(self, gt_instances: list[Instances], padded_h: int, padded_w: int) -> None:
        """Rasterise GT masks at the padded input size: ``gt_bitmasks_full`` (M, H_pad, W_pad) for the centre
        sampling and semantic targets, and ``gt_bitmasks`` (M, H_pad/4, W_pad/4) sampled at the centres of the
        stride-4 cells ([2::4, 2::4]) for the mask loss."""
        stride, start = self.mask_out_stride, self.mask_out_stride // 2
        for gt in gt_instances:
            if not gt.has("gt_masks"):
                raise ValueError("training instances need 'gt_masks' (PolygonMasks or BitMasks)")
            masks = gt.gt_masks
            if isinstance(masks, PolygonMasks):
                full = [torch.from_numpy(polygons_to_bitmask(p, padded_h, padded_w)) for p in masks.polygons]
                full = torch.stack(full).to(self.device).float() if full else torch.zeros(
                    0, padded_h, padded_w, device=self.device)
            else:
                bitmasks = masks.tensor.to(self.device).float()
                h, w = bitmasks.shape[1:]
                full = F.pad(bitmasks, (0, padded_w - w, 0, padded_h - h), "constant", 0)
            gt.gt_bitmasks_full = full
            gt.gt_bitmasks = full[:, start::stride, start::stride]

    # ---- inference ---------------------------------------------------------------------------------------------------
    def inference(self, detections: list[Instances], pixel_embeddings: torch.Tensor) -> list[Instances]:
        """Adds ``mask_probs`` (K, H_pad/8, W_pad/8), the coupling probabilities, to each image's detections."""
        for image_index, instances in enumerate(detections):
            image_indices = torch.full((len(instances),), image_index, dtype=torch.long, device=self.device)
            instances.mask_probs = self.coupling(pixel_embeddings, instances.top_feat, image_indices)
        return detections

    def postprocess_results(self, detections: list[Instances], batched_inputs: list[dict[str, Any]],
                            padded_size: tuple[int, int]) -> list[dict[str, Instances]]:
        """Detections in each input's ``height`` x ``width`` (default: the network input size)."""
        processed = []
        for instances, inputs in zip(detections, batched_inputs):
            height = inputs.get("height", instances.image_size[0])
            width = inputs.get("width", instances.image_size[1])
            processed.append({"instances": postprocess(instances, height, width, padded_size, self.mask_threshold,
                                                       self.mask_out_stride)})
        return processed
