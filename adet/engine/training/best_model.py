"""``model_best.pth``: the weights of the best evaluation so far, by the headline metric."""

from __future__ import annotations

import logging
import os

import torch

from adet.checkpoint import DetectionCheckpointer
from adet.utils import comm

logger = logging.getLogger(__name__)


def headline_metric(results: dict) -> tuple[str, float] | None:
    """What model_best.pth is chosen by: segm AP of the first test dataset (bbox AP if it has no masks)."""
    if not results:
        return None
    tasks = next(iter(results.values()))
    task = "segm" if "segm" in tasks else "bbox"
    value = tasks.get(task, {}).get("AP")
    return (f"{task}/AP", value) if value is not None and value == value else None


def read_best(output_dir: str) -> float:
    """The metric of an earlier run's model_best.pth in ``output_dir`` (so a resumed run keeps the real best)."""
    path = os.path.join(output_dir, "model_best.pth")
    if not os.path.isfile(path):
        return float("-inf")
    try:
        return float(torch.load(path, map_location="cpu", weights_only=True).get("best_metric", {}).get("value"))
    except Exception:  # noqa: BLE001 - an unreadable old file is simply replaced by the next best
        return float("-inf")


def save_if_best(checkpointer: DetectionCheckpointer, results: dict, iteration: int, extra: dict, best: float
                 ) -> float:
    """Write model_best.pth (weights only) when this evaluation beats every earlier one; returns the best so far.
    ``results``: {dataset: {task: {metric: value}}}."""
    metric = headline_metric(results)
    if not comm.is_main_process() or metric is None or metric[1] <= best:
        return best
    name, value = metric
    checkpointer.save("model_best", resumable=False, **extra,
                      best_metric={"name": name, "value": value, "iteration": iteration})
    logger.info("New best %s %.2f at iteration %d: saved model_best.pth", name, value, iteration)
    return value
