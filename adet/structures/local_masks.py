"""``LocalMasks``: each instance's mask as a crop of the image plus where the crop sits, the one mask result type.

A detection covers a small part of its image: 100 full-size masks of an 800x1333 image are 107 M booleans, almost all
False, and a 10,000 x 10,000 scan could not hold them at all. Pasting (``postprocess``, test-time augmentation, the
sliced merge) writes only the rectangle each mask can reach; the RLE encoder, polygons and drawing read only that
rectangle. Reading ``Instances.pred_masks`` pastes the crops into full-size (N, H, W) masks (once, cached), so
detectron2-style code that indexes full masks keeps working.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from adet.structures.rle import encode_local_mask


class LocalMasks:
    """N boolean masks of an image of ``image_size`` (height, width): ``crops[i]`` (h_i, w_i) bool whose pixel (0, 0)
    is the image's ``offsets[i]`` = (top, left). Crops lie inside the image; outside its crop a mask is False."""

    def __init__(self, crops: Sequence[torch.Tensor], offsets: Sequence[tuple[int, int]],
                 image_size: tuple[int, int]):
        if len(crops) != len(offsets):
            raise ValueError(f"{len(crops)} crops but {len(offsets)} offsets")
        self.crops = list(crops)
        self.offsets = [(int(top), int(left)) for top, left in offsets]
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self._full: torch.Tensor | None = None

    @staticmethod
    def from_full(masks: torch.Tensor | np.ndarray) -> LocalMasks:
        """(N, H, W) masks, each cut to its bounding box (an empty mask to a 0 x 0 crop)."""
        masks = torch.as_tensor(masks).bool()
        if masks.dim() != 3:
            return LocalMasks([], [], (0, 0))
        # Which rows and columns each mask touches, for all masks in two passes: a max over bytes (torch's any() over
        # bool is ~15x slower, and per-mask calls cost 4x the RLE encoding of the crops).
        as_bytes = masks.view(torch.uint8)
        rows, cols = as_bytes.amax(2).cpu().numpy() > 0, as_bytes.amax(1).cpu().numpy() > 0  # (N, H), (N, W)
        height, width = masks.shape[1:]
        crops, offsets = [], []
        for mask, in_rows, in_cols in zip(masks, rows, cols):
            if not in_rows.any():
                crops.append(mask[:0, :0])
                offsets.append((0, 0))
                continue
            top, bottom = int(in_rows.argmax()), height - int(in_rows[::-1].argmax())
            left, right = int(in_cols.argmax()), width - int(in_cols[::-1].argmax())
            crops.append(mask[top:bottom, left:right])
            offsets.append((top, left))
        return LocalMasks(crops, offsets, (height, width))

    @staticmethod
    def of(instances) -> LocalMasks:
        """The masks of an Instances as LocalMasks: its own when it holds them, else cut from its full masks."""
        masks = instances.get_fields()["pred_masks"]
        return masks if isinstance(masks, LocalMasks) else LocalMasks.from_full(masks)

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, item) -> LocalMasks:
        if isinstance(item, int):
            item = [item]
        elif isinstance(item, slice):
            item = range(len(self))[item]
        elif isinstance(item, torch.Tensor) and item.dtype == torch.bool:
            item = torch.nonzero(item.cpu()).flatten().tolist()
        elif isinstance(item, (torch.Tensor, np.ndarray)):
            item = item.tolist()
        picked = LocalMasks([self.crops[i] for i in item], [self.offsets[i] for i in item], self.image_size)
        if self._full is not None:
            picked._full = self._full[list(item)]
        return picked

    def to(self, *args, **kwargs) -> LocalMasks:
        moved = LocalMasks([crop.to(*args, **kwargs) for crop in self.crops], self.offsets, self.image_size)
        moved._full = self._full.to(*args, **kwargs) if self._full is not None else None
        return moved

    @property
    def device(self) -> torch.device:
        return self.crops[0].device if self.crops else torch.device("cpu")

    @staticmethod
    def cat(masks_list: list[LocalMasks]) -> LocalMasks:
        if any(m.image_size != masks_list[0].image_size for m in masks_list):
            raise ValueError("LocalMasks.cat needs masks of one image size")
        return LocalMasks([c for m in masks_list for c in m.crops], [o for m in masks_list for o in m.offsets],
                          masks_list[0].image_size)

    def to_tensor(self) -> torch.Tensor:
        """(N, H, W) bool full-size masks (pasted once, then kept)."""
        if self._full is None:
            full = torch.zeros((len(self), *self.image_size), dtype=torch.bool, device=self.device)
            for index, (crop, (top, left)) in enumerate(zip(self.crops, self.offsets)):
                full[index, top:top + crop.shape[0], left:left + crop.shape[1]] = crop
            self._full = full
        return self._full

    @property
    def tensor(self) -> torch.Tensor:
        """(N, H, W) bool full-size masks, as BitMasks' ``tensor``."""
        return self.to_tensor()

    def numpy_crops(self) -> list[tuple[np.ndarray, int, int]]:
        """(crop as a bool array, top, left) per mask, on the CPU."""
        return [(crop.cpu().numpy().astype(bool, copy=False), top, left)
                for crop, (top, left) in zip(self.crops, self.offsets)]

    def encode_rle(self) -> list[dict]:
        """COCO RLEs of the full-size masks (``counts`` as str), encoded from the crops."""
        height, width = self.image_size
        return [encode_local_mask(crop, top, left, height, width) for crop, top, left in self.numpy_crops()]

    def area(self) -> torch.Tensor:
        return torch.tensor([int(crop.sum()) for crop in self.crops], dtype=torch.int64)

    def __repr__(self) -> str:
        return f"LocalMasks(num_instances={len(self)}, image_size={self.image_size})"
