"""``Instances``: the per-image bag of equally long fields (boxes, scores, classes, masks...) detection code passes
around, as in detectron2."""

from __future__ import annotations

from typing import Any

import torch

from adet.structures.local_masks import LocalMasks


class Instances:
    """Fields of equal length N describing the instances of one image of size ``image_size = (height, width)``.

    Fields are set and read as attributes (``inst.scores = ...``). Indexing with an int, slice, bool mask or index
    tensor indexes every field; ``len(inst)`` is N. A :class:`LocalMasks` field (crops plus offsets) reads as its
    full-size (N, H, W) tensor; :meth:`get_fields` gives the stored values themselves.
    """

    def __init__(self, image_size: tuple[int, int], **fields: Any):
        self._image_size = (int(image_size[0]), int(image_size[1]))
        self._fields: dict[str, Any] = {}
        for name, value in fields.items():
            self.set(name, value)

    @property
    def image_size(self) -> tuple[int, int]:
        return self._image_size

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            super().__setattr__(name, value)
        else:
            self.set(name, value)

    def __getattr__(self, name: str) -> Any:
        if name == "_fields" or name not in self._fields:
            raise AttributeError(f"Cannot find field '{name}' in the given Instances!")
        return self.get(name)

    def set(self, name: str, value: Any) -> None:
        if self._fields:
            expected = len(self)
            if len(value) != expected:
                raise ValueError(f"Adding a field '{name}' of length {len(value)} to Instances of length {expected}")
        self._fields[name] = value

    def has(self, name: str) -> bool:
        return name in self._fields

    def remove(self, name: str) -> None:
        del self._fields[name]

    def get(self, name: str) -> Any:
        value = self._fields[name]
        return value.to_tensor() if isinstance(value, LocalMasks) else value

    def get_fields(self) -> dict[str, Any]:
        return self._fields

    def to(self, *args: Any, **kwargs: Any) -> Instances:
        moved = Instances(self._image_size)
        for name, value in self._fields.items():
            if hasattr(value, "to"):
                value = value.to(*args, **kwargs)
            moved.set(name, value)
        return moved

    def __getitem__(self, item) -> Instances:
        if isinstance(item, int):
            if item >= len(self) or item < -len(self):
                raise IndexError("Instances index out of range!")
            item = slice(item, None, len(self)) if item >= 0 else slice(item + len(self), None, len(self))
        picked = Instances(self._image_size)
        for name, value in self._fields.items():
            picked.set(name, value[item])
        return picked

    def __len__(self) -> int:
        for value in self._fields.values():
            return len(value)
        raise NotImplementedError("Empty Instances does not support __len__!")

    def __iter__(self):
        raise NotImplementedError("Instances object is not iterable!")

    @staticmethod
    def cat(instance_lists: list[Instances]) -> Instances:
        """Concatenate Instances of the same image size field by field."""
        if not instance_lists:
            raise ValueError("Instances.cat needs at least one Instances")
        if len(instance_lists) == 1:
            return instance_lists[0]
        image_size = instance_lists[0].image_size
        if any(i.image_size != image_size for i in instance_lists[1:]):
            raise ValueError("Instances.cat needs Instances of one image size")
        out = Instances(image_size)
        for name, first in instance_lists[0]._fields.items():
            values = [i._fields[name] for i in instance_lists]
            if isinstance(first, torch.Tensor):
                merged = torch.cat(values, dim=0)
            elif isinstance(first, list):
                merged = [x for v in values for x in v]
            elif hasattr(type(first), "cat"):
                merged = type(first).cat(values)
            else:
                raise ValueError(f"Unsupported type {type(first)} for concatenation")
            out.set(name, merged)
        return out

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}: {v}" for k, v in self._fields.items())
        return (f"Instances(num_instances={len(self) if self._fields else 0}, image_height={self._image_size[0]}, "
                f"image_width={self._image_size[1]}, fields=[{fields}])")
