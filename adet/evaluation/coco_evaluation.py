"""COCO box and mask AP from model outputs gathered over all processes.

The statistics are computed by faster-coco-eval when it is installed (the same numbers as pycocotools, several times
faster; a dependency on Python >= 3.10), else by pycocotools. ``EMBEDMASK_COCO_EVAL=pycocotools`` forces the latter.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import time
from collections import defaultdict
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from adet.data.catalog import DatasetCatalog, MetadataCatalog
from adet.data.validation import load_coco, validate_coco
from adet.errors import ConfigError
from adet.structures import Instances, LocalMasks, xywh_box
from adet.utils.comm import all_gather, is_main_process

logger = logging.getLogger(__name__)

METRICS = ["AP", "AP50", "AP75", "APs", "APm", "APl"]


def coco_api(name: str | None = None) -> tuple[type, type, str]:
    """(COCO, COCOeval, library name): faster-coco-eval when available, else pycocotools (or the one named)."""
    name = name or os.environ.get("EMBEDMASK_COCO_EVAL", "")
    if name not in ("", "faster-coco-eval", "pycocotools"):
        raise ConfigError(f"EMBEDMASK_COCO_EVAL must be 'faster-coco-eval' or 'pycocotools', got {name!r}")
    if name != "pycocotools":
        try:
            # Optional (absent on Python 3.9): pycocotools is the fallback.
            from faster_coco_eval import COCO as FasterCOCO
            from faster_coco_eval import COCOeval_faster  # (optional, as above)

            return FasterCOCO, COCOeval_faster, "faster-coco-eval"
        except ImportError:
            if name:
                raise
    return COCO, COCOeval, "pycocotools"


def coco_from_dict(coco_class: type, data: dict):
    """A COCO API object over an in-memory annotation dict."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco = coco_class()
        coco.dataset = data
        coco.createIndex()
    return coco


def instances_to_coco_json(instances: Instances, image_id: int) -> list[dict]:
    """One image's detections as COCO results: XYWH boxes (w = x2 - x1), scores, contiguous class ids (mapped back
    to dataset ids later), and RLE masks."""
    if len(instances) == 0:
        return []
    boxes = instances.pred_boxes.tensor.numpy().astype(np.float64)
    boxes[:, 2:] -= boxes[:, :2]
    scores = instances.scores.tolist()
    classes = instances.pred_classes.tolist()
    rles = LocalMasks.of(instances).encode_rle() if instances.has("pred_masks") else None  # from the crops
    results = []
    for k in range(len(instances)):
        result = {"image_id": image_id, "category_id": classes[k], "bbox": boxes[k].tolist(), "score": scores[k]}
        if rles is not None:
            result["segmentation"] = rles[k]
        results.append(result)
    return results


def dataset_to_coco_dict(dataset_name: str) -> dict:
    """A COCO ground-truth dict built from a registered dataset's dicts (for datasets registered without a json)."""
    meta = MetadataCatalog.get(dataset_name)
    to_dataset_id = {v: k for k, v in meta.get("thing_dataset_id_to_contiguous_id", {}).items()}
    classes = meta.get("thing_classes") or []
    images, annotations = [], []
    for record in DatasetCatalog.get(dataset_name):
        images.append({"id": record["image_id"], "width": record["width"], "height": record["height"],
                       "file_name": record["file_name"]})
        for obj in record.get("annotations", []):
            x, y, w, h = xywh_box(obj)
            ann = {"id": len(annotations) + 1, "image_id": record["image_id"], "bbox": [x, y, w, h],
                   "category_id": to_dataset_id.get(obj["category_id"], obj["category_id"]),
                   "iscrowd": obj.get("iscrowd", 0), "area": float(w * h)}
            if "segmentation" in obj:
                ann["segmentation"] = obj["segmentation"]
                rle = mask_util.frPyObjects(obj["segmentation"], record["height"], record["width"])
                rle = mask_util.merge(rle) if isinstance(rle, list) else rle
                ann["area"] = float(mask_util.area(rle))
            annotations.append(ann)
    categories = [{"id": to_dataset_id.get(i, i), "name": name} for i, name in enumerate(classes)]
    return {"images": images, "annotations": annotations, "categories": categories}


