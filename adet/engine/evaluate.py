"""Evaluate a model on every dataset of ``DATASETS.TEST`` with the COCO protocol."""

from __future__ import annotations

import json
import logging
import os
from typing import Callable, Sequence

import torch

from adet.data import MetadataCatalog, build_detection_test_loader
from adet.data.build import required_datasets
from adet.engine.inference.backend import BackendAsModel, ModelBackend
from adet.engine.inference.sliced import with_slicing
from adet.engine.inference.tta import build_tta
from adet.evaluation import COCOEvaluator, inference_on_dataset
from adet.evaluation.confusion import confusion_matrix
from adet.utils import comm
from adet.utils.plots import plot_confusion_matrix, plot_per_category_ap, plot_precision_recall

logger = logging.getLogger(__name__)


def format_results(results: dict[str, dict[str, dict[str, float]]]) -> str:
    """detectron2-style summary: one line of headline metrics per dataset and task."""
    lines = []
    for dataset, tasks in results.items():
        for task, metrics in tasks.items():
            if task == "ground_truth":
                lines.append(f"{dataset} ground truth: {metrics['annotations']:.0f} annotations on "
                             f"{metrics['images']:.0f} images evaluated; {metrics['annotations_excluded']:.0f} "
                             f"annotations and {metrics['images_excluded']:.0f} images excluded")
                continue
            headline = {k: v for k, v in metrics.items() if not k.startswith("AP-")}
            lines.append(f"{dataset} {task:4s}: " + "  ".join(f"{k} {v:.2f}" for k, v in headline.items()))
    return "\n".join(lines)


def write_confusion_matrix(evaluator: COCOEvaluator, class_names: list[str] | None, prefix: str) -> None:
    """``prefix.png`` and ``prefix.csv`` (rows predicted class, columns true class, the last one background)."""
    category_ids = sorted(evaluator.coco_gt.getCatIds())
    names = class_names if class_names and len(class_names) == len(category_ids) else [str(c) for c in category_ids]
    matrix = confusion_matrix(evaluator.coco_gt.dataset, evaluator.predictions, category_ids)
    header = ",".join(["predicted \\ true", *names, "background"])
    rows = [",".join([name, *map(str, row)]) for name, row in zip([*names, "background"], matrix.tolist())]
    with open(prefix + ".csv", "w") as f:
        f.write("\n".join([header, *rows]) + "\n")
    plot_confusion_matrix(matrix, names, prefix + ".png")


def single_dataset_results(results: dict | None) -> dict:
    """detectron2's ``test`` returns {task: ...} when DATASETS.TEST has one dataset, {dataset: {task: ...}} else."""
    results = results or {}
    return next(iter(results.values())) if len(results) == 1 else results


def inference_folder(cfg, dataset_name: str) -> str:
    """Where a dataset's predictions and results go: OUTPUT_DIR/inference, or inference/<dataset> when
    DATASETS.TEST has several."""
    several = len(cfg.DATASETS.TEST) > 1
    return os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name if several else "")


def evaluate_datasets(cfg, model: torch.nn.Module, should_stop: Callable[[], bool] | None = None,
                      build_test_loader: Callable = build_detection_test_loader,
                      build_evaluator: Callable | None = None, evaluators: Sequence | None = None,
                      ) -> dict[str, dict[str, dict[str, float]]] | None:
    """{dataset: {"bbox": {...}, "segm": {...}, "ground_truth": {...}}} on the main process ({} elsewhere); None
    when ``should_stop()`` interrupted it (a stop signal during a training run's evaluation).
    Written to ``OUTPUT_DIR/inference/`` (``inference/<dataset>/`` when there are several): the predictions
    (``coco_instances_results.json``), these results (``evaluation_results.json``) and what the ground truth
    excluded (``ground_truth_report.json``). ``evaluators`` (one per dataset of DATASETS.TEST) or
    ``build_evaluator(cfg, name)`` replace the COCOEvaluator; ``build_test_loader(cfg, name)`` the test loader."""
    names = required_datasets(cfg.DATASETS.TEST, "DATASETS.TEST", "evaluate")
    if evaluators is not None and len(evaluators) != len(names):
        raise ValueError(f"{len(evaluators)} evaluators for the {len(names)} datasets of DATASETS.TEST {list(names)}")
    results = {}
    if cfg.TEST.SLICE.ENABLED:  # each tile test-time augmented too under TEST.AUG
        model = BackendAsModel(with_slicing(ModelBackend(cfg, model), cfg.TEST.SLICE), model)
        logger.info("Sliced inference: tiles of %s pixels overlapping by %.0f%%%s%s", tuple(cfg.TEST.SLICE.SIZE),
                    cfg.TEST.SLICE.OVERLAP * 100, ", plus the whole image" if cfg.TEST.SLICE.FULL_IMAGE else "",
                    ", each test-time augmented" if cfg.TEST.AUG.ENABLED else "")
    elif cfg.TEST.AUG.ENABLED:
        model = build_tta(cfg, model)
        logger.info("Test-time augmentation: scales %s (longest side <= %d)%s", list(cfg.TEST.AUG.MIN_SIZES),
                    cfg.TEST.AUG.MAX_SIZE, ", each also mirrored" if cfg.TEST.AUG.FLIP else "")
    for index, name in enumerate(names):
        folder = inference_folder(cfg, name)
        if evaluators is not None:
            evaluator = evaluators[index]
        elif build_evaluator is not None:
            evaluator = build_evaluator(cfg, name)
        else:
            evaluator = COCOEvaluator(name, output_dir=folder)
        results[name] = inference_on_dataset(model, build_test_loader(cfg, name), evaluator, should_stop)
        if results[name] is None:
            return None
        if comm.is_main_process():
            write_reports(cfg, name, evaluator, results[name], folder)
    if comm.is_main_process():
        logger.info("Evaluation results:\n%s", format_results(results))
    return results


def write_reports(cfg, name: str, evaluator, results: dict, folder: str) -> None:
    """evaluation_results.json, and for a COCOEvaluator the per-category AP, precision-recall and confusion plots."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "evaluation_results.json"), "w") as f:
        json.dump(results, f, indent=1)
    if not results or not isinstance(evaluator, COCOEvaluator):
        return
    prefix = os.path.join(cfg.OUTPUT_DIR, "plots", f"{name}_" if len(cfg.DATASETS.TEST) > 1 else "")
    os.makedirs(os.path.dirname(prefix), exist_ok=True)
    class_names = MetadataCatalog.get(name).get("thing_classes")
    plot_per_category_ap(results, prefix + "per_category_ap.png")
    plot_precision_recall(evaluator.coco_evals, prefix + "pr_curves.png", class_names)
    write_confusion_matrix(evaluator, class_names, prefix + "confusion_matrix")
