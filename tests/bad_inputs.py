"""A corpus of bad (and tricky but legitimate) inputs for the `embedmask` commands, each with its expected outcome.

Every case builds its files in a folder holding a small valid world (images, a COCO file, a tiny config and a
trained-format checkpoint) and gives the command line to run and what must happen: the exit status, a message naming
the culprit, never a traceback. tests/test_bad_inputs.py runs them all; to look at the corpus itself:

    python tests/bad_inputs.py OUT_DIR     # writes each case's files under OUT_DIR/<case>/ and OUT_DIR/cases.json
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from typing import Callable

import cv2
import numpy as np
import torch

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from tests.conftest import make_tiny_cfg, shapes_image
else:
    from .conftest import make_tiny_cfg, shapes_image

CLASSES = {1: "box", 2: "triangle"}
HEIGHT, WIDTH = 64, 80


@dataclass
class World:
    """The valid starting point every case changes one thing of."""

    root: str
    images: str = ""
    coco: dict = field(default_factory=dict)
    config: str = ""
    checkpoint: str = ""

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def write_json(self, name: str, data, raw: str | bytes | None = None) -> str:
        path = self.path(name)
        if raw is not None:
            with open(path, "wb" if isinstance(raw, bytes) else "w") as f:
                f.write(raw)
        else:
            with open(path, "w", encoding="utf-8") as f:
                json.dump(data, f, ensure_ascii=False)
        return path

    def write_text(self, name: str, text: str | bytes) -> str:
        path = self.path(name)
        with open(path, "wb" if isinstance(text, bytes) else "w") as f:
            f.write(text)
        return path


def make_world(root: str) -> World:
    """Three 64x80 images with a box and a triangle each, their COCO file, a tiny 2-class config and checkpoint."""
    from adet.modeling import build_model

    world = World(root)
    world.images = world.path("images")
    os.makedirs(world.images, exist_ok=True)
    images, annotations = [], []
    for image_id, name in ((1, "a.png"), (2, "b.png"), (3, "c.png")):
        image, (rect, tri) = shapes_image(96, 128, seed=image_id)
        image = cv2.resize(image, (WIDTH, HEIGHT))
        cv2.imwrite(os.path.join(world.images, name), image)
        images.append({"id": image_id, "file_name": name, "height": HEIGHT, "width": WIDTH})
        for category, polygon in ((1, rect), (2, tri)):
            xy = polygon.reshape(-1, 2) * [WIDTH / 128, HEIGHT / 96]
            x0, y0 = xy.min(0)
            x1, y1 = xy.max(0)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                                "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)], "iscrowd": 0,
                                "area": float((x1 - x0) * (y1 - y0)), "segmentation": [xy.ravel().tolist()]})
    world.coco = {"images": images, "annotations": annotations,
                  "categories": [{"id": i, "name": n} for i, n in CLASSES.items()]}
    world.write_json("train.json", world.coco)
    cfg = make_tiny_cfg("MODEL.FCOS.NUM_CLASSES", 2, "MODEL.BACKBONE.FREEZE_AT", 0, "MODEL.RESNETS.NORM", "BN",
                        "SOLVER.IMS_PER_BATCH", 2, "SOLVER.BASE_LR", 0.01, "SOLVER.MAX_ITER", 2,
                        "SOLVER.WARMUP_ITERS", 1, "SOLVER.CHECKPOINT_PERIOD", 1, "SEED", 0,
                        "INPUT.MIN_SIZE_TRAIN", (64,), "INPUT.MIN_SIZE_TEST", 64, "MODEL.EMBEDMASK.MAX_PROPOSALS", 20)
    world.config = world.write_text("config.yaml", cfg.dump())
    torch.manual_seed(0)
    world.checkpoint = world.path("model.pth")
    torch.save({"model": build_model(cfg).state_dict(), "config": cfg.dump(), "class_names": list(CLASSES.values()),
                "category_ids": list(CLASSES)}, world.checkpoint)
    return world


# ---- command lines -------------------------------------------------------------------------------------------------
def train(world: World, json_name: str = "train.json", *extra: str, out: str = "out") -> list[str]:
    return ["train", "--config-file", world.config, "--dataset", f"toy={world.path(json_name)}:{world.images}",
            "DATASETS.TRAIN", "('toy',)", "DATASETS.TEST", "()", "OUTPUT_DIR", world.path(out), *extra]


def evaluate(world: World, json_name: str = "train.json", *extra: str, out: str = "eval") -> list[str]:
    return ["eval", "--weights", world.checkpoint, "--dataset", f"toy={world.path(json_name)}:{world.images}",
            "DATASETS.TEST", "('toy',)", "OUTPUT_DIR", world.path(out), "MODEL.DEVICE", "cpu",
            "MODEL.FCOS.INFERENCE_TH_TEST", "0.0", *extra]


def predict(world: World, *extra: str) -> list[str]:
    return ["predict", "--weights", world.checkpoint, "--input", world.images, "--device", "cpu", *extra]


def after(step: Callable[[World], object], command: Callable[..., list[str]] = evaluate, json: str = "train.json"):
    """A case that does ``step`` to the world, then runs ``command`` on the annotation file ``json``."""
    def build(world: World) -> list[str]:
        step(world)
        return command(world, json)
    return build


def annotations_case(mutate: Callable[[dict], None], json_name: str = "bad.json"):
    """A case that changes the valid COCO file with ``mutate`` and evaluates on it."""
    def build(world: World, command=evaluate) -> list[str]:
        data = copy.deepcopy(world.coco)
        mutate(data)
        world.write_json(json_name, data)
        return command(world, json_name)
    return build


def with_annotation(**fields):
    """Add one annotation (of image 1, category 1, id 100 unless given) with ``fields``; None removes a field."""
    def mutate(data: dict) -> None:
        ann = {"id": 100, "image_id": 1, "category_id": 1, "bbox": [10.0, 10.0, 20.0, 20.0], "iscrowd": 0,
               "area": 400.0, "segmentation": [[10, 10, 30, 10, 30, 30, 10, 30]]}
        ann.update(fields)
        data["annotations"].append({k: v for k, v in ann.items() if v is not None})
    return mutate


# ---- the corpus --------------------------------------------------------------------------------------------------
@dataclass
class Case:
    name: str
    category: str
    build: Callable[[World], list[str]]
    code: int
    message: str  # must appear in the output (stderr's "error: ..." line, or the log for a run that succeeds)
    check: Callable[[World], None] | None = None  # what else must hold afterwards (results, nothing lost)


def _set(path: tuple, value):
    def mutate(data: dict) -> None:
        target = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return mutate


def _apply(*mutations):
    def mutate(data: dict) -> None:
        for m in mutations:
            m(data)
    return mutate


def _ground_truth(world: World, out: str = "eval") -> dict:
    with open(world.path(out, "inference", "ground_truth_report.json")) as f:
        return json.load(f)


def _excluded(annotations: int, images: int = 0):
    def check(world: World) -> None:
        report = _ground_truth(world)
        assert (report["annotations_excluded"], report["images_excluded"]) == (annotations, images), report
    return check


def _same_results_as_valid(world: World) -> None:
    """The evaluation gave exactly the detections and AP of the valid file: the bad entry changed nothing."""
    from adet.cli import main

    assert main(evaluate(world, out="eval_valid")) == 0
    for name in ("coco_instances_results.json", "evaluation_results.json"):
        with open(world.path("eval", "inference", name)) as f, open(world.path("eval_valid", "inference", name)) as g:
            bad, valid = json.load(f), json.load(g)
        if name == "evaluation_results.json":
            assert bad["ground_truth"]["annotations_excluded"] == valid["ground_truth"]["annotations_excluded"] + 1
            bad, valid = {k: bad[k] for k in ("bbox", "segm")}, {k: valid[k] for k in ("bbox", "segm")}
        assert bad == valid


def _nothing_saved(out: str = "out"):
    def check(world: World) -> None:
        assert not os.path.exists(world.path(out)) or not any(
            f.endswith(".pth") for f in os.listdir(world.path(out)))
    return check


def _unchanged_run(world: World) -> None:
    """A failed --resume left the earlier run exactly as it was."""
    with open(world.path("run_snapshot.json")) as f:
        before = json.load(f)
    assert _snapshot(world.path("out")) == before


def _snapshot(folder: str) -> dict:
    return {name: os.path.getsize(os.path.join(folder, name)) for name in sorted(os.listdir(folder))
            if not name.startswith("events.out")}


def _earlier_run(world: World, last_checkpoint: str | bytes | None) -> list[str]:
    """A finished 2-iteration run in out/, then ``last_checkpoint`` replaced (None: deleted), and --resume."""
    from adet.cli import main

    assert main(train(world)) == 0
    marker = world.path("out", "last_checkpoint")
    if last_checkpoint is None:
        os.remove(marker)
    else:
        with open(marker, "wb" if isinstance(last_checkpoint, bytes) else "w") as f:
            f.write(last_checkpoint)
    with open(world.path("run_snapshot.json"), "w") as f:
        json.dump(_snapshot(world.path("out")), f)
    return train(world, "train.json", "--resume", "SOLVER.MAX_ITER", "4")


CASES: list[Case] = [
    # -- annotation files: fatal ------------------------------------------------------------------------------------
    Case("json_without_annotations_key_train", "annotations", lambda w: annotations_case(
        lambda d: d.pop("annotations"))(w, train), 2, "has no 'annotations'", _nothing_saved()),
    Case("json_with_zero_annotations_train", "annotations", lambda w: annotations_case(
        _set(("annotations",), []))(w, train), 2, "no usable annotation", _nothing_saved()),
    Case("json_only_bad_annotations_train", "annotations", lambda w: annotations_case(
        lambda d: [a.update(bbox=[1, 2, 3]) for a in d["annotations"]])(w, train), 2,
        "no usable annotation (6 dropped"),
    Case("json_without_images", "annotations", annotations_case(_set(("images",), [])), 2, "lists no images"),
    Case("json_images_not_a_list", "annotations", annotations_case(_set(("images",), {"1": "a.png"})), 2,
         "no 'images' list"),
    Case("json_without_categories", "annotations", annotations_case(lambda d: d.pop("categories")), 2,
         "no categories"),
    Case("json_duplicate_category_id", "annotations", annotations_case(
        _set(("categories",), [{"id": 1, "name": "box"}, {"id": 1, "name": "triangle"}])), 2,
        "category id 1 appears twice"),
    Case("json_top_level_list", "annotations", after(lambda w: w.write_json("bad.json", [1, 2]), json="bad.json"),
         2, "not a COCO instances file (the top level is a list"),
    Case("json_invalid", "annotations", after(lambda w: w.write_text("bad.json", '{"images": ['), json="bad.json"),
         2, "bad.json: not valid JSON"),
    Case("json_binary", "annotations", after(lambda w: w.write_text("bad.json", b"\x89PNG\x00\xff\xfe"),
                                             json="bad.json"), 2, "bad.json: not valid JSON"),
    Case("json_missing_file", "annotations", lambda w: evaluate(w, "missing.json"), 2, "missing.json does not exist"),
    Case("json_all_images_invalid", "annotations", annotations_case(
        lambda d: [i.pop("file_name") for i in d["images"]]), 2, "no usable image entry"),
    # -- annotation files: entries dropped or repaired, results unaffected --------------------------------------------
    Case("bbox_nan", "annotations", annotations_case(with_annotation(bbox=[float("nan"), 1.0, 5.0, 5.0])), 0,
         "1 with a non-finite bbox (ids 100)", lambda w: (_excluded(1)(w), _same_results_as_valid(w))),
    Case("bbox_infinite", "annotations", annotations_case(with_annotation(bbox=[1.0, 1.0, float("inf"), 5.0])), 0,
         "1 with a non-finite bbox (ids 100)", _excluded(1)),
    Case("bbox_three_numbers", "annotations", annotations_case(with_annotation(bbox=[1, 2, 3])), 0,
         "1 with a bbox that is not 4 numbers (ids 100)", _excluded(1)),
    Case("bbox_strings", "annotations", annotations_case(with_annotation(bbox=["1", "2", "3", "4"])), 0,
         "1 with a bbox that is not 4 numbers (ids 100)", _excluded(1)),
    Case("bbox_negative_size", "annotations", annotations_case(with_annotation(bbox=[30.0, 30.0, -5.0, 10.0])), 0,
         "1 with a bbox of zero or negative size (ids 100)", _excluded(1)),
    Case("bbox_outside_image", "annotations", annotations_case(with_annotation(bbox=[500.0, 500.0, 5.0, 5.0])), 0,
         "1 with a bbox outside the image (ids 100)", _excluded(1)),
    Case("no_bbox_box_from_mask", "annotations", annotations_case(with_annotation(bbox=None)), 0,
         "without bbox, its box derived from the mask (ids 100)", _excluded(0)),
    Case("no_segmentation", "annotations", annotations_case(with_annotation(segmentation=None)), 0,
         "1 without segmentation (ids 100)", _excluded(1)),
    Case("segmentation_a_string", "annotations", annotations_case(with_annotation(segmentation="polygon")), 0,
         "1 with a segmentation that is neither polygons nor RLE (ids 100)", _excluded(1)),
    Case("polygon_two_points", "annotations", annotations_case(with_annotation(segmentation=[[10, 10, 20, 20]])), 0,
         "1 without a valid polygon (>= 3 points, non-zero area) (ids 100)", _excluded(1)),
    Case("polygon_odd_length", "annotations", annotations_case(with_annotation(
        segmentation=[[10, 10, 30, 10, 30, 30, 10]])), 0, "without a valid polygon", _excluded(1)),
    Case("polygon_collinear", "annotations", annotations_case(with_annotation(
        segmentation=[[10, 10, 20, 20, 30, 30]])), 0, "without a valid polygon", _excluded(1)),
    Case("polygon_with_strings", "annotations", annotations_case(with_annotation(
        segmentation=[["10", 10, 30, 10, 30, 30]])), 0, "without a valid polygon", _excluded(1)),
    Case("polygon_one_of_two_degenerate", "annotations", annotations_case(with_annotation(
        segmentation=[[10, 10, 30, 10, 30, 30, 10, 30], [1, 1, 2, 2]])), 0,
        "invalid polygons removed from an instance that has valid ones (ids 100)", _excluded(0)),
    Case("rle_garbage_counts", "annotations", annotations_case(with_annotation(
        segmentation={"size": [HEIGHT, WIDTH], "counts": "\x7f\x7f garbage"})), 0, "1 malformed RLE (ids 100)",
        _excluded(1)),
    Case("rle_counts_wrong_total", "annotations", annotations_case(with_annotation(
        segmentation={"size": [HEIGHT, WIDTH], "counts": [10, 20, 30]})), 0, "1 malformed RLE (ids 100)",
        _excluded(1)),
    Case("rle_size_differs_from_image", "annotations", annotations_case(with_annotation(
        segmentation={"size": [32, 40], "counts": [100, 200, 980]})), 0,
        "1 RLE whose size differs from the image (ids 100)", _excluded(1)),
    Case("rle_without_counts", "annotations", annotations_case(with_annotation(
        segmentation={"size": [HEIGHT, WIDTH]})), 0, "1 malformed RLE (ids 100)", _excluded(1)),
    Case("annotation_of_missing_image", "annotations", annotations_case(with_annotation(image_id=77)), 0,
         "1 of an image id that is not in 'images' (ids 100)", _excluded(1)),
    Case("annotation_of_unknown_category", "annotations", annotations_case(with_annotation(category_id=9)), 0,
         "1 of a category id that is not in 'categories' (ids 100)", _excluded(1)),
    Case("annotation_iscrowd_2", "annotations", annotations_case(with_annotation(iscrowd=2)), 0,
         "1 with iscrowd neither 0 nor 1 (ids 100)", _excluded(1)),
    Case("annotation_not_an_object", "annotations", annotations_case(lambda d: d["annotations"].append([1, 2])), 0,
         "1 entry that is not an object (ids #6)", _excluded(1)),
    Case("annotation_area_missing", "annotations", annotations_case(with_annotation(area=None)), 0,
         "without a valid area, computed from the mask (ids 100)", _excluded(0)),
    Case("annotation_ids_duplicate", "annotations", annotations_case(with_annotation(id=1)), 0,
         "with a missing or duplicate id, renumbered (ids 1)", _excluded(0)),
    Case("annotation_id_missing", "annotations", annotations_case(with_annotation(id=None)), 0,
         "with a missing or duplicate id, renumbered (ids #6)", _excluded(0)),
    Case("images_same_id", "annotations", annotations_case(
        lambda d: d["images"].append(dict(d["images"][0], file_name="b.png"))), 0,
        "2 sharing its id with another image (annotations ambiguous) (ids 1, 1)", _excluded(2, 2)),
    Case("image_without_file_name", "annotations", annotations_case(lambda d: d["images"][2].pop("file_name")), 0,
         "1 without a file_name (ids 3)", _excluded(2, 1)),
    Case("image_height_zero", "annotations", annotations_case(_set(("images", 1, "height"), 0)), 0,
         "1 without a positive integer height and width (ids 2)", _excluded(2, 1)),
    Case("image_without_id", "annotations", annotations_case(lambda d: d["images"][2].pop("id")), 0,
         "1 without an integer id (ids #2)", _excluded(2, 1)),
    Case("category_without_name", "annotations", annotations_case(_set(("categories", 1, "name"), "")), 0,
         "category without a name, named by its id (ids 2)", _excluded(0)),
    # -- images on disk ---------------------------------------------------------------------------------------------
    Case("image_file_missing_eval", "images", lambda w: (os.remove(os.path.join(w.images, "c.png")), evaluate(w))[1],
         0, "Leaving out a test image", _excluded(2, 1)),
    Case("image_file_corrupt_eval", "images", lambda w: (w.write_text("images/c.png", b"\x89PNG not really"),
                                                         evaluate(w))[1], 0, "not a readable image", _excluded(2, 1)),
    Case("image_size_differs_eval", "images", lambda w: (cv2.imwrite(os.path.join(w.images, "c.png"), np.zeros(
        (WIDTH, HEIGHT, 3), np.uint8)), evaluate(w))[1], 0, "(rotated by its EXIF orientation?)", _excluded(2, 1)),
    Case("image_size_differs_train", "images", lambda w: (cv2.imwrite(os.path.join(w.images, "c.png"), np.zeros(
        (30, 30, 3), np.uint8)), train(w))[1], 0, "Skipping a training image"),
    Case("all_training_images_unreadable", "images", lambda w: ([w.write_text(f"images/{n}", b"junk") for n in (
        "a.png", "b.png", "c.png")], train(w))[1], 2, "5 unusable training images in a row"),
    Case("unreadable_images_in_loader_workers", "images", lambda w: ([w.write_text(f"images/{n}", b"junk") for n in (
        "a.png", "b.png", "c.png")], train(w, "train.json", "DATALOADER.NUM_WORKERS", "2"))[1], 2,
         "5 unusable training images in a row"),
    Case("unicode_file_names", "images", lambda w: (shutil.copy(os.path.join(w.images, "a.png"), os.path.join(
        w.images, "bild_é_图.png")), annotations_case(_set(("images", 0, "file_name"), "bild_é_图.png"))(w))[1], 0,
         "ground truth: 6 annotations on 3 images evaluated", _excluded(0)),
    Case("image_without_annotations_eval", "images", annotations_case(
        lambda d: d.update(annotations=[a for a in d["annotations"] if a["image_id"] != 3])), 0,
        "ground truth: 4 annotations on 3 images evaluated", _excluded(0)),
    Case("crowd_rle_annotation", "images", annotations_case(with_annotation(
        iscrowd=1, segmentation={"size": [HEIGHT, WIDTH], "counts": [0, 100, HEIGHT * WIDTH - 100]})), 0,
         "ground truth: 7 annotations on 3 images evaluated", _excluded(0)),
    Case("image_info_file_eval", "images", annotations_case(lambda d: d.pop("annotations")), 0,
         "has no ground-truth annotations (an image-info file?): predictions written, no AP computed"),
    # -- configs ----------------------------------------------------------------------------------------------------
    Case("config_unknown_key", "config", lambda w: train(w, "train.json", "SOLVER.BASE_LRR", "0.1"), 2,
         "did you mean 'SOLVER.BASE_LR'"),
    Case("config_wrong_type", "config", lambda w: train(w, "train.json", "SOLVER.MAX_ITER", "many"), 2,
         "SOLVER.MAX_ITER expects an int"),
    Case("config_odd_overrides", "config", lambda w: train(w, "train.json", "SOLVER.MAX_ITER"), 2,
         "overrides must be KEY VALUE pairs"),
    Case("config_base_cycle", "config", lambda w: (w.write_text("a.yaml", "_BASE_: b.yaml\n"), w.write_text(
        "b.yaml", "_BASE_: a.yaml\n"), ["train", "--config-file", w.path("a.yaml")])[2], 2,
        "_BASE_ chain loops back to it (a.yaml -> b.yaml -> a.yaml)"),
    Case("config_base_missing", "config", lambda w: (w.write_text("a.yaml", "_BASE_: nope.yaml\n"),
                                                     ["train", "--config-file", w.path("a.yaml")])[1], 2,
         "nope.yaml does not exist"),
    Case("config_base_not_a_name", "config", lambda w: (w.write_text("a.yaml", "_BASE_: 3\n"),
                                                        ["train", "--config-file", w.path("a.yaml")])[1], 2,
         "_BASE_ must be a config file name"),
    Case("config_invalid_yaml", "config", lambda w: (w.write_text("a.yaml", "MODEL: [unclosed\n"),
                                                     ["train", "--config-file", w.path("a.yaml")])[1], 2,
         "a.yaml: not valid YAML"),
    Case("config_top_level_list", "config", lambda w: (w.write_text("a.yaml", "- 1\n- 2\n"),
                                                       ["train", "--config-file", w.path("a.yaml")])[1], 2,
         "expected a mapping of config keys at the top level, found a list"),
    Case("config_binary_file", "config", lambda w: (w.write_text("a.yaml", b"\xff\xfe\x00\x01binary"),
                                                    ["train", "--config-file", w.path("a.yaml")])[1], 2,
         "a.yaml: not a text file"),
    Case("config_missing", "config", lambda w: ["train", "--config-file", w.path("nope.yaml")], 2,
         "nope.yaml: no such file, and not a packaged config"),
    Case("config_folder", "config", lambda w: ["train", "--config-file", w.images], 2, "is a folder"),
    Case("config_group_given_a_value", "config", lambda w: (w.write_text("a.yaml", "MODEL: 3\n"),
                                                            ["train", "--config-file", w.path("a.yaml")])[1], 2,
         "MODEL is a group of keys, got the value 3"),
    Case("device_gpu", "config", lambda w: train(w, "train.json", "MODEL.DEVICE", "gpu"), 2,
         "MODEL.DEVICE 'gpu' is not a device: use cpu, cuda or cuda:N"),
    Case("dataset_test_typo", "config", lambda w: train(w, "train.json", "DATASETS.TEST", "('tyo',)"), 2,
         "DATASETS.TEST: dataset 'tyo' is not registered (did you mean 'toy'?)", _nothing_saved()),
    Case("dataset_train_typo", "config", lambda w: train(w, "train.json", "DATASETS.TRAIN", "('coco_2017_trian',)"),
         2, "dataset 'coco_2017_trian' is not registered (did you mean 'coco_2017_train'?)"),
    Case("dataset_not_on_disk", "config", lambda w: train(w, "train.json", "DATASETS.TRAIN", "('coco_2017_train',)"),
         2, "instances_train2017.json does not exist"),
    Case("batch_zero", "config", lambda w: train(w, "train.json", "SOLVER.IMS_PER_BATCH", "0"), 2,
         "SOLVER.IMS_PER_BATCH must be at least 1"),
    Case("learning_rate_negative", "config", lambda w: train(w, "train.json", "SOLVER.BASE_LR", "-1"), 2,
         "SOLVER.BASE_LR must be a positive number"),
    Case("steps_decreasing", "config", lambda w: train(w, "train.json", "SOLVER.STEPS", "(5, 2)"), 2,
         "SOLVER.STEPS must be increasing"),
    Case("float32_precision_unknown", "config", lambda w: train(w, "train.json", "FLOAT32_PRECISION", "ultra"), 2,
         "FLOAT32_PRECISION 'ultra' must be"),
    Case("crop_enabled", "config", lambda w: train(w, "train.json", "INPUT.CROP.ENABLED", "True"), 2,
         "random crops are not supported"),
    Case("num_classes_mismatch", "config", lambda w: train(w, "train.json", "MODEL.FCOS.NUM_CLASSES", "5"), 2,
         "has 2 classes but MODEL.FCOS.NUM_CLASSES is 5"),
    Case("unsupported_backbone_depth", "config", lambda w: train(w, "train.json", "MODEL.RESNETS.DEPTH", "42"), 2,
         "MODEL.RESNETS.DEPTH"),
    # -- weights -----------------------------------------------------------------------------------------------------
    Case("weights_missing", "weights", lambda w: ["eval", "--weights", w.path("nope.pth")], 2,
         "nope.pth: no such checkpoint file"),
    Case("weights_text_file", "weights", lambda w: ["eval", "--config-file", w.config, "--weights", w.write_text(
        "w.pth", "hello, I am a text file\n")], 2, "w.pth: not a torch checkpoint (it starts with 'hello, I am a text"),
    Case("weights_empty_file", "weights", lambda w: ["eval", "--config-file", w.config, "--weights", w.write_text(
        "w.pth", b"")], 2, "w.pth: the file is empty"),
    Case("weights_truncated", "weights", lambda w: ["eval", "--config-file", w.config, "--weights", w.write_text(
        "w.pth", open(w.checkpoint, "rb").read()[:5000])], 2, "w.pth: not a readable torch checkpoint"),
    Case("weights_with_code", "weights", lambda w: ["eval", "--config-file", w.config, "--weights", w.write_text(
        "w.pth", _pickle_with_code())], 2, "refused: it contains Python objects"),
    Case("weights_other_architecture", "weights", lambda w: evaluate(w, "train.json", "MODEL.RESNETS.DEPTH", "50"), 2,
         "does not match the model"),
    Case("weights_folder", "weights", lambda w: ["eval", "--config-file", w.config, "--weights", w.images], 2,
         "is a folder, not a weight file"),
    Case("eval_without_weights", "weights", lambda w: ["eval", "--config-file", w.config, "--dataset",
                                                       f"toy={w.path('train.json')}:{w.images}", "DATASETS.TEST",
                                                       "('toy',)"], 2, "MODEL.WEIGHTS is empty"),
    Case("predict_without_weights", "weights", lambda w: ["predict", "--config-file", w.config, "--input", w.images],
         2, "MODEL.WEIGHTS is empty"),
    Case("weights_not_on_machine", "weights", lambda w: train(w, "train.json", "MODEL.WEIGHTS",
                                                              "detectron2://ImageNetPretrained/MSRA/R-18.pkl"), 2,
         "is not on this machine and downloads are off"),
    # -- command lines -----------------------------------------------------------------------------------------------
    Case("num_gpus_negative", "command line", lambda w: train(w, "train.json", "--num-gpus", "-1"), 2,
         "--num-gpus -1: needs at least 1"),
    Case("num_gpus_zero", "command line", lambda w: train(w, "train.json", "--num-gpus", "0"), 2,
         "--num-gpus 0: needs at least 1"),
    Case("machine_rank_too_high", "command line", lambda w: train(w, "train.json", "--num-machines", "2",
                                                                   "--machine-rank", "2"), 2,
         "--machine-rank 2: must be between 0 and --num-machines - 1"),
    Case("dist_url_garbage", "command line", lambda w: train(w, "train.json", "--dist-url", "localhost:80"), 2,
         "--dist-url localhost:80: expected"),
    Case("more_gpus_than_exist", "command line", lambda w: train(w, "train.json", "--num-gpus", "4", "MODEL.DEVICE",
                                                                  "cuda"), 2, "asks for 4 GPUs"),
    Case("dataset_option_malformed", "command line", lambda w: ["train", "--config-file", w.config, "--dataset",
                                                                "just_a_name"], 2, "expected NAME=ANNOTATIONS.json"),
    Case("unknown_command", "command line", lambda w: ["trian"], 2, "unknown command 'trian' (did you mean 'train'?)"),
    Case("confidence_above_one", "command line", lambda w: predict(w, "--confidence-threshold", "2"), 2,
         "--confidence-threshold 2.0: a score threshold is between 0 and 1"),
    Case("predict_input_matches_nothing", "command line", lambda w: predict(w, "--input", w.path("*.gif")), 2,
         "no such file, folder or matching images"),
    Case("predict_two_sources", "command line", lambda w: predict(w, "--webcam"), 2,
         "pass exactly one of --input"),
    Case("predict_bad_device", "command line", lambda w: predict(w, "--device", "gpu"), 2,
         "--device 'gpu' is not a device"),
    # -- output locations --------------------------------------------------------------------------------------------
    Case("output_dir_is_a_file", "output", lambda w: train(w, "train.json", "OUTPUT_DIR", w.write_text("f", "x")), 2,
         "OUTPUT_DIR " + "{root}/f: is a file, not a folder"),
    Case("output_dir_unwritable", "output", lambda w: train(w, "train.json", "OUTPUT_DIR", "/proc/embedmask_out"), 2,
         "OUTPUT_DIR /proc/embedmask_out: cannot create this folder"),
    Case("predict_output_is_a_file", "output", lambda w: predict(w, "--output", w.write_text("drawn", "x")), 2,
         "--output {root}/drawn: is a file, not a folder"),
    Case("predict_output_unwritable", "output", lambda w: predict(w, "--output", "/proc/embedmask_drawn"), 2,
         "--output /proc/embedmask_drawn: cannot create this folder"),
    Case("predict_json_is_a_folder", "output", lambda w: predict(w, "--json", w.images), 2,
         "--json {root}/images: is a folder, expected a file name"),
    Case("predict_json_unwritable", "output", lambda w: predict(w, "--json", "/proc/embedmask/results.json"), 2,
         "--json /proc/embedmask/results.json: cannot"),
    # -- resuming ----------------------------------------------------------------------------------------------------
    Case("resume_names_missing_file", "resume", lambda w: _earlier_run(w, "model_0000007.pth"), 2,
         "last_checkpoint names model_0000007.pth, which does not exist", _unchanged_run),
    Case("resume_garbage_marker", "resume", lambda w: _earlier_run(w, b"\x00\x01garbage\n\nmore"), 2,
         "should hold the file name of a checkpoint", _unchanged_run),
    Case("resume_marker_deleted", "resume", lambda w: _earlier_run(w, None), 2,
         "but no last_checkpoint naming the one to continue from", _unchanged_run),
    Case("resume_weights_only", "resume", lambda w: _earlier_run(w, "model_final.pth"), 2,
         "holds weights only (no optimizer, scheduler)", _unchanged_run),
    Case("resume_nothing_saved_yet", "resume", lambda w: train(w, "train.json", "--resume"), 0,
         "nothing was saved in"),
    # -- export ------------------------------------------------------------------------------------------------------
    Case("export_output_unwritable", "output", lambda w: ["export", "--weights", w.checkpoint, "--output",
                                                          "/proc/embedmask/model.onnx"], 2,
         "--output /proc/embedmask/model.onnx: cannot"),
    Case("export_weights_text_file", "weights", lambda w: ["export", "--config-file", w.config, "--weights",
                                                           w.write_text("w.pth", "not weights"), "--output",
                                                           w.path("m.onnx")], 2, "w.pth: not a torch checkpoint"),
    Case("predict_onnx_not_onnx", "weights", lambda w: ["predict", "--onnx", w.write_text("m.onnx", "text"),
                                                        "--input", w.images], 2, "m.onnx: not a loadable ONNX model"),
    Case("predict_onnx_with_weights", "command line", lambda w: ["predict", "--onnx", w.path("m.onnx"), "--weights",
                                                                 w.checkpoint, "--input", w.images], 2,
         "--onnx: the exported file holds the model and its config"),
    # -- videos ------------------------------------------------------------------------------------------------------
    Case("video_not_a_video", "video", lambda w: ["predict", "--weights", w.checkpoint, "--video-input",
                                                  w.write_text("clip.mp4", "not a video")], 2,
         "clip.mp4: not a readable video"),
    Case("video_missing", "video", lambda w: ["predict", "--weights", w.checkpoint, "--video-input",
                                              w.path("nope.mp4")], 2, "--video-input {root}/nope.mp4: no such file"),
    Case("video_output_unwritable", "video", lambda w: ["predict", "--weights", w.checkpoint, "--video-input",
                                                        _write_video(w), "--output", "/proc/embedmask/out.mp4"], 2,
         "--output /proc/embedmask/out.mp4: cannot"),
]


def _pickle_with_code() -> bytes:
    import io
    import pickle

    class Exploit:
        def __reduce__(self):
            return (print, ("this ran from a checkpoint",))

    buffer = io.BytesIO()
    torch.save({"model": Exploit()}, buffer, pickle_module=pickle)
    return buffer.getvalue()


def _write_video(world: World) -> str:
    path = world.path("clip.mp4")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 5, (WIDTH, HEIGHT))
    for i in range(2):
        writer.write(np.full((HEIGHT, WIDTH, 3), 60 * i, np.uint8))
    writer.release()
    return path


def main(out_dir: str) -> None:
    """Write every case's files and the manifest of commands and expected outcomes."""
    manifest = []
    for case in CASES:
        world = make_world(os.path.join(out_dir, case.name))
        argv = case.build(world)
        manifest.append({"name": case.name, "category": case.category, "command": ["embedmask", *argv],
                         "exit_code": case.code, "message": case.message.replace("{root}", world.root)})
    with open(os.path.join(out_dir, "cases.json"), "w") as f:
        json.dump(manifest, f, indent=1, ensure_ascii=False)
    print(f"{len(manifest)} cases written to {out_dir}")


if __name__ == "__main__":
    main(sys.argv[1])