class COCOEvaluator:
    """Collects predictions with :meth:`process`, then :meth:`evaluate` writes ``coco_instances_results.json`` to
    ``output_dir`` and returns ``{"bbox": {"AP": ..., "AP50": ..., "AP-<class>": ...}, "segm": {...},
    "ground_truth": {...}}`` in percent (on the main process; other processes get {}).

    The ground truth is the annotation file as the shared validation pass cleaned it (what training saw too); what
    it excluded, and images that could not be read (left out with :meth:`skip`), are counted under
    ``"ground_truth"``, logged, and detailed in ``output_dir/ground_truth_report.json``."""

    def __init__(self, dataset_name: str, tasks: tuple[str, ...] | None = None, distributed: bool = True,
                 output_dir: str | None = None, library: str | None = None, *, max_dets_per_image: int | None = None,
                 use_fast_impl: bool = True, kpt_oks_sigmas=(), allow_cached_coco: bool = True):
        # detectron2's older signature passes the config second: COCOEvaluator(name, cfg, True, output_dir).
        # use_fast_impl, kpt_oks_sigmas and allow_cached_coco are accepted for detectron2 scripts and change nothing
        # here (the fast library is chosen by ``library``; EmbedMask has no keypoints).
        if tasks is not None and not isinstance(tasks, (tuple, list)):
            tasks = None
        if max_dets_per_image not in (None, 100):
            raise ValueError(f"COCOEvaluator max_dets_per_image {max_dets_per_image}: the COCO protocol scores 100 "
                             "detections per image; change MODEL.FCOS.POST_NMS_TOPK_TEST instead")
        self.dataset_name = dataset_name
        self.distributed = distributed
        self.output_dir = output_dir
        self.metadata = MetadataCatalog.get(dataset_name)
        self.coco_class, self.coco_eval_class, self.library = coco_api(library)
        json_file = self.metadata.get("json_file")
        if json_file is None or not os.path.isfile(json_file):
            data, self.report = validate_coco(dataset_to_coco_dict(dataset_name), dataset_name)
            if self.report:
                logger.warning("%s", self.report.summary())
        else:
            data, self.report = load_coco(json_file, require_annotations=False)
        self.coco_gt = coco_from_dict(self.coco_class, data)
        self.tasks = tuple(tasks) if tasks is not None else None
        self.coco_evals: dict = {}
        self.predictions: list[dict] = []  # all processes' results, on the main process after evaluate()
        # Seconds per stage ("results to RLE", "write json", "<task> loadRes", "<task> evaluate", ...): logged, and
        # what benchmarks/coco_eval.py reports.
        self.timings: dict[str, float] = defaultdict(float)
        self.reset()

    def reset(self) -> None:
        self._predictions: list[dict] = []
        self._skipped: list[tuple] = []
        # Set when this process stopped early (a stop signal): then no process's partial results are scored.
        self.interrupted = False

    def _time(self, stage: str, since: float) -> float:
        """Add the seconds from ``since`` to ``stage``; returns now."""
        now = time.perf_counter()
        self.timings[stage] += now - since
        return now

    def skip(self, inputs: list[dict]) -> None:
        """Images that could not be used (``{"skipped": reason, "image_id": ...}``): excluded from evaluation."""
        self._skipped.extend((x["image_id"], x.get("file_name"), x["skipped"]) for x in inputs)

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        since = time.perf_counter()
        for inputs_i, outputs_i in zip(inputs, outputs):
            instances = outputs_i["instances"].to("cpu")
            self._predictions.extend(instances_to_coco_json(instances, inputs_i["image_id"]))
            if self.tasks is None:
                self.tasks = ("bbox", "segm") if instances.has("pred_masks") else ("bbox",)
        self._time("results to RLE", since)

    def evaluate(self) -> dict[str, dict[str, float]] | None:
        """The results on the main process ({} elsewhere), or None when any process was :attr:`interrupted`."""
        predictions, skipped, interrupted = self._predictions, self._skipped, self.interrupted
        tasks = self.tasks or ("bbox", "segm")
        if self.distributed:
            gathered = all_gather((predictions, tasks, skipped, interrupted))
            predictions = [p for part, _, _, _ in gathered for p in part]
            skipped = [s for _, _, part, _ in gathered for s in part]
            tasks = next((t for _, t, _, _ in gathered if t), tasks)
            interrupted = any(stopped for _, _, _, stopped in gathered)
            if not is_main_process():
                return None if interrupted else {}
        if interrupted:
            logger.warning("Evaluation on %s was interrupted by a stop signal: its partial results are dropped",
                           self.dataset_name)
            return None
        to_dataset_id = {v: k for k, v in self.metadata.get("thing_dataset_id_to_contiguous_id", {}).items()}
        for p in predictions:
            p["category_id"] = to_dataset_id.get(p["category_id"], p["category_id"])
        self.predictions = predictions
        if self.output_dir:
            since = time.perf_counter()
            os.makedirs(self.output_dir, exist_ok=True)
            path = os.path.join(self.output_dir, "coco_instances_results.json")
            with open(path, "w") as f:
                json.dump(predictions, f)
            self._time("write json", since)
            logger.info("Wrote %d detections to %s", len(predictions), path)
        skipped_ids = {image_id for image_id, _, _ in skipped}
        self.evaluated_image_ids = sorted(set(self.coco_gt.getImgIds()) - skipped_ids)
        if not any(not a["iscrowd"] for a in self.coco_gt.dataset["annotations"]):
            logger.warning("%s has no ground-truth annotations (an image-info file?): predictions written, no AP "
                           "computed", self.dataset_name)
            return {"ground_truth": self.ground_truth_summary(skipped)}
        results = {task: self._evaluate_task(predictions, task) for task in tasks}
        results["ground_truth"] = self.ground_truth_summary(skipped)
        return results

    def ground_truth_summary(self, skipped: list[tuple]) -> dict[str, float]:
        """What the evaluation counted and left out; logged, and detailed in ground_truth_report.json."""
        skipped_ids = {image_id for image_id, _, _ in skipped}
        left_out = [a for a in self.coco_gt.dataset["annotations"] if a["image_id"] in skipped_ids]
        summary = {"images": float(len(self.evaluated_image_ids)),
                   "annotations": float(len(self.coco_gt.dataset["annotations"]) - len(left_out)),
                   "annotations_excluded": float(self.report.annotations_dropped + len(left_out)),
                   "images_excluded": float(self.report.images_dropped + len(skipped_ids))}
        if self.report or skipped:
            reasons = [line.split(": ", 1)[1] for line in self.report.summary().splitlines()]
            if skipped:
                reasons.append(f"{len(skipped_ids)} image(s) not evaluated, they could not be used (with "
                               f"{len(left_out)} annotations): {skipped[0][2]}" + (" ..." if len(skipped) > 1 else ""))
            logger.warning("Evaluation on %s excludes %d ground-truth annotations and %d images: %s",
                           self.dataset_name, summary["annotations_excluded"], summary["images_excluded"],
                           "; ".join(reasons))
        if self.output_dir:
            report = dict(self.report.as_dict(), images_not_evaluated=[
                {"image_id": i, "file_name": f, "reason": r} for i, f, r in skipped], **summary)
            with open(os.path.join(self.output_dir, "ground_truth_report.json"), "w") as f:
                json.dump(report, f, indent=1)
        return summary

    def results_coco(self, predictions: list[dict], task: str):
        """What ``coco_gt.loadRes(predictions)`` returns under the official protocol (detectron2's COCOEvaluator):
        each task sees only its own field, so segm results are put in a size bucket by their mask's area (loadRes
        takes the box's whenever one is present). Areas and mask boxes are computed in one call for all results,
        where loadRes makes one per result."""
        field = "bbox" if task == "bbox" else "segmentation"
        annotations = [{"id": k + 1, "image_id": p["image_id"], "category_id": p["category_id"], "score": p["score"],
                        field: p[field], "iscrowd": 0} for k, p in enumerate(predictions)]
        if task == "bbox":
            boxes = np.asarray([p["bbox"] for p in predictions], dtype=np.float64).reshape(-1, 4)
            areas = (boxes[:, 2] * boxes[:, 3]).tolist()
        else:
            rles = [p["segmentation"] for p in predictions]
            # pycocotools' area() fails on lists of 256 or more under numpy 2 (a uint8 count): 255 at a time
            areas = [a for k in range(0, len(rles), 255) for a in mask_util.area(rles[k:k + 255]).tolist()]
            for annotation, box in zip(annotations, mask_util.toBbox(rles).tolist()):
                annotation["bbox"] = box
        for annotation, area in zip(annotations, areas):
            annotation["area"] = area
        return coco_from_dict(self.coco_class, {"images": list(self.coco_gt.dataset["images"]),
                                                "categories": copy.deepcopy(self.coco_gt.dataset["categories"]),
                                                "annotations": annotations})

    def _evaluate_task(self, predictions: list[dict], task: str) -> dict[str, float]:
        class_names = self.metadata.get("thing_classes") or [c["name"] for c in self.coco_gt.loadCats(
            sorted(self.coco_gt.getCatIds()))]
        if not predictions:
            logger.warning("No detections on %s: %s AP is 0", self.dataset_name, task)
            return {m: 0.0 for m in METRICS} | {f"AP-{name}": 0.0 for name in class_names}
        since = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            coco_eval = self.coco_eval_class(self.coco_gt, self.results_coco(predictions, task), task)
            coco_eval.params.imgIds = self.evaluated_image_ids
            since = self._time(f"{task} loadRes", since)
            coco_eval.evaluate()
            since = self._time(f"{task} evaluate", since)
            coco_eval.accumulate()
            since = self._time(f"{task} accumulate", since)
            coco_eval.summarize()
            self._time(f"{task} summarize", since)
        logger.info("COCO %s evaluation on %s (%s):\n%s", task, self.dataset_name, self.library,
                    printed.getvalue().rstrip() or format_stats(coco_eval.stats))
        self.coco_evals[task] = coco_eval
        results = {m: float(coco_eval.stats[i] * 100 if coco_eval.stats[i] >= 0 else "nan")
                   for i, m in enumerate(METRICS)}
        results.update(per_category_ap(coco_eval, class_names))
        logger.info("Per-category %s AP:\n%s", task, format_per_category(results))
        return results


