"""BatchNorm with fixed statistics and affine parameters, as the ImageNet-pretrained ResNets use it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .conv import Conv2d


class FrozenBatchNorm2d(nn.Module):
    """y = (x - running_mean) / sqrt(running_var + eps) * weight + bias, with every tensor a buffer.

    eps is 1e-5 as in detectron2: the released EmbedMask weights store running_var = 1 (filled in when the MSRA
    ImageNet weights were converted), so eps changes their outputs and must match.
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, training=False,
                            eps=self.eps)

    def scale_and_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(C,) scale and shift such that forward(x) == x * scale + shift per channel."""
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        return scale, self.bias - self.running_mean * scale

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Official checkpoints never carry num_batches_tracked for frozen BN; plain BN checkpoints might.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def fold_frozen_batchnorm(model: nn.Module) -> int:
    """Merge every frozen BatchNorm that follows a :class:`~adet.layers.Conv2d` into the conv's weight and bias
    (inference only: the checkpoint names ``<conv>.norm.*`` no longer exist afterwards). Returns how many."""
    folded = 0
    for module in model.modules():
        if isinstance(module, Conv2d) and isinstance(module.norm, FrozenBatchNorm2d):
            scale, shift = module.norm.scale_and_shift()
            with torch.no_grad():
                weight = module.weight * scale.view(-1, 1, 1, 1)
                bias = shift if module.bias is None else module.bias * scale + shift
            module.weight = nn.Parameter(weight, requires_grad=False)
            module.bias = nn.Parameter(bias, requires_grad=False)
            module.norm = None
            folded += 1
    return folded
