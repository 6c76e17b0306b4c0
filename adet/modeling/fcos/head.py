"""The FCOS head: per FPN level, a classification tower and a box tower shared across levels.

For EmbedMask the box tower of each level also feeds the proposal head (``adet/modeling/embedmask/heads.py``), which
turns it into one proposal embedding and margin per location: the head hands its box towers over for that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from adet.layers import Scale


@dataclass
class FCOSHeadOutputs:
    """Per FPN level l (lists indexed by level), with N images, K classes and C channels."""

    class_logits: list[torch.Tensor]  # (N, K, H_l, W_l)
    ltrb_strides: list[torch.Tensor]  # (N, 4, H_l, W_l) left/top/right/bottom distances in strides (>= 0)
    ctrness_logits: list[torch.Tensor]  # (N, 1, H_l, W_l)
    box_towers: list[torch.Tensor]  # (N, C, H_l, W_l) the box tower's features, the proposal head's input


def _tower(num_convs: int, channels: int, norm: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        layers.append(nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1, bias=True))
        if norm == "GN":
            layers.append(nn.GroupNorm(32, channels))
        elif norm not in ("none", ""):
            raise ValueError(f"MODEL.FCOS.NORM: only 'GN' or 'none' are supported, got '{norm}'")
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class FCOSHead(nn.Module):
    """Towers and predictors. Checkpoint names follow AdelaiDet (``cls_tower.0``, ``bbox_pred``, ``scales.0``).

    ``num_share_convs`` convs shared by both branches come first (AdelaiDet's ``share_tower``; 0 in EmbedMask).
    """

    def __init__(self, in_channels: int, num_classes: int, num_levels: int, num_cls_convs: int = 4,
                 num_box_convs: int = 4, num_share_convs: int = 0, norm: str = "GN", use_scale: bool = True,
                 prior_prob: float = 0.01):
        super().__init__()
        self.num_classes = num_classes
        self.share_tower = _tower(num_share_convs, in_channels, norm)
        self.cls_tower = _tower(num_cls_convs, in_channels, norm)
        self.bbox_tower = _tower(num_box_convs, in_channels, norm)
        self.cls_logits = nn.Conv2d(in_channels, num_classes, kernel_size=3, stride=1, padding=1)
        self.bbox_pred = nn.Conv2d(in_channels, 4, kernel_size=3, stride=1, padding=1)
        self.ctrness = nn.Conv2d(in_channels, 1, kernel_size=3, stride=1, padding=1)
        self.scales = nn.ModuleList([Scale(1.0) for _ in range(num_levels)]) if use_scale else None

        for module in (self.share_tower, self.cls_tower, self.bbox_tower, self.cls_logits, self.bbox_pred,
                       self.ctrness):
            for layer in module.modules():
                if isinstance(layer, nn.Conv2d):
                    nn.init.normal_(layer.weight, std=0.01)
                    nn.init.constant_(layer.bias, 0)
        # Focal-loss prior: every location starts as background with probability 1 - prior_prob.
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, features: list[torch.Tensor]) -> FCOSHeadOutputs:
        """``features``: per level (N, C, H_l, W_l)."""
        outputs = FCOSHeadOutputs([], [], [], [])
        for level, feature in enumerate(features):
            feature = self.share_tower(feature)
            box_tower = self.bbox_tower(feature)
            outputs.class_logits.append(self.cls_logits(self.cls_tower(feature)))
            outputs.ctrness_logits.append(self.ctrness(box_tower))
            regression = self.bbox_pred(box_tower)
            if self.scales is not None:
                regression = self.scales[level](regression)
            # ReLU instead of exp, as in the improved FCOS.
            outputs.ltrb_strides.append(F.relu(regression))
            outputs.box_towers.append(box_tower)
        return outputs