def format_stats(stats) -> str:
    """The 12 COCO statistics as pycocotools' summary lines (faster-coco-eval logs instead of printing them)."""
    names = ["AP @[IoU=0.50:0.95 | area=all]", "AP @[IoU=0.50 | area=all]", "AP @[IoU=0.75 | area=all]",
             "AP @[IoU=0.50:0.95 | area=small]", "AP @[IoU=0.50:0.95 | area=medium]",
             "AP @[IoU=0.50:0.95 | area=large]", "AR @[maxDets=1]", "AR @[maxDets=10]", "AR @[maxDets=100]",
             "AR @[area=small]", "AR @[area=medium]", "AR @[area=large]"]
    return "\n".join(f" {name:<36} = {value:.3f}" for name, value in zip(names, stats))


def per_category_ap(coco_eval, class_names: list[str]) -> dict[str, float]:
    """AP (IoU 0.50:0.95, all areas, 100 detections) per category, in percent; nan for absent categories."""
    precision = coco_eval.eval["precision"]  # (T IoUs, R recalls, K classes, A areas, M max dets)
    results = {}
    for k, cat_id in enumerate(coco_eval.params.catIds):
        values = precision[:, :, k, 0, -1]
        values = values[values > -1]
        name = class_names[k] if k < len(class_names) else str(cat_id)
        results[f"AP-{name}"] = float(np.mean(values) * 100) if values.size else float("nan")
    return results


def format_per_category(results: dict[str, Any], columns: int = 3) -> str:
    cells = [f"{k[3:]:<16} {v:6.2f}" for k, v in results.items() if k.startswith("AP-")]
    rows = [" | ".join(cells[i:i + columns]) for i in range(0, len(cells), columns)]
    return "\n".join(rows)
