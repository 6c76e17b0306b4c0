"""Training on a user's own COCO json from the command line, and the demo labelling with its class names."""

import json
import os

import cv2
import numpy as np
import pytest
import torch

from adet.cli.errors import run_cli
from adet.modeling import build_model

from .conftest import load_tool, make_tiny_cfg

CLASSES = {5: "pear", 2: "apple"}  # dataset ids out of order: contiguous ids follow the sorted ids


@pytest.fixture(scope="module")
def fruit_dataset(tmp_path_factory):
    """Hand-drawn images: red discs ("apple") and green rectangles ("pear"), with exact polygons."""
    root = tmp_path_factory.mktemp("fruit")
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for image_id in range(1, 7):
        image = np.full((96, 128, 3), 90, np.uint8) + rng.integers(0, 20, (96, 128, 3), dtype=np.uint8)
        cx, cy, r = 30 + 5 * image_id, 40, 14
        angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        disc = np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], 1)
        rect = np.array([[70, 20 + image_id], [110, 20 + image_id], [110, 70], [70, 70]], np.float64)
        cv2.fillPoly(image, [disc.round().astype(np.int32)], (0, 0, 200))
        cv2.fillPoly(image, [rect.astype(np.int32)], (0, 180, 0))
        cv2.imwrite(str(root / "images" / f"{image_id}.jpg"), image)
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "height": 96, "width": 128})
        for category, polygon in ((2, disc), (5, rect)):
            x0, y0 = polygon.min(0)
            x1, y1 = polygon.max(0)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                                "iscrowd": 0, "bbox": [x0, y0, x1 - x0, y1 - y0], "area": float((x1 - x0) * (y1 - y0)),
                                "segmentation": [polygon.ravel().tolist()]})
    (root / "fruit.json").write_text(json.dumps({
        "images": images, "annotations": annotations,
        "categories": [{"id": i, "name": n} for i, n in CLASSES.items()]}))
    return root


def test_train_on_own_json_then_demo_uses_its_class_names(fruit_dataset, tmp_path):
    cfg = make_tiny_cfg("MODEL.BACKBONE.FREEZE_AT", 0, "MODEL.RESNETS.NORM", "BN", "SOLVER.IMS_PER_BATCH", 2,
                        "SOLVER.BASE_LR", 0.01, "SOLVER.MAX_ITER", 4, "SOLVER.WARMUP_ITERS", 1,
                        "SOLVER.CHECKPOINT_PERIOD", 0, "SEED", 0)
    config = tmp_path / "base.yaml"
    config.write_text(cfg.dump())  # NUM_CLASSES is 3 here: the --dataset option must set it to the json's 2
    train_net = load_tool("tools/train_net.py")
    output_dir = tmp_path / "run"
    results = train_net.cli(["--config-file", str(config), "--dataset",
                             f"fruit={fruit_dataset / 'fruit.json'}:{fruit_dataset / 'images'}",
                             "DATASETS.TRAIN", "('fruit',)", "DATASETS.TEST", "('fruit',)",
                             "OUTPUT_DIR", str(output_dir)])
    assert set(results["fruit"]) == {"bbox", "segm", "ground_truth"} and "AP-apple" in results["fruit"]["segm"]
    assert results["fruit"]["ground_truth"] == {"images": 6.0, "annotations": 12.0, "annotations_excluded": 0.0,
                                                "images_excluded": 0.0}
    checkpoint = torch.load(output_dir / "model_final.pth", weights_only=True)
    assert checkpoint["class_names"] == ["apple", "pear"] and checkpoint["category_ids"] == [2, 5]
    # Said before logging to OUTPUT_DIR started, and still in its log.
    assert "MODEL.FCOS.NUM_CLASSES set to 2, the classes of fruit" in (output_dir / "log.txt").read_text()
    assert checkpoint["model"]["proposal_generator.fcos_head.cls_logits.weight"].shape[0] == 2
    for name in ("loss.png", "lr.png", "per_category_ap.png", "pr_curves.png", "ap.png"):
        image = cv2.imread(str(output_dir / "plots" / name))
        assert image is not None and image.shape[0] > 100, name

    demo = load_tool("demo/demo.py")
    args = ["--config-file", str(output_dir / "config.yaml"), "--input", str(fruit_dataset / "images" / "1.jpg"),
            "--output", str(tmp_path / "drawn"), "--json", str(tmp_path / "predictions.json"),
            "--confidence-threshold", "0.0", "--opts", "MODEL.WEIGHTS", str(output_dir / "model_final.pth"),
            "DATASETS.TEST", "()"]
    assert run_cli(demo.main, args) == 0
    predictions = json.load(open(tmp_path / "predictions.json"))
    assert predictions and {p["category_name"] for p in predictions} <= {"apple", "pear"}
    assert all(p["category_id"] == {"apple": 2, "pear": 5}[p["category_name"]] for p in predictions)
    assert all(set(p["segmentation"]) == {"size", "counts"} and len(p["bbox"]) == 4 for p in predictions)
    assert os.path.isfile(tmp_path / "drawn" / "1.jpg")


def test_demo_video_and_webcam(tmp_path, capsys):
    cfg = make_tiny_cfg()
    torch.save({"model": build_model(cfg).state_dict()}, tmp_path / "w.pth")
    cfg.MODEL.WEIGHTS = str(tmp_path / "w.pth")
    (tmp_path / "tiny.yaml").write_text(cfg.dump())
    video = str(tmp_path / "clip.mp4")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"mp4v"), 5, (128, 96))
    for i in range(3):
        frame = np.full((96, 128, 3), 40 * i, np.uint8)
        cv2.circle(frame, (30 + 20 * i, 48), 15, (0, 0, 255), -1)
        writer.write(frame)
    writer.release()
    demo = load_tool("demo/demo.py")
    assert run_cli(demo.main, ["--config-file", str(tmp_path / "tiny.yaml"), "--video-input", video,
                               "--output", str(tmp_path / "out")]) == 0
    annotated = cv2.VideoCapture(str(tmp_path / "out" / "clip.mp4"))
    assert int(annotated.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    assert "3 frame(s) processed" in capsys.readouterr().out
    code = run_cli(demo.main, ["--config-file", str(tmp_path / "tiny.yaml"), "--webcam"])
    if code == 2:  # no camera or no GUI on this machine: a one-line explanation, not a traceback
        err = capsys.readouterr().err
        assert err.startswith("error: --webcam:") and err.count("\n") == 1
