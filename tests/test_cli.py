"""The `embedmask` command: subcommands, options in any order, scorable JSON, the shown-score threshold, eval from a
checkpoint alone, and the visualize / analyze tools."""

import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from adet.cli import main as embedmask
from adet.cli.errors import run_cli
from adet.modeling import build_model

from .conftest import make_tiny_cfg, shapes_image

CLASSES, CATEGORY_IDS = ["cat", "dog", "bird"], [3, 7, 9]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny model saved as training saves it (config, class names, dataset ids), with weights that give boxes of a
    few strides and varied scores."""
    cfg = make_tiny_cfg()
    torch.manual_seed(0)
    state = build_model(cfg).state_dict()
    state["proposal_generator.fcos_head.bbox_pred.bias"] += 1.5
    state["proposal_generator.fcos_head.cls_logits.bias"].normal_(0, 2, generator=torch.Generator().manual_seed(0))
    path = tmp_path_factory.mktemp("weights") / "tiny.pth"
    torch.save({"model": state, "config": cfg.dump(), "class_names": CLASSES, "category_ids": CATEGORY_IDS}, path)
    return str(path)


@pytest.fixture(scope="module")
def coco_style_images(tmp_path_factory):
    """Images with COCO file names, one with a free-form name, and a ground-truth json listing them."""
    root = tmp_path_factory.mktemp("images")
    names = {139: "000000000139.jpg", 285: "000000000285.jpg", 17: "holiday.jpg"}
    images, annotations = [], []
    for image_id, name in names.items():
        image, polygons = shapes_image(96, 128, seed=image_id)
        cv2.imwrite(str(root / name), image)
        images.append({"id": image_id, "file_name": name, "height": 96, "width": 128})
        for k, polygon in enumerate(polygons):
            xy = polygon.reshape(-1, 2)
            x0, y0 = xy.min(0)
            x1, y1 = xy.max(0)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": CATEGORY_IDS[k],
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": float((x1 - x0) * (y1 - y0)),
                                "iscrowd": 0, "segmentation": [polygon.tolist()]})
    gt = root / "gt.json"
    gt.write_text(json.dumps({"images": images, "annotations": annotations,
                              "categories": [{"id": i, "name": n} for i, n in zip(CATEGORY_IDS, CLASSES)]}))
    return root, str(gt)


def test_help_unknown_command_and_configs(capsys):
    assert embedmask(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("train", "eval", "predict", "benchmark", "visualize", "analyze"))
    assert embedmask(["trian"]) == 2 and "did you mean 'train'" in capsys.readouterr().err
    assert embedmask(["configs"]) == 0 and "EmbedMask/MS_R_50_1x.yaml" in capsys.readouterr().out


@pytest.mark.slow
def test_console_script_is_installed():
    exe = shutil.which("embedmask")
    assert exe is not None
    done = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("embedmask ")
    done = subprocess.run([sys.executable, "-m", "adet", "configs"], capture_output=True, text=True, timeout=120)
    assert "EmbedMask/Synthetic.yaml" in done.stdout


def test_options_and_overrides_in_any_order():
    from adet.cli.predict import build_parser as predict_parser
    from adet.cli.predict import split_overrides
    from adet.cli.train import build_parser

    args = build_parser().parse_args(["OUTPUT_DIR", "out", "--resume", "SOLVER.MAX_ITER", "5", "--num-gpus", "2",
                                      "SEED", "-1", "--config-file", "EmbedMask/MS_R_50_1x.yaml"])
    assert args.resume and args.num_gpus == 2 and args.config_file == "EmbedMask/MS_R_50_1x.yaml"
    assert args.opts == ["OUTPUT_DIR", "out", "SOLVER.MAX_ITER", "5", "SEED", "-1"]
    args = predict_parser().parse_args(["--input", "a.jpg", "b.jpg", "MODEL.WEIGHTS", "w.pth", "--output", "o",
                                        "--opts", "MODEL.DEVICE", "cpu"])
    assert split_overrides(args) == ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "w.pth"]
    assert args.input == ["a.jpg", "b.jpg"] and args.output == "o"


def _predict(checkpoint, images, tmp_path, *extra):
    out = tmp_path / f"results{len(extra)}.json"
    code = embedmask(["predict", "--weights", checkpoint, "--input", str(images), "--json", str(out), *extra])
    assert code == 0
    return json.loads(out.read_text())


def test_json_results_are_scorable_against_the_ground_truth(checkpoint, coco_style_images, tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, gt = coco_style_images
    results = _predict(checkpoint, images, tmp_path, "--confidence-threshold", "0.3")
    assert {r["image_id"] for r in results} == {139, 285, "holiday.jpg"}  # numeric stem, else the file name
    assert {r["category_id"] for r in results} <= set(CATEGORY_IDS) and all(r["score"] >= 0.3 for r in results)
    assert all(CLASSES[CATEGORY_IDS.index(r["category_id"])] == r["category_name"] for r in results)
    # With the ground truth: its ids for every file, and pycocotools scores the file as it is.
    scored = _predict(checkpoint, images, tmp_path, "--confidence-threshold", "0.3", "--ground-truth", gt)
    assert {r["image_id"] for r in scored} == {139, 285, 17}
    coco = COCO(gt)
    evaluation = COCOeval(coco, coco.loadRes(str(tmp_path / "results4.json")), "segm")
    evaluation.evaluate()
    evaluation.accumulate()
    assert evaluation.eval["precision"].shape[2] == 3


def test_confidence_threshold_applies_to_the_shown_score(checkpoint, coco_style_images, tmp_path):
    images, _ = coco_style_images
    everything = _predict(checkpoint, images, tmp_path, "--confidence-threshold", "0.0")
    scores = np.array([r["score"] for r in everything])
    threshold = float(np.median(scores))
    kept = _predict(checkpoint, images, tmp_path, "--confidence-threshold", str(threshold), "--device", "cpu")
    assert 0 < len(kept) == (scores > threshold).sum() and min(r["score"] for r in kept) > threshold


def test_eval_from_a_checkpoint_alone(checkpoint, coco_style_images, tmp_path):
    images, gt = coco_style_images
    code = embedmask(["eval", "--weights", checkpoint, "--dataset", f"toys={gt}:{images}", "DATASETS.TEST",
                      "('toys',)", "OUTPUT_DIR", str(tmp_path / "eval"), "MODEL.DEVICE", "cpu"])
    assert code == 0
    results = json.loads((tmp_path / "eval" / "inference" / "coco_instances_results.json").read_text())
    assert results and {r["image_id"] for r in results} <= {139, 285, 17}
    assert {"confusion_matrix.png", "confusion_matrix.csv", "pr_curves.png"} <= set(
        os.listdir(tmp_path / "eval" / "plots"))
    matrix = np.loadtxt(tmp_path / "eval" / "plots" / "confusion_matrix.csv", delimiter=",", skiprows=1,
                        usecols=range(1, 5), dtype=int)
    assert matrix[:, :3].sum() == 6  # every ground-truth instance is counted once, matched or missed


def test_visualize_ground_truth_and_predictions(coco_style_images, tmp_path):
    images, gt = coco_style_images
    config = tmp_path / "tiny.yaml"
    config.write_text(make_tiny_cfg().dump())
    common = ["--config-file", str(config), "--dataset", f"toys={gt}:{images}", "DATASETS.TRAIN", "('toys',)",
              "DATASETS.TEST", "('toys',)"]
    assert embedmask(["visualize", *common, "--source", "dataloader", "--output-dir", str(tmp_path / "a")]) == 0
    augmented = cv2.imread(str(tmp_path / "a" / "000000000139.png"))
    assert augmented.shape[0] == 96  # MIN_SIZE_TRAIN 96 of a 96 x 128 image
    assert embedmask(["visualize", *common, "--source", "annotation", "--output-dir", str(tmp_path / "b")]) == 0
    drawn, original = cv2.imread(str(tmp_path / "b" / "holiday.png")), cv2.imread(str(images / "holiday.jpg"))
    assert drawn.shape == original.shape and np.abs(drawn.astype(int) - original).mean() > 1
    predictions = [{"image_id": 17, "category_id": 7, "bbox": [10, 10, 40, 50], "score": 0.9}]
    (tmp_path / "p.json").write_text(json.dumps(predictions))
    assert embedmask(["visualize", *common, "--predictions", str(tmp_path / "p.json"), "--output-dir",
                      str(tmp_path / "c")]) == 0
    assert os.listdir(tmp_path / "c") == ["holiday.png"]
    assert cv2.imread(str(tmp_path / "c" / "holiday.png")).shape == (96, 256, 3)  # predictions | ground truth


def test_analyze_counts_parameters_and_flops(tmp_path, capsys):
    from adet.cli.analyze import flop_counts

    config = tmp_path / "tiny.yaml"
    config.write_text(make_tiny_cfg().dump())
    assert run_cli(lambda a: embedmask(a), ["analyze", "--config-file", str(config), "--input-size", "96x128"]) == 0
    table = capsys.readouterr().out
    assert "model (total)" in table and "pixel_head" in table
    cfg = make_tiny_cfg()
    model = build_model(cfg)
    flops = flop_counts(model, 96, 128)
    # The pixel head by hand: its convolutions run on the stride-8 map (12 x 16).
    expected = sum(2 * m.weight.numel() * 12 * 16 for m in model.pixel_head.modules() if isinstance(
        m, torch.nn.Conv2d))
    assert flops["pixel_head"] == expected
    assert sum(p.numel() for p in model.parameters()) == sum(sum(p.numel() for p in m.parameters())
                                                             for m in model.children())


@pytest.mark.slow
def test_benchmark_times_both_models(coco_style_images, tmp_path, capsys):
    from adet.cli.benchmark import main as benchmark

    images, _ = coco_style_images
    config = tmp_path / "tiny.yaml"
    config.write_text(make_tiny_cfg().dump())
    rows = benchmark(["--images", str(images), "--config-file", str(config), "--runs", "1", "--threads", "2"])
    assert [r["model"] for r in rows] == ["embedmask", "maskrcnn"]
    assert all(r["total"] > 0 and r["peak_rss_mb"] > 100 for r in rows) and rows[1]["detections"] == 100
    assert "ratio (ours / Mask R-CNN): time" in capsys.readouterr().out


def test_the_quickstart_reuses_its_cached_model_only_for_the_same_settings_and_seed(tmp_path):
    from adet.cli.quickstart import CONFIG, cached_model_matches
    from adet.model_zoo import get_config

    cfg = get_config(CONFIG)
    path = str(tmp_path / "cached.pth")
    torch.save({"model": {"w": torch.zeros(1)}, "config": cfg.dump()}, path)
    assert cached_model_matches(cfg, path)
    for key, value in (("SEED", 1), ("SOLVER.MAX_ITER", 300), ("MODEL.RESNETS.DEPTH", 50)):
        other = cfg.clone()
        other.merge_from_list([key, value])
        assert not cached_model_matches(other, path), key
