"""A Conv2d that owns its normalisation layer, so checkpoints name it ``<conv>.norm.*`` as detectron2 does."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` followed by an optional ``norm`` module (stored as the child ``norm``)."""

    def __init__(self, *args, norm: nn.Module | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        if self.norm is not None:
            x = self.norm(x)
        return x


def c2_xavier_fill(module: nn.Module) -> None:
    """Caffe2's "XavierFill" (a uniform kaiming init with a = 1) and zero bias: detectron2's FPN init."""
    nn.init.kaiming_uniform_(module.weight, a=1)
    if module.bias is not None:
        nn.init.constant_(module.bias, 0)


def c2_msra_fill(module: nn.Module) -> None:
    """Caffe2's "MSRAFill" (kaiming normal, fan-out, ReLU gain) and zero bias: detectron2's ResNet init."""
    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    if module.bias is not None:
        nn.init.constant_(module.bias, 0)


class Scale(nn.Module):
    """A learnable scalar multiplier (FCOS per-level regression scale, EmbedMask per-level margin scale)."""

    def __init__(self, init_value: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([init_value], dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale
