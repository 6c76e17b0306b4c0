#!/usr/bin/env python
"""COCO evaluation time: faster-coco-eval (the evaluator's library) vs pycocotools (its fallback), same run.

Workload: N images of 640x480 with 2-8 ground-truth instances each (polygon masks, 20 classes) and 100 detections
per image with RLE masks (jittered copies of the truth, wrong classes and random boxes), as a trained model gives.
Both libraries evaluate the same results; their statistics must agree.

    python benchmarks/coco_eval.py                 # 500 images, 50,000 detections
    python benchmarks/coco_eval.py --images 100
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time

import numpy as np
import pycocotools.mask as mask_util

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from adet.evaluation.coco_evaluation import coco_api  # noqa: E402

HEIGHT, WIDTH, CLASSES = 480, 640, 20


def polygon(rng: np.random.Generator, cx: float, cy: float, radius: float) -> list[float]:
    angles = np.sort(rng.uniform(0, 2 * np.pi, 12))
    radii = radius * rng.uniform(0.6, 1.0, 12)
    xs = np.clip(cx + radii * np.cos(angles), 0, WIDTH - 1)
    ys = np.clip(cy + radii * np.sin(angles), 0, HEIGHT - 1)
    return np.stack([xs, ys], 1).ravel().tolist()


def workload(num_images: int, seed: int = 0) -> tuple[dict, list[dict]]:
    rng = np.random.default_rng(seed)
    images, annotations, detections = [], [], []
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "height": HEIGHT, "width": WIDTH, "file_name": f"{image_id:012d}.jpg"})
        truths = []
        for _ in range(int(rng.integers(2, 9))):
            cx, cy, r = rng.uniform(60, WIDTH - 60), rng.uniform(60, HEIGHT - 60), rng.uniform(15, 120)
            poly = polygon(rng, cx, cy, r)
            rle = mask_util.merge(mask_util.frPyObjects([poly], HEIGHT, WIDTH))
            category = int(rng.integers(1, CLASSES + 1))
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                                "segmentation": [poly], "area": float(mask_util.area(rle)),
                                "bbox": mask_util.toBbox(rle).tolist(), "iscrowd": 0})
            truths.append((cx, cy, r, category))
        for k in range(100):
            cx, cy, r, category = truths[k % len(truths)]
            if k >= 4 * len(truths):  # the rest: background clutter
                cx, cy, r = rng.uniform(0, WIDTH), rng.uniform(0, HEIGHT), rng.uniform(5, 80)
            if rng.random() < 0.2:
                category = int(rng.integers(1, CLASSES + 1))
            jitter = rng.normal(0, 0.08 * r, 2)
            rle = mask_util.merge(mask_util.frPyObjects([polygon(rng, cx + jitter[0], cy + jitter[1], r)], HEIGHT,
                                                        WIDTH))
            rle["counts"] = rle["counts"].decode()
            detections.append({"image_id": image_id, "category_id": category, "score": float(rng.random()),
                               "bbox": mask_util.toBbox(rle).tolist(), "segmentation": rle})
    categories = [{"id": c, "name": f"class{c}"} for c in range(1, CLASSES + 1)]
    return {"images": images, "annotations": annotations, "categories": categories}, detections


def evaluate(library: str, gt: dict, detections: list[dict], task: str) -> tuple[float, np.ndarray]:
    """Seconds for loadRes + evaluate + accumulate + summarize, and the 12 statistics."""
    from adet.evaluation.coco_evaluation import coco_from_dict

    coco_class, eval_class, _ = coco_api(library)
    results = [dict(d) for d in detections] if task == "segm" else [
        {k: v for k, v in d.items() if k != "segmentation"} for d in detections]
    coco_gt = coco_from_dict(coco_class, gt)
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        evaluation = eval_class(coco_gt, coco_gt.loadRes(results), task)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return time.perf_counter() - start, np.asarray(evaluation.stats[:12])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    args = parser.parse_args()
    gt, detections = workload(args.images)
    print(f"workload: {args.images} images, {len(gt['annotations'])} ground-truth instances, {len(detections)} "
          f"detections with RLE masks, {CLASSES} classes")
    print(f"{'task':<6}{'pycocotools s':>15}{'faster-coco-eval s':>20}{'speed-up':>10}{'max |d stat|':>14}")
    for task in ("bbox", "segm"):
        slow, reference = evaluate("pycocotools", gt, detections, task)
        fast, stats = evaluate("faster-coco-eval", gt, detections, task)
        print(f"{task:<6}{slow:>15.2f}{fast:>20.2f}{slow / fast:>9.1f}x{np.abs(stats - reference).max():>14.1e}")


if __name__ == "__main__":
    main()
