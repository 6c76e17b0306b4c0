from .coco_evaluation import COCOEvaluator, instances_to_coco_json
from .evaluator import inference_on_dataset

__all__ = ["COCOEvaluator", "inference_on_dataset", "instances_to_coco_json"]
