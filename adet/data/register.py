"""Datasets registered from ``NAME=ANNOTATIONS.json:IMAGES/`` specs (the commands' ``--dataset``, the API's
``(json, images)`` pairs)."""

from __future__ import annotations

import os

from adet.errors import DatasetError

from .catalog import DatasetCatalog, MetadataCatalog
from .coco import coco_class_names, register_coco_instances


def register_datasets_from_args(specs: list[str], quiet: bool = False) -> list[str]:
    """Register ``NAME=ANNOTATIONS.json:IMAGES/`` datasets (class names come from the json); returns the names.
    With ``quiet``, a name already registered with the same files is left as it is (workers of one launch)."""
    names = []
    for spec in specs:
        name, sep, paths = spec.partition("=")
        json_file, sep2, image_root = paths.rpartition(":")
        if not (sep and sep2 and name and json_file and image_root):
            raise DatasetError(f"--dataset {spec}: expected NAME=ANNOTATIONS.json:IMAGES_FOLDER")
        if not os.path.isfile(json_file):
            raise DatasetError(f"--dataset {name}: annotation file {json_file} does not exist")
        if not os.path.isdir(image_root):
            raise DatasetError(f"--dataset {name}: image folder {image_root} does not exist")
        if name in DatasetCatalog:
            metadata = MetadataCatalog.get(name)
            if quiet and (metadata.get("json_file"), metadata.get("image_root")) == (json_file, image_root):
                names.append(name)
                continue
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_coco_instances(name, {"thing_classes": coco_class_names(json_file)}, json_file, image_root)
        names.append(name)
    return names
