"""The centres of a feature map's cells in input-image pixels."""

from __future__ import annotations

import torch


def compute_location_map(height: int, width: int, stride: int, device: torch.device | str) -> torch.Tensor:
    """(2, height, width) float32 cell centres of a stride-``stride`` map: channel 0 is x = stride * j + stride // 2,
    channel 1 is y = stride * i + stride // 2."""
    shifts_x = torch.arange(0, width * stride, step=stride, dtype=torch.float32, device=device)
    shifts_y = torch.arange(0, height * stride, step=stride, dtype=torch.float32, device=device)
    shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
    return torch.stack((shift_x, shift_y), dim=0) + stride // 2


def compute_locations(height: int, width: int, stride: int, device: torch.device | str) -> torch.Tensor:
    """(height * width, 2) the same centres as (x, y) rows, row-major (x varies fastest)."""
    return compute_location_map(height, width, stride, device).reshape(2, -1).t()
