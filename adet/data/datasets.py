"""detectron2's ``detectron2.data.datasets`` names, for scripts that import them from there."""

from .coco import load_coco_json, register_coco_instances

__all__ = ["load_coco_json", "register_coco_instances"]
