"""Axis-aligned boxes in absolute XYXY pixels, with no +1 convention (x2 - x1 is the width)."""

from __future__ import annotations

from enum import IntEnum
from typing import Iterator, Sequence

import torch


class BoxMode(IntEnum):
    """How a dataset dict's ``bbox`` is written (detectron2's values)."""

    XYXY_ABS = 0
    XYWH_ABS = 1


class Boxes:
    """A (N, 4) float tensor of x1, y1, x2, y2 boxes, with the operations detection code needs."""

    def __init__(self, tensor: torch.Tensor | Sequence):
        if not isinstance(tensor, torch.Tensor):
            tensor = torch.as_tensor(tensor, dtype=torch.float32)
        if tensor.numel() == 0:
            # Keep the (0, 4) shape for empty inputs such as torch.zeros(0) or [].
            tensor = tensor.reshape(-1, 4).to(dtype=torch.float32)
        if tensor.dim() != 2 or tensor.size(-1) != 4:
            raise ValueError(f"Boxes expects a (N, 4) tensor, got shape {tuple(tensor.shape)}")
        self.tensor = tensor

    def clone(self) -> Boxes:
        return Boxes(self.tensor.clone())

    def to(self, *args, **kwargs) -> Boxes:
        return Boxes(self.tensor.to(*args, **kwargs))

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    def area(self) -> torch.Tensor:
        """(N,) width * height."""
        box = self.tensor
        return (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])

    def clip(self, box_size: tuple[int, int]) -> None:
        """Clip in place to [0, width] x [0, height] of an image of size (height, width)."""
        h, w = box_size
        x1 = self.tensor[:, 0].clamp(min=0, max=w)
        y1 = self.tensor[:, 1].clamp(min=0, max=h)
        x2 = self.tensor[:, 2].clamp(min=0, max=w)
        y2 = self.tensor[:, 3].clamp(min=0, max=h)
        self.tensor = torch.stack((x1, y1, x2, y2), dim=-1)

    def nonempty(self, threshold: float = 0.0) -> torch.Tensor:
        """(N,) bool: width and height both larger than ``threshold``."""
        box = self.tensor
        return ((box[:, 2] - box[:, 0]) > threshold) & ((box[:, 3] - box[:, 1]) > threshold)

    def scale(self, scale_x: float, scale_y: float) -> None:
        """Scale x coordinates by ``scale_x`` and y coordinates by ``scale_y``, in place."""
        self.tensor[:, 0::2] *= scale_x
        self.tensor[:, 1::2] *= scale_y

    def get_centers(self) -> torch.Tensor:
        """(N, 2) box centres (x, y)."""
        return (self.tensor[:, :2] + self.tensor[:, 2:]) / 2

    def __getitem__(self, item) -> Boxes:
        if isinstance(item, int):
            return Boxes(self.tensor[item].view(1, -1))
        return Boxes(self.tensor[item])

    def __len__(self) -> int:
        return self.tensor.shape[0]

    def __iter__(self) -> Iterator[torch.Tensor]:
        yield from self.tensor

    def __repr__(self) -> str:
        return f"Boxes({self.tensor})"

    @classmethod
    def cat(cls, boxes_list: list[Boxes]) -> Boxes:
        if not boxes_list:
            return cls(torch.empty(0, 4))
        return cls(torch.cat([b.tensor for b in boxes_list], dim=0))


def pairwise_iou(boxes1: Boxes, boxes2: Boxes) -> torch.Tensor:
    """(N, M) IoU between every box of ``boxes1`` and every box of ``boxes2``."""
    a, b = boxes1.tensor, boxes2.tensor
    top_left = torch.max(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=2)
    union = boxes1.area()[:, None] + boxes2.area()[None, :] - inter
    return torch.where(inter > 0, inter / union, torch.zeros_like(inter))


def xywh_box(obj: dict) -> list[float]:
    """An annotation's ``bbox`` as [x, y, width, height], whatever its ``bbox_mode``."""
    x, y, a, b = obj["bbox"]
    if obj.get("bbox_mode", BoxMode.XYWH_ABS) == BoxMode.XYXY_ABS:
        return [x, y, a - x, b - y]
    return [x, y, a, b]
