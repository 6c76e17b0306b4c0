"""Feature pyramid on a ResNet, with P6/P7 on top for FCOS (``build_fcos_resnet_fpn_backbone``)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from adet.layers import Conv2d, c2_xavier_fill

from .resnet import ResNet


class LastLevelP6P7(nn.Module):
    """P6 = conv3x3/2(P5) and P7 = conv3x3/2(ReLU(P6)): FCOS builds its two coarsest levels from P5, not C5."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.p6 = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, 2, 1)
        for module in (self.p6, self.p7):
            c2_xavier_fill(module)

    def forward(self, p5: torch.Tensor) -> list[torch.Tensor]:
        p6 = self.p6(p5)
        p7 = self.p7(F.relu(p6))
        return [p6, p7]


class FPN(nn.Module):
    """Top-down pathway with lateral 1x1 and output 3x3 convs (no norm, sum fusion, nearest x2 upsampling).

    Output: dict ``p3``..``p7`` (with res3..res5 inputs and the P6/P7 top block), all ``out_channels`` wide.
    """

    def __init__(self, bottom_up: ResNet, in_features: list[str], out_channels: int,
                 top_block: LastLevelP6P7 | None):
        super().__init__()
        self.bottom_up = bottom_up
        self.in_features = list(in_features)
        stages = [int(math.log2(bottom_up.strides[f])) for f in self.in_features]
        self._stages = stages
        for feature, stage in zip(self.in_features, stages):
            lateral = Conv2d(bottom_up.out_channels[feature], out_channels, kernel_size=1)
            output = Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
            c2_xavier_fill(lateral)
            c2_xavier_fill(output)
            self.add_module(f"fpn_lateral{stage}", lateral)
            self.add_module(f"fpn_output{stage}", output)
        self.top_block = top_block
        self.out_features = [f"p{s}" for s in stages]
        if top_block is not None:
            self.out_features += [f"p{stages[-1] + 1}", f"p{stages[-1] + 2}"]
        self.out_channels = out_channels
        self.strides = {f"p{s}": 2**s for s in range(stages[0], stages[0] + len(self.out_features))}
        # Inputs padded to the coarsest input stride make every top-down upsampling exact.
        self.size_divisibility = bottom_up.strides[self.in_features[-1]]

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        bottom_up = self.bottom_up(images)
        stages = self._stages
        prev = getattr(self, f"fpn_lateral{stages[-1]}")(bottom_up[self.in_features[-1]])
        results = [getattr(self, f"fpn_output{stages[-1]}")(prev)]
        for feature, stage in zip(reversed(self.in_features[:-1]), reversed(stages[:-1])):
            top_down = F.interpolate(prev, scale_factor=2.0, mode="nearest")
            prev = getattr(self, f"fpn_lateral{stage}")(bottom_up[feature]) + top_down
            results.insert(0, getattr(self, f"fpn_output{stage}")(prev))
        if self.top_block is not None:
            results.extend(self.top_block(results[-1]))
        return dict(zip(self.out_features, results))


def build_fcos_resnet_fpn_backbone(cfg) -> FPN:
    """ResNet + FPN + P6/P7, from ``MODEL.RESNETS``, ``MODEL.FPN`` and ``MODEL.FCOS.TOP_LEVELS``."""
    resnets = cfg.MODEL.RESNETS
    if cfg.MODEL.FCOS.TOP_LEVELS not in (0, 2):
        raise ValueError(f"MODEL.FCOS.TOP_LEVELS must be 0 or 2, got {cfg.MODEL.FCOS.TOP_LEVELS}")
    in_features = list(cfg.MODEL.FPN.IN_FEATURES)
    if not in_features:
        raise ValueError("MODEL.FPN.IN_FEATURES is empty; EmbedMask configs use ['res3', 'res4', 'res5']")
    bottom_up = ResNet(
        depth=resnets.DEPTH,
        out_features=tuple(resnets.OUT_FEATURES),
        norm=resnets.NORM,
        num_groups=resnets.NUM_GROUPS,
        width_per_group=resnets.WIDTH_PER_GROUP,
        stem_out_channels=resnets.STEM_OUT_CHANNELS,
        res2_out_channels=resnets.RES2_OUT_CHANNELS,
        stride_in_1x1=resnets.STRIDE_IN_1X1,
        res5_dilation=resnets.RES5_DILATION,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
    )
    missing = [f for f in in_features if f not in bottom_up.out_features]
    if missing:
        raise ValueError(f"MODEL.FPN.IN_FEATURES {missing} are not in MODEL.RESNETS.OUT_FEATURES "
                         f"{bottom_up.out_features}")
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    top_block = LastLevelP6P7(in_channels=out_channels, out_channels=out_channels) \
        if cfg.MODEL.FCOS.TOP_LEVELS == 2 else None
    return FPN(bottom_up=bottom_up, in_features=in_features, out_channels=out_channels, top_block=top_block)
