"""FCOS as EmbedMask's proposal generator: the head on P3..P7, training targets and losses, and inference."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from adet.layers import compute_locations
from adet.structures import Instances

from .head import FCOSHead, FCOSHeadOutputs
from .inference import Detections, detect_image
from .losses import fcos_losses
from .targets import INF, LocationTargets, compute_targets, flatten_level_first


@dataclass
class FCOSOutputs(FCOSHeadOutputs):
    """The head's outputs and, per level, the (H_l * W_l, 2) centres of its cells in input pixels."""

    locations: list[torch.Tensor]


class FCOS(nn.Module):
    """Module name ``proposal_generator`` in the model; its only weights are ``fcos_head.*``.

    Args:
        head: the towers and predictors.
        in_features: the FPN levels it reads (``p3``..``p7``), with their ``strides``.
        sizes_of_interest: the L - 1 object sizes (max(l, t, r, b) in pixels) separating the levels' ranges.
        center_sample, pos_radius: positives only within ``pos_radius`` strides of the object's centre.
        sample_in_mask: positives only on the object's mask as well.
        focal_alpha, focal_gamma: the classification focal loss.
        score_thresh_test, pre_nms_topk_test, post_nms_topk_test, nms_thresh, thresh_with_ctr: inference.
    """

    def __init__(self, *, head: FCOSHead, in_features: list[str], strides: list[int], sizes_of_interest: list[int],
                 center_sample: bool = True, pos_radius: float = 1.5, sample_in_mask: bool = False,
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0, score_thresh_test: float = 0.05,
                 pre_nms_topk_test: int = 1000, post_nms_topk_test: int = 100, nms_thresh: float = 0.6,
                 thresh_with_ctr: bool = False):
        super().__init__()
        if len(strides) != len(in_features) or len(sizes_of_interest) != len(in_features) - 1:
            raise ValueError("MODEL.FCOS: FPN_STRIDES needs one entry per IN_FEATURES level and SIZES_OF_INTEREST "
                             "one fewer")
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
        self.score_thresh_test = score_thresh_test
        self.pre_nms_topk_test = pre_nms_topk_test
        self.post_nms_topk_test = post_nms_topk_test
        self.nms_thresh = nms_thresh
        self.thresh_with_ctr = thresh_with_ctr

    @property
    def num_classes(self) -> int:
        return self.fcos_head.num_classes

    def forward(self, features: dict[str, torch.Tensor]) -> FCOSOutputs:
        levels = [features[f] for f in self.in_features]
        head = self.fcos_head(levels)
        locations = [compute_locations(f.shape[-2], f.shape[-1], stride, f.device)
                     for f, stride in zip(levels, self.strides)]
        return FCOSOutputs(**vars(head), locations=locations)

    def targets(self, outputs: FCOSOutputs, gt_instances: list[Instances]) -> LocationTargets:
        return compute_targets(outputs.locations, gt_instances, self.strides, self.size_ranges, self.num_classes,
                               self.center_sample, self.pos_radius, self.sample_in_mask)

    def losses(self, outputs: FCOSOutputs, targets: LocationTargets) -> dict[str, torch.Tensor]:
        strides = torch.tensor(self.strides, dtype=torch.float32, device=targets.labels.device)
        return fcos_losses(flatten_level_first(outputs.class_logits), flatten_level_first(outputs.ltrb_strides),
                           flatten_level_first(outputs.ctrness_logits)[:, 0], targets, strides, self.focal_alpha,
                           self.focal_gamma)

    def detect(self, outputs: FCOSOutputs, image: int) -> Detections:
        """The detections of image ``image`` of the batch, decoded in float32 also when the network ran in lower
        precision (MODEL.INFERENCE_DTYPE). Tensor operations only: the exported graph runs this too."""
        def per_level(maps: list[torch.Tensor]) -> list[torch.Tensor]:
            return [m[image].float() for m in maps]

        return detect_image(outputs.locations, per_level(outputs.class_logits), per_level(outputs.ltrb_strides),
                            per_level(outputs.ctrness_logits), self.strides, self.score_thresh_test,
                            self.pre_nms_topk_test, self.post_nms_topk_test, self.nms_thresh, self.thresh_with_ctr)


def build_fcos(cfg, in_channels: int) -> FCOS:
    fcos = cfg.MODEL.FCOS
    head = FCOSHead(in_channels=in_channels, num_classes=fcos.NUM_CLASSES, num_levels=len(fcos.IN_FEATURES),
                    num_cls_convs=fcos.NUM_CLS_CONVS, num_box_convs=fcos.NUM_BOX_CONVS,
                    num_share_convs=fcos.NUM_SHARE_CONVS, norm=fcos.NORM, use_scale=fcos.USE_SCALE,
                    prior_prob=fcos.PRIOR_PROB)
    return FCOS(head=head, in_features=fcos.IN_FEATURES, strides=fcos.FPN_STRIDES,
                sizes_of_interest=fcos.SIZES_OF_INTEREST, center_sample=fcos.CENTER_SAMPLE,
                pos_radius=fcos.POS_RADIUS, sample_in_mask=cfg.MODEL.EMBEDMASK.SAMPLE_IN_MASK,
                focal_alpha=fcos.LOSS_ALPHA, focal_gamma=fcos.LOSS_GAMMA, score_thresh_test=fcos.INFERENCE_TH_TEST,
                pre_nms_topk_test=fcos.PRE_NMS_TOPK_TEST, post_nms_topk_test=fcos.POST_NMS_TOPK_TEST,
                nms_thresh=fcos.NMS_TH, thresh_with_ctr=fcos.THRESH_WITH_CTR)
