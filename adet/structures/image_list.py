"""A batch of differently sized images padded into one tensor, remembering each image's own size."""

from __future__ import annotations

import torch
import torch.nn.functional as F


class ImageList:
    """``tensor`` (N, C, H_pad, W_pad) plus ``image_sizes``, the (h, w) of each image before padding."""

    def __init__(self, tensor: torch.Tensor, image_sizes: list[tuple[int, int]]):
        self.tensor = tensor
        self.image_sizes = image_sizes

    def __len__(self) -> int:
        return len(self.image_sizes)

    def __getitem__(self, idx: int) -> torch.Tensor:
        """The idx-th image without its padding."""
        h, w = self.image_sizes[idx]
        return self.tensor[idx, ..., :h, :w]

    def to(self, *args, **kwargs) -> ImageList:
        return ImageList(self.tensor.to(*args, **kwargs), self.image_sizes)

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    @staticmethod
    def from_tensors(tensors: list[torch.Tensor], size_divisibility: int = 0, pad_value: float = 0.0) -> ImageList:
        """Pad (C, H, W) tensors at the bottom and right to the batch's largest size, rounded up to a multiple of
        ``size_divisibility``, and stack them."""
        if not tensors:
            raise ValueError("ImageList.from_tensors needs at least one image")
        image_sizes = [(int(t.shape[-2]), int(t.shape[-1])) for t in tensors]
        max_h, max_w = padded_size(max(h for h, _ in image_sizes), max(w for _, w in image_sizes),
                                   size_divisibility)
        if len(tensors) == 1:
            h, w = image_sizes[0]
            batched = F.pad(tensors[0], (0, max_w - w, 0, max_h - h), value=pad_value).unsqueeze(0)
        else:
            batched = tensors[0].new_full((len(tensors), *tensors[0].shape[:-2], max_h, max_w), pad_value)
            for padded, image in zip(batched, tensors):
                padded[..., : image.shape[-2], : image.shape[-1]].copy_(image)
        return ImageList(batched.contiguous(), image_sizes)


def padded_size(height: int, width: int, size_divisibility: int) -> tuple[int, int]:
    """(height, width) rounded up to multiples of ``size_divisibility`` (unchanged when it is 0 or 1)."""
    if size_divisibility <= 1:
        return height, width
    return (-(-height // size_divisibility) * size_divisibility, -(-width // size_divisibility) * size_divisibility)
