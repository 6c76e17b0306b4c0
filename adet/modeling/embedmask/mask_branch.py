"""The mask branch (CondInst's): fuses P3..P5 into stride-8 mask features, plus, in training, an auxiliary
per-pixel semantic classification loss on P3 (spec 5.3)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from adet.layers import aligned_bilinear
from adet.structures import Instances

INF = 100000000


def conv_bn_relu(in_channels: int, out_channels: int, norm: str = "BN") -> nn.Sequential:
    """3x3 conv (kaiming-uniform a=1, no bias) -> BatchNorm -> ReLU; names ``0`` (conv) and ``1`` (norm)."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_uniform_(conv.weight, a=1)
    if norm == "BN":
        norm_layer: nn.Module = nn.BatchNorm2d(out_channels)
    elif norm == "GN":
        norm_layer = nn.GroupNorm(32, out_channels)
    else:
        raise ValueError(f"MODEL.EMBEDMASK.MASK_BRANCH.NORM must be 'BN' or 'GN', got '{norm}'")
    return nn.Sequential(conv, norm_layer, nn.ReLU(inplace=True))


def semantic_targets(gt_instances: list[Instances], stride: int) -> torch.Tensor:
    """(N, 1, H_pad/stride, W_pad/stride) long: at each sampled pixel, 1 + the class of the smallest-area mask
    covering it, 0 where no mask does. Pixels are sampled at [stride//2::stride] of the padded image."""
    targets = []
    for gt in gt_instances:
        masks_full = gt.gt_bitmasks_full  # (M, H_pad, W_pad)
        if len(masks_full) == 0:
            height, width = masks_full.shape[1:]
            targets.append(torch.zeros_like(masks_full[0:1, stride // 2::stride, stride // 2::stride].sum(0),
                                            dtype=torch.long))
            continue
        # The official code labels every full-resolution pixel and then samples; sampling first is the same.
        sampled = masks_full[:, stride // 2::stride, stride // 2::stride]  # (M, h, w)
        areas = masks_full.sum(dim=-1).sum(dim=-1)
        areas = areas[:, None, None].repeat(1, sampled.shape[1], sampled.shape[2])
        areas[sampled == 0] = INF
        min_areas, index = areas.permute(1, 2, 0).min(dim=-1)  # (h, w)
        labels = gt.gt_classes[index] + 1
        labels[min_areas == INF] = 0
        targets.append(labels)
    return torch.stack(targets, dim=0)[:, None]


class MaskBranch(nn.Module):
    """P3, P4, P5 -> refine (conv-BN-ReLU each) -> upsample to P3 with aligned_bilinear and sum -> tower of
    ``num_convs`` conv-BN-ReLU and a final 3x3 conv -> mask features (N, out_channels, H/8, W/8)."""

    def __init__(self, in_channels: dict[str, int], strides: dict[str, int], in_features: list[str],
                 channels: int = 128, out_channels: int = 128, num_convs: int = 4, norm: str = "BN",
                 semantic_loss_on: bool = False, num_classes: int = 80, prior_prob: float = 0.01,
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0):
        super().__init__()
        self.in_features = list(in_features)
        self.out_stride = strides[self.in_features[0]]
        self.refine = nn.ModuleList([conv_bn_relu(in_channels[f], channels, norm) for f in self.in_features])
        self.tower = nn.Sequential(*[conv_bn_relu(channels, channels, norm) for _ in range(num_convs)],
                                   nn.Conv2d(channels, out_channels, 3, 1, 1))
        self.semantic_loss_on = semantic_loss_on
        if semantic_loss_on:
            self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
            self.seg_head = nn.Sequential(conv_bn_relu(in_channels[self.in_features[0]], channels, norm),
                                          conv_bn_relu(channels, channels, norm))
            self.logits = nn.Conv2d(channels, num_classes, kernel_size=1, stride=1)
            nn.init.constant_(self.logits.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, features: dict[str, torch.Tensor], gt_instances: list[Instances] | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = self.refine[0](features[self.in_features[0]])
        for refine, name in zip(self.refine[1:], self.in_features[1:]):
            coarse = refine(features[name])
            factor_h, factor_w = x.shape[2] // coarse.shape[2], x.shape[3] // coarse.shape[3]
            if factor_h != factor_w or x.shape[2] % coarse.shape[2] or x.shape[3] % coarse.shape[3]:
                raise ValueError(f"mask branch: {name} {tuple(coarse.shape[2:])} is not an integer downscale of "
                                 f"{tuple(x.shape[2:])}")
            x = x + aligned_bilinear(coarse, factor_h)
        mask_features = self.tower(x)

        losses = {}
        if self.training and self.semantic_loss_on:
            logits = self.logits(self.seg_head(features[self.in_features[0]]))  # (N, K, H/8, W/8)
            targets = semantic_targets(gt_instances, self.out_stride)  # (N, 1, H/8, W/8)
            class_range = torch.arange(logits.shape[1], dtype=logits.dtype, device=logits.device)[:, None, None]
            one_hot = (targets == class_range + 1).float()  # (N, K, H/8, W/8); background is all zeros
            num_positive = (one_hot > 0).sum().float().clamp(min=1.0)
            losses["loss_sem"] = sigmoid_focal_loss(logits, one_hot, alpha=self.focal_alpha, gamma=self.focal_gamma,
                                                    reduction="sum") / num_positive
        return mask_features, losses
