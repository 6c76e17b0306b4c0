"""PNG plots: training curves from ``metrics.json``, and per-category AP and precision-recall curves from a COCO
evaluation. Written with matplotlib's file-only backend; a missing matplotlib skips the plots with a log line."""

from __future__ import annotations

import json
import logging
import math
import os
import warnings

import numpy as np

logger = logging.getLogger(__name__)


def _pyplot():
    try:
        # matplotlib (optional: without it there are no plots) is loaded only when a plot is drawn.
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # after the backend is set: files only, no display needed
    except ImportError:
        logger.warning("matplotlib is not installed: no plots (pip install matplotlib)")
        return None
    return plt


def read_metrics(path: str) -> list[dict]:
    """metrics.json records; on resumed runs the latest record of an iteration wins."""
    by_key: dict[tuple[int, bool], dict] = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                record = json.loads(line)
                by_key[(record["iteration"], "total_loss" in record)] = record
    return [by_key[k] for k in sorted(by_key)]


def plot_training_curves(metrics_path: str, out_dir: str) -> list[str]:
    """loss.png (every loss term and the total), lr.png and, when evaluations were logged, ap.png."""
    plt = _pyplot()
    if plt is None or not os.path.isfile(metrics_path):
        return []
    records = read_metrics(metrics_path)
    train = [r for r in records if "total_loss" in r]
    evals = [r for r in records if "total_loss" not in r]
    os.makedirs(out_dir, exist_ok=True)
    written = []

    if train:
        iterations = [r["iteration"] for r in train]
        fig, ax = plt.subplots(figsize=(8, 5))
        for key in ["total_loss"] + sorted(k for k in train[-1] if k.startswith("loss_")):
            ax.plot(iterations, [r.get(key, math.nan) for r in train], label=key, linewidth=2 if key == "total_loss"
                    else 1.2)
        ax.set(xlabel="iteration", ylabel="loss", title="Training losses")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
        written.append(_save(fig, os.path.join(out_dir, "loss.png")))

        fig, ax = plt.subplots(figsize=(8, 3.5))
        ax.plot(iterations, [r["lr"] for r in train])
        ax.set(xlabel="iteration", ylabel="learning rate", title="Learning rate")
        ax.grid(alpha=0.3)
        written.append(_save(fig, os.path.join(out_dir, "lr.png")))

    keys = sorted({k for r in evals for k in r if k.endswith("/AP") or k.endswith("/AP50")})
    if evals and keys:
        fig, ax = plt.subplots(figsize=(8, 5))
        for key in keys:
            ax.plot([r["iteration"] for r in evals], [r.get(key, math.nan) for r in evals], marker="o", label=key)
        ax.set(xlabel="iteration", ylabel="AP (%)", title="Validation AP", ylim=(0, 100))
        ax.grid(alpha=0.3)
        ax.legend()
        written.append(_save(fig, os.path.join(out_dir, "ap.png")))
    return written


def plot_per_category_ap(results: dict[str, dict[str, float]], out_path: str) -> str | None:
    """Grouped bars of AP per category, one bar per task (bbox, segm)."""
    plt = _pyplot()
    if plt is None or not results:
        return None
    tasks = [task for task in results if "AP" in results[task]]
    if not tasks:
        return None
    names = [k[3:] for k in results[tasks[0]] if k.startswith("AP-")]
    if not names:
        return None
    width = 0.8 / len(tasks)
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(names) * len(tasks) + 2), 4.5))
    positions = np.arange(len(names))
    for i, task in enumerate(tasks):
        values = [results[task].get(f"AP-{n}", math.nan) for n in names]
        ax.bar(positions + i * width, np.nan_to_num(values), width, label=f"{task} (mean {results[task]['AP']:.1f})")
    ax.set_xticks(positions + width * (len(tasks) - 1) / 2)
    ax.set_xticklabels(names, rotation=45 if len(names) > 8 else 0, ha="right" if len(names) > 8 else "center")
    ax.set(ylabel="AP (%)", title="AP per category", ylim=(0, 100))
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    return _save(fig, out_path)


def plot_precision_recall(coco_evals: dict, out_path: str, class_names: list[str] | None = None) -> str | None:
    """Precision-recall curves at IoU 0.5 (all areas, 100 detections), one panel per task: one thin line per class
    (named in the legend with its AP50 when there are at most 20 classes) and the mean over classes in bold."""
    plt = _pyplot()
    if plt is None or not coco_evals:
        return None
    fig, axes = plt.subplots(1, len(coco_evals), figsize=(6 * len(coco_evals), 5), squeeze=False)
    for ax, (task, coco_eval) in zip(axes[0], coco_evals.items()):
        precision = coco_eval.eval["precision"][0, :, :, 0, -1]  # (recall points, categories) at IoU 0.5
        precision = np.where(precision > -1, precision, np.nan)
        recall = coco_eval.params.recThrs
        num_classes = precision.shape[1]
        for k in range(num_classes):
            if np.isnan(precision[:, k]).all():
                continue  # a class without ground truth
            name = class_names[k] if class_names and k < len(class_names) else f"class {k}"
            label = f"{name} {np.nanmean(precision[:, k]) * 100:.1f}" if num_classes <= 20 else None
            ax.plot(recall, precision[:, k], linewidth=1, alpha=0.8 if num_classes <= 20 else 0.35,
                    color=None if num_classes <= 20 else "grey", label=label)
        with warnings.catch_warnings():  # classes without ground truth are all-NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(precision, axis=1)
        ax.plot(recall, mean, color="black", linewidth=2.5, label=f"all classes {np.nanmean(mean) * 100:.1f} AP50")
        ax.set(xlabel="recall", ylabel="precision", title=f"{task} precision-recall (IoU 0.50)", xlim=(0, 1),
               ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    return _save(fig, out_path)


def plot_confusion_matrix(matrix: np.ndarray, class_names: list[str], out_path: str, iou_threshold: float = 0.5,
                          score_threshold: float = 0.5) -> str | None:
    """The (K+1, K+1) matrix of :func:`adet.evaluation.confusion.confusion_matrix`, each true-class column
    normalised to sum to 1, with the counts written in the cells when there are at most 30 classes."""
    plt = _pyplot()
    if plt is None:
        return None
    names = list(class_names) + ["background"]
    totals = matrix.sum(axis=0, keepdims=True)
    fractions = np.divide(matrix, totals, out=np.zeros(matrix.shape, dtype=np.float64), where=totals > 0)
    size = max(5.0, 0.45 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    ticks = np.arange(len(names))
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_xticklabels(names, rotation=90 if len(names) > 8 else 0, fontsize=8)
    ax.set_yticklabels(names, fontsize=8)
    ax.set(xlabel="true class", ylabel="predicted class",
           title=f"Confusion matrix (mask IoU >= {iou_threshold}, score >= {score_threshold})")
    if len(names) <= 31:
        for (row, col), count in np.ndenumerate(matrix):
            if count:
                ax.text(col, row, str(count), ha="center", va="center", fontsize=7,
                        color="white" if fractions[row, col] > 0.5 else "black")
    return _save(fig, out_path)


def _save(fig, path: str) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
    return path
