#!/usr/bin/env python
"""COCO evaluation time, by stage, in one run: pycocotools, faster-coco-eval, and the project's evaluator from model
outputs (boolean masks) to statistics and plots.

Workload: N images of 640x480 with 2-8 ground-truth instances each (polygon masks, 20 classes) and 100 detections
per image with RLE masks (jittered copies of the truth, wrong classes and random boxes), as a trained model gives.
Every library is called the official way (detectron2's COCOEvaluator: segm results without their boxes) and the
statistics must agree. detectron2's C++ evaluator is not installable here; it is the faster-coco-eval column plus
detectron2's own per-mask RLE encoding (timed here): faster-coco-eval wraps the C++ evaluateImg/accumulate that
detectron2's COCOeval_opt calls, after the same Python loadRes, _prepare and mask IoU.

    python benchmarks/coco_eval.py                 # 500 images, 50,000 detections
    python benchmarks/coco_eval.py --images 100
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
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


def library_seconds(library: str, gt: dict, detections: list[dict], task: str) -> tuple[dict[str, float], np.ndarray]:
    """The library alone, called the official way (segm results without boxes, bbox results without masks): seconds
    per stage and the 12 statistics."""
    from adet.evaluation.coco_evaluation import coco_from_dict

    coco_class, eval_class, _ = coco_api(library)
    coco_gt = coco_from_dict(coco_class, gt)
    dropped = "segmentation" if task == "bbox" else "bbox"
    seconds = {}
    with contextlib.redirect_stdout(io.StringIO()):
        start = time.perf_counter()
        evaluation = eval_class(coco_gt, coco_gt.loadRes([{k: v for k, v in d.items() if k != dropped}
                                                          for d in detections]), task)
        seconds["loadRes"], start = time.perf_counter() - start, time.perf_counter()
        for stage in ("evaluate", "accumulate", "summarize"):
            getattr(evaluation, stage)()
            seconds[stage], start = time.perf_counter() - start, time.perf_counter()
    return seconds, np.asarray(evaluation.stats[:12])


def per_image(detections: list[dict]) -> dict[int, list[dict]]:
    images: dict[int, list[dict]] = {}
    for d in detections:
        images.setdefault(d["image_id"], []).append(d)
    return images


def as_instances(detections: list[dict]):
    """A model's output for one image: boxes, scores, contiguous classes, full-size boolean masks."""
    import torch

    from adet.structures import Boxes, Instances

    boxes = torch.tensor([d["bbox"] for d in detections], dtype=torch.float32)
    boxes[:, 2:] += boxes[:, :2]
    masks = mask_util.decode([d["segmentation"] for d in detections]).astype(bool).transpose(2, 0, 1)
    return Instances((HEIGHT, WIDTH), pred_boxes=Boxes(boxes), scores=torch.tensor([d["score"] for d in detections]),
                     pred_classes=torch.tensor([d["category_id"] - 1 for d in detections]),
                     pred_masks=torch.from_numpy(np.ascontiguousarray(masks)))


def detectron2_results_to_rle(instances, image_id: int) -> list[dict]:
    """What detectron2's ``instances_to_coco_json`` does: one encode call per mask."""
    results = []
    for k, mask in enumerate(instances.pred_masks.numpy()):
        rle = mask_util.encode(np.array(mask[:, :, None], order="F", dtype="uint8"))[0]
        rle["counts"] = rle["counts"].decode("utf-8")
        x1, y1, x2, y2 = instances.pred_boxes.tensor[k].tolist()
        results.append({"image_id": image_id, "category_id": int(instances.pred_classes[k]),
                        "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(instances.scores[k]),
                        "segmentation": rle})
    return results


