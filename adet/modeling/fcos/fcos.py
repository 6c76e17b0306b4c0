"""FCOS as EmbedMask's proposal generator: the head on P3..P7, training targets and losses, and inference."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from adet.layers import compute_locations
from adet.structures import ImageList, Instances

from .head import FCOSHead
from .inference import predict_detections
from .losses import fcos_losses
from .targets import INF, compute_targets, flatten_level_first


class FCOS(nn.Module):
    """Module name ``proposal_generator`` in the model; its only weights are ``fcos_head.*``."""

    def __init__(self, head: FCOSHead, in_features: list[str], strides: list[int], sizes_of_interest: list[int],
                 center_sample: bool = True, pos_radius: float = 1.5, sample_in_mask: bool = False,
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0, loss_weight_cls: float = 1.0,
                 score_thresh_test: float = 0.05, pre_nms_topk_test: int = 1000, post_nms_topk_test: int = 100,
                 nms_thresh: float = 0.6, thresh_with_ctr: bool = False):
        super().__init__()
        self.fcos_head = head
        self.in_features = list(in_features)
        self.strides = list(strides)
        # Inclusive [min, max] of max(l, t, r, b) per level: [-1, 64], [64, 128], ..., [512, INF].
        bounds = [-1, *sizes_of_interest, INF]
        self.size_ranges = [[bounds[i], bounds[i + 1]] for i in range(len(strides))]
        self.center_sample = center_sample
        self.pos_radius = pos_radius
        self.sample_in_mask = sample_in_mask
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.loss_weight_cls = loss_weight_cls
        self.score_thresh_test = score_thresh_test
        self.pre_nms_topk_test = pre_nms_topk_test
        self.post_nms_topk_test = post_nms_topk_test
        self.nms_thresh = nms_thresh
        self.thresh_with_ctr = thresh_with_ctr

    def locations(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per level, (H_l * W_l, 2) cell centres in input pixels."""
        return [compute_locations(f.shape[-2], f.shape[-1], stride, f.device)
                for f, stride in zip(features, self.strides)]

    def forward(self, images: ImageList, features: dict[str, torch.Tensor], gt_instances: list[Instances] | None,
                top_module: Callable[[torch.Tensor, int], torch.Tensor] | None):
        """Training: (positive-location Instances, loss dict). Inference: (list of per-image detections, {})."""
        features = [features[f] for f in self.in_features]
        locations = self.locations(features)
        logits, ltrb, ctrness, top_feats = self.fcos_head(features, top_module)
        if self.training:
            targets = compute_targets(locations, gt_instances, self.strides, self.size_ranges,
                                      self.fcos_head.num_classes, self.center_sample, self.pos_radius,
                                      self.sample_in_mask)
            predictions = flatten_level_first(logits, ltrb, ctrness, top_feats)
            return fcos_losses(targets, predictions, self.focal_alpha, self.focal_gamma, self.loss_weight_cls)
        # Decoding in float32 also when the network runs in lower precision (MODEL.INFERENCE_DTYPE).
        logits, ltrb, ctrness, top_feats = ([t.float() for t in ts] for ts in (logits, ltrb, ctrness, top_feats))
        with torch.autocast(images.tensor.device.type, enabled=False):
            detections = predict_detections(
                locations, logits, ltrb, ctrness, top_feats, self.strides, images.image_sizes,
                self.score_thresh_test, self.pre_nms_topk_test, self.post_nms_topk_test, self.nms_thresh,
                self.thresh_with_ctr)
        return detections, {}


def build_fcos(cfg, in_channels: int) -> FCOS:
    fcos = cfg.MODEL.FCOS
    if fcos.USE_DEFORMABLE:
        raise ValueError("MODEL.FCOS.USE_DEFORMABLE is not supported")
    if fcos.BOX_QUALITY != "ctrness" or fcos.LOC_LOSS_TYPE != "giou" or fcos.LOSS_NORMALIZER_CLS != "fg":
        raise ValueError("MODEL.FCOS: only BOX_QUALITY 'ctrness', LOC_LOSS_TYPE 'giou' and LOSS_NORMALIZER_CLS 'fg' "
                         "(the EmbedMask settings) are supported")
    if len(fcos.FPN_STRIDES) != len(fcos.IN_FEATURES) or len(fcos.SIZES_OF_INTEREST) != len(fcos.IN_FEATURES) - 1:
        raise ValueError("MODEL.FCOS: FPN_STRIDES needs one entry per IN_FEATURES level and SIZES_OF_INTEREST one "
                         "fewer")
    head = FCOSHead(in_channels, fcos.NUM_CLASSES, len(fcos.IN_FEATURES), fcos.NUM_CLS_CONVS, fcos.NUM_BOX_CONVS,
                    fcos.NUM_SHARE_CONVS, fcos.NORM, fcos.USE_SCALE, fcos.PRIOR_PROB)
    return FCOS(head, fcos.IN_FEATURES, fcos.FPN_STRIDES, fcos.SIZES_OF_INTEREST, fcos.CENTER_SAMPLE,
                fcos.POS_RADIUS, cfg.MODEL.EMBEDMASK.SAMPLE_IN_MASK, fcos.LOSS_ALPHA, fcos.LOSS_GAMMA,
                fcos.LOSS_WEIGHT_CLS, fcos.INFERENCE_TH_TEST, fcos.PRE_NMS_TOPK_TEST, fcos.POST_NMS_TOPK_TEST,
                fcos.NMS_TH, fcos.THRESH_WITH_CTR)
