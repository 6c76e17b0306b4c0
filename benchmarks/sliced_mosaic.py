#!/usr/bin/env python
"""Sliced vs whole-image inference on large images with known ground truth: mosaics of synthetic_val images
(GRID x GRID cells of 128x160), scored with the COCO protocol both ways, plus the objects found twice.

    embedmask quickstart                         # trains models/EmbedMask_synthetic.pth (once)
    python benchmarks/sliced_mosaic.py           # 4x4 mosaics (512x640), tiles of 128x160 overlapping by 0.2 to 0.5

The model's test size (128) shrinks a whole mosaic 4x, so its small objects vanish; tiles are seen at the size the
model was trained at. The tiles (stride 96x120) are not aligned with the mosaic's cells: objects cross tile borders.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def compose(folder: str, grid: int, count: int) -> tuple[str, str]:
    """``count`` mosaics of grid x grid synthetic_val images, and their COCO annotations."""
    import cv2
    import numpy as np

    from adet.data import DatasetCatalog, MetadataCatalog

    records = DatasetCatalog.get("synthetic_val")
    images_dir = os.path.join(folder, "mosaics")
    os.makedirs(images_dir, exist_ok=True)
    data = {"images": [], "annotations": [], "categories": [
        {"id": i + 1, "name": n} for i, n in enumerate(MetadataCatalog.get("synthetic_val").thing_classes)]}
    for m in range(count):
        cells = records[m * grid * grid:(m + 1) * grid * grid]
        height, width = cells[0]["height"], cells[0]["width"]
        canvas = np.zeros((height * grid, width * grid, 3), np.uint8)
        for k, record in enumerate(cells):
            dy, dx = (k // grid) * height, (k % grid) * width
            canvas[dy:dy + height, dx:dx + width] = cv2.imread(record["file_name"])
            for a in record["annotations"]:
                x, y, w, h = a["bbox"]
                polygons = [[v + (dx if i % 2 == 0 else dy) for i, v in enumerate(p)] for p in a["segmentation"]]
                data["annotations"].append({"id": len(data["annotations"]) + 1, "image_id": m + 1,
                                            "category_id": a["category_id"] + 1, "bbox": [x + dx, y + dy, w, h],
                                            "area": w * h, "iscrowd": 0, "segmentation": polygons})
        name = f"mosaic_{m}.png"
        cv2.imwrite(os.path.join(images_dir, name), canvas)
        data["images"].append({"id": m + 1, "file_name": name, "height": height * grid, "width": width * grid})
    json_file = os.path.join(folder, "mosaics.json")
    with open(json_file, "w") as f:
        json.dump(data, f)
    return json_file, images_dir


def duplicates(predictions: list[dict], gt_file: str, min_score: float = 0.3) -> int:
    """Ground-truth objects matched (box IoU >= 0.5, same class) by more than one confident detection."""
    import pycocotools.mask as mask_util
    from pycocotools.coco import COCO

    gt = COCO(gt_file)
    extra = 0
    for image_id in gt.getImgIds():
        objects = gt.loadAnns(gt.getAnnIds(imgIds=image_id))
        found = [p for p in predictions if p["image_id"] == image_id and p["score"] >= min_score]
        for obj in objects:
            same = [p["bbox"] for p in found if p["category_id"] == obj["category_id"]]
            if same:
                matched = (mask_util.iou(same, [obj["bbox"]], [0]) >= 0.5).sum()
                extra += max(int(matched) - 1, 0)
    return extra


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=os.path.join("models", "EmbedMask_synthetic.pth"))
    parser.add_argument("--grid", type=int, default=4)
    parser.add_argument("--mosaics", type=int, default=6)
    parser.add_argument("--overlap", type=float, nargs="+", default=[0.2, 0.25, 0.35, 0.5],
                        help="the overlaps to compare (the default TEST.SLICE.OVERLAP was chosen from this table)")
    args = parser.parse_args()
    if not os.path.isfile(args.weights):
        raise SystemExit(f"{args.weights} is missing: run `embedmask quickstart` first (it trains that model)")

    from adet.api import load_config
    from adet.checkpoint import DetectionCheckpointer
    from adet.data import register_coco_instances
    from adet.engine.evaluate import evaluate_datasets
    from adet.evaluation import COCOEvaluator  # noqa: F401 - the evaluator evaluate_datasets uses
    from adet.modeling import build_model

    with tempfile.TemporaryDirectory() as folder:
        json_file, images = compose(folder, args.grid, args.mosaics)
        register_coco_instances("mosaics", {}, json_file, images)
        rows = []
        runs = [("whole image", []), ("tiles = the mosaic's cells (reference: each cell alone)", [
            "TEST.SLICE.ENABLED", True, "TEST.SLICE.SIZE", (128, 160), "TEST.SLICE.OVERLAP", 0.0,
            "TEST.SLICE.FULL_IMAGE", False])]
        for overlap in args.overlap:
            tiles = ["TEST.SLICE.ENABLED", True, "TEST.SLICE.SIZE", (128, 160), "TEST.SLICE.OVERLAP", overlap]
            runs += [(f"sliced, tiles 128x160, overlap {overlap}", [*tiles, "TEST.SLICE.FULL_IMAGE", False]),
                     (f"sliced + whole-image pass, overlap {overlap}", [*tiles, "TEST.SLICE.FULL_IMAGE", True])]
        for name, overrides in runs:
            output_dir = os.path.join(folder, f"run{len(rows)}")
            cfg = load_config(args.weights, None, ["DATASETS.TEST", ("mosaics",), "OUTPUT_DIR", output_dir,
                                                   *overrides], "cpu")
            model = build_model(cfg)
            DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
            start = time.perf_counter()
            results = evaluate_datasets(cfg, model)["mosaics"]
            seconds = (time.perf_counter() - start) / args.mosaics
            with open(os.path.join(cfg.OUTPUT_DIR, "inference", "coco_instances_results.json")) as f:
                predictions = json.load(f)
            rows.append((name, results["bbox"], results["segm"], duplicates(predictions, json_file), seconds))
        size = f"{128 * args.grid}x{160 * args.grid}"
        print(f"\n{args.mosaics} mosaics of {args.grid}x{args.grid} synthetic_val images ({size}), model "
              f"{args.weights}")
        print("| inference | bbox AP | bbox APs | segm AP | segm APs | segm AP50 | objects found twice | s/image |")
        print("|---|---|---|---|---|---|---|---|")
        for name, bbox, segm, twice, seconds in rows:
            print(f"| {name} | {bbox['AP']:.1f} | {bbox['APs']:.1f} | {segm['AP']:.1f} | {segm['APs']:.1f} | "
                  f"{segm['AP50']:.1f} | {twice} | {seconds:.2f} |")


if __name__ == "__main__":
    main()
