"""Integer-factor upsampling whose output pixel centres line up with the input's (CondInst's ``aligned_bilinear``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def aligned_bilinear(tensor: torch.Tensor, factor: int) -> torch.Tensor:
    """Upsample (N, C, h, w) to (N, C, factor*h, factor*w).

    Output row y samples input row (y - factor//2) / factor by linear interpolation (the last row held constant,
    rows before factor//2 copy row 0); columns likewise. This is what a stride-s map needs to land on a stride-s/f
    grid whose cells are centred at s/f * i + s/(2f), and it is the exact op the official code upsamples masks with.
    """
    if tensor.dim() != 4:
        raise ValueError(f"aligned_bilinear expects a 4-d tensor, got {tensor.dim()}-d")
    if factor < 1 or int(factor) != factor:
        raise ValueError(f"aligned_bilinear needs an integer factor >= 1, got {factor}")
    factor = int(factor)
    if factor == 1:
        return tensor
    if tensor.is_cuda and tensor.requires_grad and torch.are_deterministic_algorithms_enabled():
        return aligned_bilinear_by_matrices(tensor, factor)
    h, w = tensor.shape[2:]
    tensor = F.pad(tensor, pad=(0, 1, 0, 1), mode="replicate")
    out_h, out_w = factor * h + 1, factor * w + 1
    tensor = F.interpolate(tensor, size=(out_h, out_w), mode="bilinear", align_corners=True)
    tensor = F.pad(tensor, pad=(factor // 2, 0, factor // 2, 0), mode="replicate")
    return tensor[:, :, : out_h - 1, : out_w - 1]


def aligned_bilinear_matrix(size: int, factor: int, dtype: torch.dtype = torch.float32,
                            device: torch.device | str = "cpu") -> torch.Tensor:
    """(factor * size, size): :func:`aligned_bilinear` along one axis as a matrix, made by upsampling the identity."""
    basis = torch.eye(size, dtype=dtype, device=device).view(size, 1, size, 1)
    return aligned_bilinear(basis, factor)[:, 0, :, 0].t().contiguous()


def aligned_bilinear_by_matrices(tensor: torch.Tensor, factor: int) -> torch.Tensor:
    """:func:`aligned_bilinear` as two matrix products (it is linear and separable; equal up to float rounding).
    Used for gradients in deterministic mode on CUDA, whose bilinear-upsampling gradient adds with atomics."""
    height, width = tensor.shape[2:]
    with torch.no_grad():
        rows = aligned_bilinear_matrix(height, factor, tensor.dtype, tensor.device)
        cols = aligned_bilinear_matrix(width, factor, tensor.dtype, tensor.device)
    return torch.matmul(torch.matmul(rows, tensor), cols.t())
