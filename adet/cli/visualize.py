"""``embedmask visualize`` (and ``tools/visualize_data.py``): look at the data a model sees and at its predictions.

    # ground truth after the training augmentation (resize, flip), as the model is fed it
    embedmask visualize --config-file EmbedMask/Synthetic.yaml --source dataloader --num 8 --output-dir vis/
    # ground truth as annotated, on the original images of DATASETS.TEST[0] (or --split train)
    embedmask visualize --config-file EmbedMask/Synthetic.yaml --source annotation --split test --output-dir vis/
    # predictions from a COCO results json (e.g. OUTPUT_DIR/inference/coco_instances_results.json) beside the truth
    embedmask visualize --config-file EmbedMask/Synthetic.yaml --predictions results.json --output-dir vis/
"""

from __future__ import annotations

import json
import os
from collections import defaultdict

import cv2
import numpy as np
import pycocotools.mask as mask_util

from adet.data import DatasetCatalog, DatasetMapper, MetadataCatalog, read_image
from adet.errors import ConfigError, DatasetError
from adet.structures import PolygonMasks, polygons_to_bitmask, segmentation_to_rle, xywh_box
from adet.utils.logger import setup_logger
from adet.utils.visualizer import draw_instances

from .options import (
    ArgumentParser,
    add_config_arguments,
    add_dataset_argument,
    register_datasets_from_args,
    resolve_config,
)
from .preflight import check_datasets, check_output_folder


def build_parser(prog: str | None = None) -> ArgumentParser:
    parser = ArgumentParser(prog=prog, description="Draw a dataset's ground truth (as annotated, or after the "
                                                   "training augmentation) or a results json's predictions")
    add_config_arguments(parser, weights=False, required=True)
    parser.add_argument("--source", choices=["annotation", "dataloader"], default="dataloader",
                        help="ground truth as annotated, or after the training augmentation (default)")
    parser.add_argument("--split", choices=["train", "test"], default=None,
                        help="DATASETS.TRAIN[0] or DATASETS.TEST[0] (default: train for dataloader, test for "
                             "predictions)")
    parser.add_argument("--predictions", default="", metavar="JSON",
                        help="a COCO results json: draw its predictions (left) beside the ground truth (right)")
    parser.add_argument("--score-threshold", type=float, default=0.5, help="with --predictions: minimum score")
    add_dataset_argument(parser)
    parser.add_argument("--num", type=int, default=16, help="how many images (default 16)")
    parser.add_argument("--output-dir", required=True, help="where the drawings go")
    return parser


def _annotation_masks(annotations: list[dict], height: int, width: int) -> np.ndarray:
    masks = [mask_util.decode(segmentation_to_rle(a["segmentation"], height, width)).astype(bool)
             if a.get("segmentation") else np.zeros((height, width), bool) for a in annotations]
    return np.stack(masks) if masks else np.zeros((0, height, width), bool)


def draw_ground_truth(image: np.ndarray, annotations: list[dict], class_names) -> np.ndarray:
    """Annotations in dataset-dict form (XYWH or XYXY ``bbox``, contiguous ``category_id``) drawn on ``image``."""
    height, width = image.shape[:2]
    boxes = np.array([xywh_box(a) for a in annotations], dtype=np.float64).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    classes = np.array([a["category_id"] for a in annotations], dtype=np.int64)
    return draw_instances(image, boxes, classes, _annotation_masks(annotations, height, width), None, class_names)


def draw_augmented(record: dict, class_names) -> np.ndarray:
    """A mapped training sample (image tensor and gt Instances after augmentation) drawn."""
    image = record["image"].permute(1, 2, 0).numpy().astype(np.uint8).copy()
    instances = record["instances"]
    height, width = image.shape[:2]
    if not instances.has("gt_masks"):
        masks = None
    elif isinstance(instances.gt_masks, PolygonMasks):
        masks = np.stack([polygons_to_bitmask(p, height, width) for p in instances.gt_masks.polygons]) if len(
            instances) else np.zeros((0, height, width), bool)
    else:
        masks = instances.gt_masks.tensor.numpy()
    return draw_instances(image, instances.gt_boxes.tensor.numpy(), instances.gt_classes.numpy(), masks, None,
                          class_names)


