"""Evaluate a model on every dataset of ``DATASETS.TEST`` with the COCO protocol."""

from __future__ import annotations

import logging
import os

import torch

from adet.data import build_detection_test_loader
from adet.evaluation import COCOEvaluator, inference_on_dataset
from adet.utils import comm
from adet.utils.plots import plot_per_category_ap, plot_precision_recall

logger = logging.getLogger(__name__)


def format_results(results: dict[str, dict[str, dict[str, float]]]) -> str:
    """detectron2-style summary: one line of headline metrics per dataset and task."""
    lines = []
    for dataset, tasks in results.items():
        for task, metrics in tasks.items():
            headline = {k: v for k, v in metrics.items() if not k.startswith("AP-")}
            lines.append(f"{dataset} {task:4s}: " + "  ".join(f"{k} {v:.2f}" for k, v in headline.items()))
    return "\n".join(lines)


def evaluate_datasets(cfg, model: torch.nn.Module) -> dict[str, dict[str, dict[str, float]]]:
    """{dataset: {"bbox": {...}, "segm": {...}}} on the main process ({} elsewhere). Predictions are written to
    ``OUTPUT_DIR/inference/coco_instances_results.json`` (``inference/<dataset>/`` when there are several)."""
    names = list(cfg.DATASETS.TEST)
    if not names:
        raise ValueError("DATASETS.TEST is empty: nothing to evaluate")
    results = {}
    for name in names:
        folder = os.path.join(cfg.OUTPUT_DIR, "inference", name if len(names) > 1 else "")
        loader = build_detection_test_loader(cfg, name)
        evaluator = COCOEvaluator(name, output_dir=folder)
        results[name] = inference_on_dataset(model, loader, evaluator)
        if comm.is_main_process() and results[name]:
            prefix = os.path.join(cfg.OUTPUT_DIR, "plots", f"{name}_" if len(names) > 1 else "")
            os.makedirs(os.path.dirname(prefix), exist_ok=True)
            plot_per_category_ap(results[name], prefix + "per_category_ap.png")
            plot_precision_recall(evaluator.coco_evals, prefix + "pr_curves.png")
    if comm.is_main_process():
        logger.info("Evaluation results:\n%s", format_results(results))
    return results
