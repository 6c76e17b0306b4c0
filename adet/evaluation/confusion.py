"""Which class each ground-truth instance was predicted as: a confusion matrix over the classes plus background.

Per image, detections scoring at least ``score_threshold`` are matched to non-crowd ground truth of any class as COCO
matches them (but across classes): in decreasing score, each detection takes the unmatched ground truth it overlaps
most, if by mask IoU >= ``iou_threshold``. (FCOS can report several classes at one location with one shared mask;
the best-scoring one is the prediction, the others are false positives.) Entry [p, g] counts ground truth of class g
matched by a detection of class p; the last row counts ground truth no detection matched (missed), the last column
detections that matched nothing (false positives).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pycocotools.mask as mask_util

from adet.structures import segmentation_to_rle


def confusion_matrix(gt: dict, predictions: list[dict], category_ids: list[int], iou_threshold: float = 0.5,
                     score_threshold: float = 0.5) -> np.ndarray:
    """(K+1, K+1) int64 counts, rows predicted class, columns true class, index K background.

    Args:
        gt: a COCO annotation dict (``images``, ``annotations`` with ``segmentation``).
        predictions: COCO results with ``segmentation`` RLEs (boxes are used where a side has no mask).
        category_ids: the dataset ids of classes 0..K-1.
    """
    index = {c: k for k, c in enumerate(category_ids)}
    background = len(category_ids)
    matrix = np.zeros((background + 1, background + 1), dtype=np.int64)
    sizes = {image["id"]: (image["height"], image["width"]) for image in gt["images"]}
    truths, detections = defaultdict(list), defaultdict(list)
    for ann in gt["annotations"]:
        if not ann.get("iscrowd", 0) and ann["category_id"] in index:
            truths[ann["image_id"]].append(ann)
    for p in predictions:
        if p["score"] >= score_threshold and p["category_id"] in index:
            detections[p["image_id"]].append(p)
    for image_id in set(truths) | set(detections):
        gts, dets = truths.get(image_id, []), detections.get(image_id, [])
        matched_gt, matched_det = set(), set()
        if gts and dets:
            height, width = sizes[image_id]
            with_masks = all("segmentation" in a for a in gts + dets)
            if with_masks:
                ious = mask_util.iou([segmentation_to_rle(d["segmentation"], height, width) for d in dets],
                                     [segmentation_to_rle(g["segmentation"], height, width) for g in gts],
                                     [0] * len(gts))
            else:
                ious = mask_util.iou([d["bbox"] for d in dets], [g["bbox"] for g in gts], [0] * len(gts))
            ious = np.asarray(ious).reshape(len(dets), len(gts))
            for d in np.argsort([-det["score"] for det in dets], kind="stable").tolist():
                available = [g for g in range(len(gts)) if g not in matched_gt and ious[d, g] >= iou_threshold]
                if available:
                    g = max(available, key=lambda k: ious[d, k])
                    matched_det.add(d)
                    matched_gt.add(g)
                    matrix[index[dets[d]["category_id"]], index[gts[g]["category_id"]]] += 1
        for g, ann in enumerate(gts):
            if g not in matched_gt:
                matrix[background, index[ann["category_id"]]] += 1
        for d, det in enumerate(dets):
            if d not in matched_det:
                matrix[index[det["category_id"]], background] += 1
    return matrix