def project_seconds(gt_text: str, images: dict[int, list[dict]], folder: str) -> tuple[dict[str, float], dict]:
    """The project's COCOEvaluator from model outputs to statistics, with the evaluation plots training writes;
    seconds per stage (the evaluator's own timings) and its results."""
    from adet.data import DatasetCatalog, register_coco_instances
    from adet.engine.evaluate import write_confusion_matrix
    from adet.evaluation import COCOEvaluator
    from adet.utils.plots import plot_precision_recall

    json_file = os.path.join(folder, "gt.json")
    with open(json_file, "w") as f:
        f.write(gt_text)
    register_coco_instances("bench_coco", {}, json_file, folder)
    DatasetCatalog.get("bench_coco")
    evaluator = COCOEvaluator("bench_coco", distributed=False, output_dir=os.path.join(folder, "inference"))
    for image_id, detections in images.items():
        evaluator.process([{"image_id": image_id}], [{"instances": as_instances(detections)}])
    results = evaluator.evaluate()
    seconds = dict(evaluator.timings)
    start = time.perf_counter()
    plot_precision_recall(evaluator.coco_evals, os.path.join(folder, "pr_curves.png"))
    seconds["plot PR curves"], start = time.perf_counter() - start, time.perf_counter()
    write_confusion_matrix(evaluator, None, os.path.join(folder, "confusion_matrix"))
    seconds["confusion matrix"] = time.perf_counter() - start
    return seconds, results


def detectron2_rle_seconds(images: dict[int, list[dict]]) -> float:
    total = 0.0
    for image_id, detections in images.items():
        instances = as_instances(detections)
        start = time.perf_counter()
        detectron2_results_to_rle(instances, image_id)
        total += time.perf_counter() - start
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    args = parser.parse_args()
    gt, detections = workload(args.images)
    gt_text = json.dumps(gt)  # the libraries add to the dict they are given: each gets its own copy
    print(f"workload: {args.images} images, {len(gt['annotations'])} ground-truth instances, {len(detections)} "
          f"detections with RLE masks, {CLASSES} classes; {os.cpu_count()} CPUs")
    libraries = {}
    for library in ("pycocotools", "faster-coco-eval"):
        for task in ("bbox", "segm"):
            libraries[library, task] = library_seconds(library, json.loads(gt_text), detections, task)
    with tempfile.TemporaryDirectory() as folder:
        ours, results = project_seconds(gt_text, per_image(detections), folder)
    detectron2_rle = detectron2_rle_seconds(per_image(detections))

    print(f"\n{'stage':<24}{'pycocotools s':>14}{'faster-coco-eval s':>20}{'project s':>11}")
    print(f"{'results to RLE':<24}{'':>14}{detectron2_rle:>20.2f}{ours.get('results to RLE', 0):>11.2f}"
          "   (detectron2's per-mask encode | ours)")
    print(f"{'write json':<24}{'':>14}{'':>20}{ours.get('write json', 0):>11.2f}")
    totals = {"pycocotools": 0.0, "faster-coco-eval": 0.0}
    for task in ("bbox", "segm"):
        for stage in ("loadRes", "evaluate", "accumulate", "summarize"):
            row = [libraries[library, task][0][stage] for library in totals]
            for library, value in zip(totals, row):
                totals[library] += value
            print(f"{task + ' ' + stage:<24}{row[0]:>14.2f}{row[1]:>20.2f}{ours[f'{task} {stage}']:>11.2f}")
    for stage in ("plot PR curves", "confusion matrix"):
        print(f"{stage:<24}{'':>14}{'':>20}{ours[stage]:>11.2f}")
    project_total = sum(ours.values())
    detectron2_total = detectron2_rle + totals["faster-coco-eval"]
    print(f"{'total':<24}{totals['pycocotools']:>14.2f}{detectron2_total:>20.2f}{project_total:>11.2f}"
          "   (faster-coco-eval column: + detectron2's RLE encoding = detectron2's C++ evaluator)")
    segm = {library: sum(libraries[library, "segm"][0].values()) for library in totals}
    segm_ours = sum(v for k, v in ours.items() if k.startswith("segm "))
    print(f"\nsegm evaluation: project {segm_ours:.2f} s, pycocotools {segm['pycocotools']:.2f} s "
          f"({segm['pycocotools'] / segm_ours:.1f}x); detectron2-style whole evaluation {detectron2_total:.2f} s vs "
          f"project {project_total:.2f} s ({detectron2_total / project_total:.2f}x)")
    for task in ("bbox", "segm"):
        ours_stats = [results[task][m] / 100 for m in ("AP", "AP50", "AP75", "APs", "APm", "APl")]
        difference = max(np.abs(libraries["pycocotools", task][1][:6] - ours_stats).max(),
                         np.abs(libraries["faster-coco-eval", task][1] - libraries["pycocotools", task][1]).max())
        print(f"{task}: max |d statistic| against pycocotools (official protocol) {difference:.1e}")


if __name__ == "__main__":
    main()
