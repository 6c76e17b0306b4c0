"""EmbedMask's embedding heads (spec 5.1, 5.2).

The pixel head maps mask-branch features to one D-dim embedding per pixel; the proposal head maps the FCOS box
tower to one embedding and one D-dim margin per location. The first two embedding dimensions are "spatial": the
cell's own (x, y) / 100 is added to them, so nearby pixels start close in embedding space.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from adet.layers import Scale, compute_location_map


def _normal_conv(in_channels: int, out_channels: int, kernel_size: int, bias_value: float = 0.0) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=1, padding=kernel_size // 2, bias=True)
    nn.init.normal_(conv.weight, std=0.01)
    nn.init.constant_(conv.bias, bias_value)
    return conv


class EmbedHead(nn.Module):
    """(N, C, H, W) features of a stride-s map -> (N, D, H, W) embeddings: 2 spatial dims + (x, y)/100, D-2 free."""

    def __init__(self, in_channels: int, embed_dim: int = 16):
        super().__init__()
        self.spatial_embed_head = _normal_conv(in_channels, 2, 3)
        self.free_embed_head = _normal_conv(in_channels, embed_dim - 2, 3)

    def forward(self, features: torch.Tensor, stride: int) -> torch.Tensor:
        spatial = self.spatial_embed_head(features)
        free = self.free_embed_head(features)
        location_map = compute_location_map(features.shape[2], features.shape[3], stride, features.device)
        # Division (not * 0.01) as in the official code, for bit-identical embeddings.
        spatial = spatial + location_map / 100.0
        return torch.cat([spatial, free], dim=1)


class ProposalHead(nn.Module):
    """FCOS box-tower features of level l (N, C, H_l, W_l) -> embeddings (N, D, H_l, W_l) and margins
    (N, D, H_l, W_l), one of each per location.

    Margins are exp(conv(features / margin_reduce_factor)), strictly positive per-dimension precisions; the two
    spatial ones are scaled per level before the exp. ``variant`` "Conv1_Conv3" (the released models) puts a 1x1
    conv to ``head_channels`` before the 3x3 heads of both branches; "Conv3" applies the 3x3 heads directly.
    """

    def __init__(self, in_channels: int, strides: list[int], embed_dim: int = 16, prior_margin: float = 2.0,
                 margin_reduce_factor: float = 32.0, variant: str = "Conv1_Conv3", head_channels: int = 128):
        super().__init__()
        if variant not in ("Conv1_Conv3", "Conv3"):
            raise ValueError(f"MODEL.EMBEDMASK.PROPOSAL_HEAD must be 'Conv1_Conv3' or 'Conv3', got '{variant}'")
        self.strides = list(strides)
        self.margin_reduce_factor = margin_reduce_factor
        self.variant = variant
        # A margin m gives probability 0.5 at squared distance ln2 / m: start every margin at distance prior_margin.
        margin_bias = math.log(-math.log(0.5) / prior_margin**2)
        if variant == "Conv3":
            head_channels = in_channels
        else:
            self.margin_conv = _normal_conv(in_channels, head_channels, 1)
        self.spatial_margin_head = _normal_conv(head_channels, 2, 3, margin_bias)
        self.free_margin_head = _normal_conv(head_channels, embed_dim - 2, 3, margin_bias)
        self.margin_scales = nn.ModuleList([Scale(1.0) for _ in self.strides])
        if variant == "Conv1_Conv3":
            self.embed_conv = _normal_conv(in_channels, head_channels, 1)
        self.embed_head = EmbedHead(head_channels, embed_dim)

    def forward(self, box_tower: torch.Tensor, level: int) -> tuple[torch.Tensor, torch.Tensor]:
        margin_features = box_tower / self.margin_reduce_factor
        embed_features = box_tower
        if self.variant == "Conv1_Conv3":
            margin_features = self.margin_conv(margin_features)
            embed_features = self.embed_conv(box_tower)
        spatial_margin = torch.exp(self.margin_scales[level](self.spatial_margin_head(margin_features)))
        free_margin = torch.exp(self.free_margin_head(margin_features))
        embeddings = self.embed_head(embed_features, self.strides[level])
        return embeddings, torch.cat([spatial_margin, free_margin], dim=1)
