from .coco_evaluation import COCOEvaluator, instances_to_coco_json
from .evaluator import DatasetEvaluator, DatasetEvaluators, inference_on_dataset

__all__ = ["COCOEvaluator", "DatasetEvaluator", "DatasetEvaluators", "inference_on_dataset",
           "instances_to_coco_json"]
