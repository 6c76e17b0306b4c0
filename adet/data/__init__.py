from adet.errors import DatasetError, ImageReadError, ImageSizeError

from . import builtin  # noqa: F401  (registers coco_2017_*)
from .build import build_detection_test_loader, build_detection_train_loader, get_detection_dataset_dicts
from .catalog import DatasetCatalog, Metadata, MetadataCatalog
from .coco import BoxMode, coco_class_names, load_coco_json, register_coco_instances
from .image_io import read_image
from .mapper import DatasetMapper
from .register import register_datasets_from_args

__all__ = [
    "BoxMode",
    "DatasetCatalog",
    "DatasetError",
    "DatasetMapper",
    "ImageReadError",
    "ImageSizeError",
    "Metadata",
    "MetadataCatalog",
    "build_detection_test_loader",
    "build_detection_train_loader",
    "get_detection_dataset_dicts",
    "coco_class_names",
    "load_coco_json",
    "read_image",
    "register_coco_instances",
    "register_datasets_from_args",
]
