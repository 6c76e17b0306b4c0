"""Registries of datasets (name -> function returning detectron2-format dicts) and their metadata (class names,
COCO id mapping, paths), with detectron2's names and behaviour."""

from __future__ import annotations

import difflib
from typing import Any, Callable

from adet.errors import UnknownDatasetError


class Metadata:
    """Attributes describing a dataset: ``thing_classes``, ``thing_dataset_id_to_contiguous_id``, ``json_file``,
    ``image_root``, ``evaluator_type``... Once set, an attribute cannot be changed to another value."""

    def __init__(self, name: str):
        object.__setattr__(self, "name", name)

    def __setattr__(self, key: str, value: Any) -> None:
        if key in self.__dict__ and self.__dict__[key] != value:
            raise AttributeError(f"Metadata '{key}' of dataset '{self.name}' is already set to a different value")
        object.__setattr__(self, key, value)

    def __getattr__(self, key: str) -> Any:
        raise AttributeError(f"Metadata of dataset '{self.__dict__.get('name')}' has no attribute '{key}'; it has "
                             f"{sorted(self.__dict__)}")

    def set(self, **kwargs: Any) -> Metadata:
        for key, value in kwargs.items():
            setattr(self, key, value)
        return self

    def get(self, key: str, default: Any = None) -> Any:
        return self.__dict__.get(key, default)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class _DatasetCatalog(dict):
    def register(self, name: str, func: Callable[[], list[dict]]) -> None:
        if not callable(func):
            raise TypeError("DatasetCatalog.register needs a function returning the dataset's dicts")
        if name in self:
            raise KeyError(f"Dataset '{name}' is already registered")
        self[name] = func

    # Registers a dataset named by its path (``adet.data.sources.register_path_name``) on first use, in whichever
    # process asks: spawned workers see the config's path names without a registration of their own.
    path_registrar: Callable[[str], bool] | None = None

    def get(self, name: str) -> list[dict]:  # type: ignore[override]
        if name not in self and self.path_registrar is not None:
            self.path_registrar(name)
        if name not in self:
            hint = difflib.get_close_matches(name, list(self), n=1)
            raise UnknownDatasetError(f"Dataset '{name}' is not registered" +
                                      (f" (did you mean '{hint[0]}'?)" if hint else "") +
                                      f"; registered: {', '.join(sorted(self)) or 'none'}")
        return super().__getitem__(name)()

    def list(self) -> list[str]:
        return list(self.keys())

    def remove(self, name: str) -> None:
        self.pop(name)


class _MetadataCatalog(dict):
    def get(self, name: str) -> Metadata:  # type: ignore[override]
        if name not in self:
            self[name] = Metadata(name)
        return super().__getitem__(name)

    def list(self) -> list[str]:
        return list(self.keys())

    def remove(self, name: str) -> None:
        self.pop(name)


DatasetCatalog = _DatasetCatalog()
MetadataCatalog = _MetadataCatalog()
