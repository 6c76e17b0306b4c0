"""ResNet with frozen BatchNorm, laid out as detectron2's (``stem``, ``res2``..``res5``) so its checkpoints load.

Depths 18/34 use basic blocks, 50/101/152 bottleneck blocks. With ``stride_in_1x1`` (the MSRA weights) the
stride-2 of a stage's first bottleneck sits on its 1x1 conv rather than the 3x3.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from adet.layers import Conv2d, FrozenBatchNorm2d, c2_msra_fill

BLOCKS_PER_STAGE = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}


def _norm(norm: str, channels: int) -> nn.Module:
    if norm == "FrozenBN":
        return FrozenBatchNorm2d(channels)
    if norm == "BN":
        return nn.BatchNorm2d(channels)
    if norm == "GN":
        return nn.GroupNorm(32, channels)
    raise ValueError(f"MODEL.RESNETS.NORM: unsupported norm '{norm}' (use FrozenBN, BN or GN)")


class BasicStem(nn.Module):
    """7x7/2 conv, norm, ReLU, 3x3/2 max-pool: stride 4."""

    def __init__(self, in_channels: int = 3, out_channels: int = 64, norm: str = "FrozenBN"):
        super().__init__()
        self.out_channels = out_channels
        self.conv1 = Conv2d(in_channels, out_channels, kernel_size=7, stride=2, padding=3, bias=False,
                            norm=_norm(norm, out_channels))
        c2_msra_fill(self.conv1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu_(self.conv1(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


def _shortcut(in_channels: int, out_channels: int, stride: int, norm: str) -> Conv2d | None:
    if in_channels == out_channels:
        return None
    return Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False, norm=_norm(norm, out_channels))


class BasicBlock(nn.Module):
    """Two 3x3 convs and a residual connection (ResNet-18/34)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, norm: str = "FrozenBN"):
        super().__init__()
        self.shortcut = _shortcut(in_channels, out_channels, stride, norm)
        self.conv1 = Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False,
                            norm=_norm(norm, out_channels))
        self.conv2 = Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False,
                            norm=_norm(norm, out_channels))
        for layer in (self.shortcut, self.conv1, self.conv2):
            if layer is not None:
                c2_msra_fill(layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu_(self.conv1(x))
        out = self.conv2(out)
        out += x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out)


class BottleneckBlock(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand, and a residual connection (ResNet-50/101/152)."""

    def __init__(self, in_channels: int, out_channels: int, bottleneck_channels: int, stride: int = 1,
                 num_groups: int = 1, norm: str = "FrozenBN", stride_in_1x1: bool = True, dilation: int = 1):
        super().__init__()
        self.shortcut = _shortcut(in_channels, out_channels, stride, norm)
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = Conv2d(in_channels, bottleneck_channels, 1, stride=stride_1x1, bias=False,
                            norm=_norm(norm, bottleneck_channels))
        self.conv2 = Conv2d(bottleneck_channels, bottleneck_channels, 3, stride=stride_3x3, padding=dilation,
                            bias=False, groups=num_groups, dilation=dilation, norm=_norm(norm, bottleneck_channels))
        self.conv3 = Conv2d(bottleneck_channels, out_channels, 1, bias=False, norm=_norm(norm, out_channels))
        for layer in (self.shortcut, self.conv1, self.conv2, self.conv3):
            if layer is not None:
                c2_msra_fill(layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu_(self.conv1(x))
        out = F.relu_(self.conv2(out))
        out = self.conv3(out)
        out += x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out)


class ResNet(nn.Module):
    """Stem + stages res2..res5. ``forward`` returns the requested stages' outputs by name."""

    def __init__(self, depth: int = 50, out_features: tuple[str, ...] = ("res3", "res4", "res5"),
                 norm: str = "FrozenBN", num_groups: int = 1, width_per_group: int = 64, stem_out_channels: int = 64,
                 res2_out_channels: int = 256, stride_in_1x1: bool = True, res5_dilation: int = 1,
                 freeze_at: int = 2):
        super().__init__()
        if depth not in BLOCKS_PER_STAGE:
            raise ValueError(f"MODEL.RESNETS.DEPTH: {depth} is not one of {sorted(BLOCKS_PER_STAGE)}")
        if res5_dilation not in (1, 2):
            raise ValueError(f"MODEL.RESNETS.RES5_DILATION must be 1 or 2, got {res5_dilation}")
        basic = depth in (18, 34)
        if basic:
            # Basic blocks have no expansion: res2 is as wide as the stem (64 in detectron2's R-18/34).
            res2_out_channels = stem_out_channels
        self.stem = BasicStem(3, stem_out_channels, norm)
        self.out_features = list(out_features)
        self.out_channels: dict[str, int] = {}
        self.strides: dict[str, int] = {}

        in_channels, out_channels = stem_out_channels, res2_out_channels
        bottleneck_channels = num_groups * width_per_group
        stride_so_far = 4
        for index, num_blocks in enumerate(BLOCKS_PER_STAGE[depth]):
            name = f"res{index + 2}"
            dilation = res5_dilation if name == "res5" else 1
            first_stride = 1 if index == 0 or dilation == 2 else 2
            blocks = []
            for block_index in range(num_blocks):
                stride = first_stride if block_index == 0 else 1
                if basic:
                    blocks.append(BasicBlock(in_channels, out_channels, stride, norm))
                else:
                    blocks.append(BottleneckBlock(in_channels, out_channels, bottleneck_channels, stride, num_groups,
                                                  norm, stride_in_1x1, dilation))
                in_channels = out_channels
            self.add_module(name, nn.Sequential(*blocks))
            stride_so_far *= first_stride
            self.out_channels[name] = out_channels
            self.strides[name] = stride_so_far
            out_channels *= 2
            bottleneck_channels *= 2
        self.freeze(freeze_at)

    def freeze(self, freeze_at: int) -> None:
        """Stop gradients into the stem (freeze_at >= 1) and res2..res{freeze_at} (freeze_at >= 2)."""
        frozen = ([self.stem] if freeze_at >= 1 else []) + [getattr(self, f"res{i}") for i in range(2, freeze_at + 1)]
        for module in frozen:
            for p in module.parameters():
                p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = {}
        x = self.stem(x)
        for name in ("res2", "res3", "res4", "res5"):
            x = getattr(self, name)(x)
            if name in self.out_features:
                outputs[name] = x
            if name == self.out_features[-1]:
                break
        return outputs
