"""Datasets registered from ``NAME=ANNOTATIONS.json:IMAGES/`` specs (the commands' ``--dataset``, the API's
``(json, images)`` pairs)."""

from __future__ import annotations

import os
import re

from adet.errors import DatasetError

from .catalog import DatasetCatalog, MetadataCatalog
from .coco import coco_class_names, register_coco_instances
from .sources import path_and_split, register_source
from .yolo import SPLITS


def register_datasets_from_args(specs: list[str], quiet: bool = False) -> list[str]:
    """Register ``--dataset`` specs; returns the names. A spec is ``NAME=ANNOTATIONS.json:IMAGES/`` (COCO; class
    names from the json), ``NAME=ANNOTATIONS.json`` (images beside it), ``NAME=data.yaml[:SPLIT]`` (an Ultralytics
    dataset, its ``train`` split unless named) or ``NAME=LABELME_FOLDER/``. With ``quiet``, a name already
    registered with the same files is left as it is (workers of one launch)."""
    names = []
    for spec in specs:
        name, sep, paths = spec.partition("=")
        if not (sep and name and paths):
            raise DatasetError(f"--dataset {spec}: expected NAME=ANNOTATIONS.json:IMAGES_FOLDER, "
                               "NAME=data.yaml[:SPLIT] or NAME=LABELME_FOLDER")
        found = path_and_split(paths)  # data.yaml[:SPLIT], ANNOTATIONS.json, a LabelMe folder
        if found is not None:
            names.append(register_source(name, found[0], found[1] or "train"))
            continue
        if paths.endswith((".yaml", ".yml", ".json")) or re.search(r"\.ya?ml:", paths):
            raise DatasetError(f"--dataset {spec}: no such file (or a split other than {', '.join(SPLITS)})")
        json_file, sep2, image_root = paths.rpartition(":")
        if not (sep2 and json_file and image_root):
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