def draw_predictions(image: np.ndarray, predictions: list[dict], to_contiguous: dict[int, int], class_names,
                     score_threshold: float) -> np.ndarray:
    kept = [p for p in predictions if p["score"] >= score_threshold]
    boxes = np.array([p["bbox"] for p in kept], dtype=np.float64).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    classes = np.array([to_contiguous.get(p["category_id"], p["category_id"]) for p in kept], dtype=np.int64)
    masks = np.stack([mask_util.decode(p["segmentation"]).astype(bool) for p in kept]) if kept and all(
        "segmentation" in p for p in kept) else None
    return draw_instances(image, boxes, classes, masks, np.array([p["score"] for p in kept]), class_names)


def read_results(path: str) -> list[dict]:
    """A COCO results json: a list of {"image_id", "category_id", "bbox", "score"[, "segmentation"]}."""
    try:
        with open(path, encoding="utf-8") as f:
            results = json.load(f)
    except FileNotFoundError:
        raise DatasetError(f"--predictions {path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"--predictions {path}: not valid JSON ({e})") from None
    required = {"image_id", "category_id", "bbox", "score"}
    if not isinstance(results, list) or not all(isinstance(r, dict) and required <= set(r) for r in results):
        raise DatasetError(f"--predictions {path}: not COCO results (a list of objects with image_id, category_id, "
                           "bbox and score)")
    return results


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    args = build_parser(prog).parse_args(argv)
    setup_logger()
    cfg = resolve_config(args.config_file, "", args.opts, datasets=register_datasets_from_args(args.dataset))
    check_output_folder(args.output_dir, "--output-dir")
    split = args.split or ("test" if args.predictions or args.source == "annotation" else "train")
    names = cfg.DATASETS.TRAIN if split == "train" else cfg.DATASETS.TEST
    if not names:
        raise ConfigError(f"DATASETS.{split.upper()} is empty: nothing to draw")
    name = names[0]
    check_datasets(cfg, (name,), f"DATASETS.{split.upper()}", need_annotations=False)
    dicts = DatasetCatalog.get(name)
    metadata = MetadataCatalog.get(name)
    class_names = metadata.get("thing_classes")
    written = 0
    if args.predictions:
        predictions = read_results(args.predictions)
        by_image = defaultdict(list)
        for p in predictions:
            by_image[p["image_id"]].append(p)
        to_contiguous = metadata.get("thing_dataset_id_to_contiguous_id", {})
        for record in [d for d in dicts if d["image_id"] in by_image][: args.num]:
            image = read_image(record["file_name"])
            left = draw_predictions(image, by_image[record["image_id"]], to_contiguous, class_names,
                                    args.score_threshold)
            right = draw_ground_truth(image, record["annotations"], class_names)
            written += _write(args.output_dir, record, np.concatenate([left, right], axis=1))
    elif args.source == "annotation":
        for record in dicts[: args.num]:
            written += _write(args.output_dir, record, draw_ground_truth(read_image(record["file_name"]),
                                                                         record["annotations"], class_names))
    else:
        mapper = DatasetMapper.from_config(cfg, is_train=True)
        rng = np.random.default_rng(max(cfg.SEED, 0))
        for record in dicts[: args.num]:
            mapped = mapper(record, rng)
            written += _write(args.output_dir, record, draw_augmented(mapped, class_names))
    print(f"{written} drawing(s) written to {args.output_dir}")


def _write(folder: str, record: dict, image: np.ndarray) -> int:
    stem = os.path.splitext(os.path.basename(record["file_name"]))[0]
    path = os.path.join(folder, f"{stem}.png")
    if not cv2.imwrite(path, image):
        raise OSError(f"{path}: could not write the drawing")
    return 1
