"""EmbedMask (Ying et al., "Embedding Coupling for One-stage Instance Segmentation"), as in the first author's
AdelaiDet fork.

FCOS detects objects on P3..P7; at each detection's location the proposal head predicts an embedding and a margin
(per-dimension precision). The mask branch and pixel head predict one embedding per stride-8 pixel. A detection's
mask is the coupling probability exp(-sum_d margin_d (pixel_d - proposal_d)^2) over the whole image, upsampled and
thresholded at 0.5. Training adds a Lovasz hinge mask loss and an auxiliary semantic loss to the FCOS losses.

Shapes: N images, R locations over all levels, P proposals (detections or positives), M ground-truth instances,
K classes, D embedding dimensions.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from adet.layers import aligned_bilinear, image_mask_probability, mask_probability
from adet.layers.mask_losses import dice_loss_on_probabilities, lovasz_loss_on_probabilities
from adet.structures import ImageList, Instances, PolygonMasks, polygons_to_bitmask

from ..backbone.fpn import FPN
from ..fcos import FCOS, Detections, FCOSOutputs, LocationTargets
from ..fcos.targets import flatten_level_first
from .heads import EmbedHead, ProposalHead
from .mask_branch import MaskBranch
from .positives import Positives, select_for_mask_loss
from .postprocess import postprocess

# The loss terms, in the order the model returns them (the trainer sums them in this order).
LOSS_TERMS = ("loss_sem", "loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr", "loss_mask")


@dataclass
class NetworkOutputs:
    """What the network computes for a batch, before any decoding or loss."""

    pixel_embeddings: torch.Tensor  # (N, D, H_pad/8, W_pad/8)
    fcos: FCOSOutputs
    proposal_embeddings: list[torch.Tensor]  # per level (N, D, H_l, W_l)
    proposal_margins: list[torch.Tensor]  # per level (N, D, H_l, W_l), > 0
    semantic_losses: dict[str, torch.Tensor]  # {"loss_sem": ...} in training with MASK_BRANCH.SEMANTIC_LOSS_ON


class EmbedMask(nn.Module):
    """Input: detectron2's ``batched_inputs``, a list of dicts with ``image`` (3, H, W) BGR 0..255 tensor (uint8
    or float), optional ``height``/``width`` (output size) and, in training, ``instances`` with ``gt_boxes``,
    ``gt_classes`` and ``gt_masks`` (PolygonMasks or BitMasks).

    Output: training, a dict of weighted losses (:data:`LOSS_TERMS`); eval, ``[{"instances": Instances}]`` per
    image with ``pred_boxes``, ``scores``, ``pred_classes`` and ``pred_masks`` in output-size pixels.

    Args:
        loss_weights: how much each term of :data:`LOSS_TERMS` counts (1 unless given): the one place the losses
            are weighted.
        max_proposals, topk_proposals_per_im: which positives train the masks (:func:`select_for_mask_loss`).
        inference_dtype: the network's precision at inference (autocast); decoding and the coupling run in
            float32 regardless.
    """

    def __init__(self, *, backbone: FPN, proposal_generator: FCOS, mask_branch: MaskBranch,
                 proposal_head: ProposalHead, pixel_head: EmbedHead, pixel_mean: list[float], pixel_std: list[float],
                 mask_out_stride: int = 4, max_proposals: int = -1, topk_proposals_per_im: int = -1,
                 mask_threshold: float = 0.5, mask_loss_type: str = "Lovasz",
                 loss_weights: dict[str, float] | None = None, inference_dtype: torch.dtype = torch.float32):
        super().__init__()
        if max_proposals != -1 and topk_proposals_per_im != -1:
            raise ValueError("MODEL.EMBEDMASK: MAX_PROPOSALS and TOPK_PROPOSALS_PER_IM cannot both be set")
        if mask_loss_type not in ("Lovasz", "Dice"):
            raise ValueError(f"MODEL.EMBEDMASK.MASK_LOSS_TYPE must be 'Lovasz' or 'Dice', got '{mask_loss_type}'")
        if mask_branch.out_stride % mask_out_stride:
            raise ValueError(f"MODEL.EMBEDMASK.MASK_OUT_STRIDE ({mask_out_stride}) must divide the mask-branch "
                             f"stride ({mask_branch.out_stride})")
        unknown = sorted(set(loss_weights or {}) - set(LOSS_TERMS))
        if unknown:
            raise ValueError(f"loss_weights: unknown terms {unknown}; the terms are {list(LOSS_TERMS)}")
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
        self.loss_weights = {term: 1.0 for term in LOSS_TERMS} | dict(loss_weights or {})
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

    @property
    def size_divisibility(self) -> int:
        """Inputs are padded to multiples of this (the coarsest backbone stride)."""
        return self.backbone.size_divisibility

    def forward(self, batched_inputs: list[dict[str, Any]]):
        """Weighted losses in training; per-image results in eval."""
        images = self.preprocess(batched_inputs)
        if self.training:
            if any("instances" not in x for x in batched_inputs):
                raise ValueError("training needs 'instances' in every input dict")
            return self.losses(images, [x["instances"].to(self.device, non_blocking=True) for x in batched_inputs])
        return self.postprocess(self.detect(images.tensor, image_sizes_tensor(images)), images, batched_inputs)

    # ---- the network -------------------------------------------------------------------------------------------------
    def preprocess(self, batched_inputs: list[dict[str, Any]]) -> ImageList:
        """The batch's raw images zero-padded at the bottom/right to a common size, a multiple of 32."""
        # non_blocking: from a pinned batch (a loader on a GPU run) the copy overlaps the work already queued.
        return ImageList.from_tensors([x["image"].to(self.device, non_blocking=True) for x in batched_inputs],
                                      self.size_divisibility)

    def normalize(self, images: torch.Tensor, image_sizes: torch.Tensor) -> torch.Tensor:
        """(N, 3, H_pad, W_pad) raw pixels -> normalised, and 0 outside each image's (h, w) in ``image_sizes``
        (N, 2): the padding of a normalised image, as the official model saw it."""
        normalised = (images - self.pixel_mean) / self.pixel_std
        rows = torch.arange(images.shape[-2], device=images.device)[None, :, None] < image_sizes[:, 0, None, None]
        cols = torch.arange(images.shape[-1], device=images.device)[None, None, :] < image_sizes[:, 1, None, None]
        inside = (rows & cols)[:, None]  # (N, 1, H_pad, W_pad)
        normalised = torch.where(inside, normalised, torch.zeros((), dtype=normalised.dtype, device=images.device))
        return normalised.contiguous(memory_format=self.input_memory_format)

    def network(self, images: torch.Tensor, image_sizes: torch.Tensor, gt_instances: list[Instances] | None = None
                ) -> NetworkOutputs:
        """Everything with weights, on padded raw images and their sizes (see :meth:`detect`)."""
        features = self.backbone(self.normalize(images, image_sizes))
        mask_features, semantic_losses = self.mask_branch(features, gt_instances)
        pixel_embeddings = self.pixel_head(mask_features, self.mask_branch.out_stride)
        fcos = self.proposal_generator(features)
        embeddings, margins = zip(*(self.proposal_head(box_tower, level)
                                    for level, box_tower in enumerate(fcos.box_towers)))
        return NetworkOutputs(pixel_embeddings, fcos, list(embeddings), list(margins), semantic_losses)

    # ---- training ----------------------------------------------------------------------------------------------------
    def losses(self, images: ImageList, gt_instances: list[Instances]) -> dict[str, torch.Tensor]:
        self.add_bitmasks(gt_instances, *images.tensor.shape[-2:])
        outputs = self.network(images.tensor, image_sizes_tensor(images), gt_instances)
        targets = self.proposal_generator.targets(outputs.fcos, gt_instances)
        losses = {**outputs.semantic_losses, **self.proposal_generator.losses(outputs.fcos, targets)}
        losses["loss_mask"] = self.mask_loss(self.positives(outputs, targets), outputs.pixel_embeddings,
                                             gt_instances)
        return {term: value * self.loss_weights[term] for term, value in losses.items()}

    def positives(self, outputs: NetworkOutputs, targets: LocationTargets) -> Positives:
        """What the proposal head predicted at every location assigned to an object."""
        positive = torch.nonzero(targets.labels != self.proposal_generator.num_classes).squeeze(1)  # (P,)
        with torch.no_grad():
            class_probs = flatten_level_first(outputs.fcos.class_logits)[positive].sigmoid()  # (P, K)
            ctr_probs = flatten_level_first(outputs.fcos.ctrness_logits)[positive, 0].sigmoid()
        return Positives(embeddings=flatten_level_first(outputs.proposal_embeddings)[positive],
                         margins=flatten_level_first(outputs.proposal_margins)[positive],
                         gt_index=targets.gt_index[positive], image_index=targets.image_index[positive],
                         scores=class_probs.max(dim=1)[0] * ctr_probs)

    def mask_loss(self, positives: Positives, pixel_embeddings: torch.Tensor,
                  gt_instances: list[Instances]) -> torch.Tensor:
        """The mean Lovasz (or Dice) loss of the selected positives' masks at MASK_OUT_STRIDE."""
        proposals = select_for_mask_loss(positives, self.max_proposals, self.topk_proposals_per_im)
        if len(proposals) == 0:
            # Keep every input in the graph so DDP sees gradients (zeros) for all parameters.
            return pixel_embeddings.sum() * 0 + positives.embeddings.sum() * 0 + positives.margins.sum() * 0
        gt_bitmasks = torch.cat([gt.gt_bitmasks for gt in gt_instances])[proposals.gt_index]  # (P, H/4, W/4)
        # In float32 also under autocast: in half precision exp(-distance) loses the tails that rank masks.
        with torch.autocast(pixel_embeddings.device.type, enabled=False):
            probs = mask_probability(pixel_embeddings, proposals.embeddings, proposals.margins, proposals.image_index)
        factor = self.mask_branch.out_stride // self.mask_out_stride
        probs = aligned_bilinear(probs.unsqueeze(1), factor)  # (P, 1, H/4, W/4)
        if self.mask_loss_type == "Lovasz":
            per_proposal = lovasz_loss_on_probabilities(probs, gt_bitmasks.to(probs.dtype))
        else:
            per_proposal = dice_loss_on_probabilities(probs, gt_bitmasks)
        return per_proposal.mean()

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
    def detect(self, images: torch.Tensor, image_sizes: torch.Tensor) -> list[Detections]:
        """The detections of each image at network resolution, with their (P, H_pad/8, W_pad/8) coupling
        probabilities: the one inference path, run eagerly, by test-time augmentation and in the exported graph
        (tensor operations only).

        Args:
            images: (N, 3, H_pad, W_pad) raw BGR pixels, zero-padded to multiples of :attr:`size_divisibility`.
            image_sizes: (N, 2) int64 (h, w) of each image before padding.
        """
        with self.network_precision():
            outputs = self.network(images, image_sizes)
        # (N, D, R): the proposal head's outputs at every location, levels concatenated.
        embeddings = torch.cat([e.flatten(2) for e in outputs.proposal_embeddings], dim=2)
        margins = torch.cat([m.flatten(2) for m in outputs.proposal_margins], dim=2)
        detections = []
        for image in range(images.shape[0]):
            found = self.proposal_generator.detect(outputs.fcos, image)
            rows = found.location_index
            found.mask_probs = image_mask_probability(outputs.pixel_embeddings[image], embeddings[image][:, rows].t(),
                                                      margins[image][:, rows].t())
            detections.append(found)
        return detections

    def network_precision(self) -> contextlib.AbstractContextManager:
        """Autocast to MODEL.INFERENCE_DTYPE at inference; nothing at all in float32 (an exported graph has no
        autocast regions)."""
        if self.training or self.inference_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.inference_dtype)

    def postprocess(self, detections: list[Detections], images: ImageList, batched_inputs: list[dict[str, Any]]
                    ) -> list[dict[str, Instances]]:
        """Detections in each input's ``height`` x ``width`` (default: the network input size), with masks."""
        processed = []
        padded_size = tuple(images.tensor.shape[-2:])
        for found, image_size, inputs in zip(detections, images.image_sizes, batched_inputs):
            instances = found.to_instances(image_size)
            height, width = inputs.get("height", image_size[0]), inputs.get("width", image_size[1])
            processed.append({"instances": postprocess(instances, height, width, padded_size, self.mask_threshold,
                                                       self.mask_out_stride)})
        return processed


def image_sizes_tensor(images: ImageList) -> torch.Tensor:
    """(N, 2) int64 (h, w) of the batch's images before padding."""
    return torch.tensor(images.image_sizes, dtype=torch.int64, device=images.tensor.device).reshape(-1, 2)
