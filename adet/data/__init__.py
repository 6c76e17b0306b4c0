from . import builtin  # noqa: F401  (registers coco_2017_*)
from .build import InferenceSampler, build_detection_test_loader
from .catalog import DatasetCatalog, Metadata, MetadataCatalog
from .coco import BoxMode, DatasetError, coco_class_names, load_coco_json, register_coco_instances
from .image_io import ImageReadError, read_image
from .mapper import DatasetMapper

__all__ = [
    "BoxMode",
    "DatasetCatalog",
    "DatasetError",
    "DatasetMapper",
    "ImageReadError",
    "InferenceSampler",
    "Metadata",
    "MetadataCatalog",
    "build_detection_test_loader",
    "coco_class_names",
    "load_coco_json",
    "read_image",
    "register_coco_instances",
]
