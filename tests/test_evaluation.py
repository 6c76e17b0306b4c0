"""COCO evaluation: the project's statistics equal pycocotools' called as detectron2 calls it (the official
protocol) on the written results; eval-only CLI, 1 and 2 processes."""

import contextlib
import io
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from adet.cli.errors import run_cli
from adet.engine import DefaultPredictor
from adet.modeling import build_model

from .conftest import ROOT, load_tool, make_tiny_cfg, shapes_image

CATEGORY_IDS = [3, 7, 11]  # non-contiguous dataset ids exercise the id mapping


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    """A tiny model, its checkpoint and config file, and a COCO dataset whose ground truth is partly the model's own
    top predictions (so AP is high and meaningful)."""
    root = tmp_path_factory.mktemp("tiny_coco")
    cfg = make_tiny_cfg("MODEL.FCOS.INFERENCE_TH_TEST", 0.0, "OUTPUT_DIR", str(root / "out"))
    torch.manual_seed(0)
    checkpoint = str(root / "tiny.pth")
    torch.save({"model": build_model(cfg).state_dict()}, checkpoint)
    cfg.MODEL.WEIGHTS = checkpoint
    config_file = root / "tiny.yaml"
    config_file.write_text(cfg.dump())
    predictor = DefaultPredictor(cfg)

    (root / "images").mkdir()
    images, annotations = [], []
    for image_id in range(1, 4):
        image, _ = shapes_image(80 + 8 * image_id, 120, seed=image_id)
        name = f"{image_id:03d}.png"
        cv2.imwrite(str(root / "images" / name), image)
        images.append({"id": image_id, "file_name": name, "height": image.shape[0], "width": image.shape[1]})
        instances = predictor(image)["instances"]
        instances = instances[instances.pred_masks.flatten(1).sum(1) >= 20]  # COCO cannot match empty masks
        for k in range(3):  # the 3 best detections become ground truth
            x1, y1, x2, y2 = instances.pred_boxes.tensor[k].tolist()
            rle = mask_util.encode(np.asfortranarray(instances.pred_masks[k].numpy().astype(np.uint8)))
            rle["counts"] = rle["counts"].decode()
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "iscrowd": 0,
                                "category_id": CATEGORY_IDS[int(instances.pred_classes[k])],
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "segmentation": rle,
                                "area": float(mask_util.area(rle))})
    categories = [{"id": i, "name": f"class{i}"} for i in CATEGORY_IDS]
    json_file = root / "annotations.json"
    json_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return {"root": root, "config": str(config_file), "json": str(json_file), "images": str(root / "images")}


def pycocotools_ap(json_file: str, results_file: str, task: str) -> float:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(json_file)
        dropped = "segmentation" if task == "bbox" else "bbox"  # as detectron2's COCOEvaluator
        predictions = [{k: v for k, v in p.items() if k != dropped} for p in json.load(open(results_file))]
        evaluator = COCOeval(gt, gt.loadRes(predictions), task)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats[0] * 100


def eval_args(dataset, output_dir, *extra):
    return ["--config-file", dataset["config"], "--eval-only", "--dataset",
            f"tiny_val={dataset['json']}:{dataset['images']}", *extra,
            "DATASETS.TEST", "('tiny_val',)", "OUTPUT_DIR", str(output_dir)]


def test_eval_only_ap_equals_pycocotools(tiny_dataset):
    train_net = load_tool("tools/train_net.py")
    output_dir = tiny_dataset["root"] / "eval1"
    results = train_net.cli(eval_args(tiny_dataset, output_dir))["tiny_val"]
    results_file = output_dir / "inference" / "coco_instances_results.json"
    predictions = json.load(open(results_file))
    assert len(predictions) > 9 and {p["category_id"] for p in predictions} <= set(CATEGORY_IDS)
    for task in ("bbox", "segm"):
        assert results[task]["AP"] == pytest.approx(pycocotools_ap(tiny_dataset["json"], results_file, task), abs=1e-9)
        assert results[task]["AP"] > 50  # the model's own top detections are the ground truth
        assert {f"AP-class{i}" for i in CATEGORY_IDS} <= set(results[task])


@pytest.mark.nccl_emulated
@pytest.mark.slow
def test_eval_only_two_cpu_processes_give_the_same_results(tiny_dataset):
    output_dir = tiny_dataset["root"] / "eval2"
    command = [sys.executable, os.path.join(ROOT, "tools", "train_net.py"),
               *eval_args(tiny_dataset, output_dir, "--num-gpus", "2"), "MODEL.DEVICE", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    results_file = output_dir / "inference" / "coco_instances_results.json"
    two = sorted(json.load(open(results_file)), key=lambda p: (p["image_id"], -p["score"]))
    single = tiny_dataset["root"] / "eval1" / "inference" / "coco_instances_results.json"
    if not single.exists():
        load_tool("tools/train_net.py").cli(eval_args(tiny_dataset, tiny_dataset["root"] / "eval1"))
    one = sorted(json.load(open(single)), key=lambda p: (p["image_id"], -p["score"]))
    assert [(p["image_id"], p["category_id"]) for p in two] == [(p["image_id"], p["category_id"]) for p in one]
    np.testing.assert_allclose([p["bbox"] for p in two], [p["bbox"] for p in one], atol=1e-4)
    assert "segm AP" in done.stdout or "segm:" in done.stdout


def test_missing_dataset_is_a_one_line_error(tiny_dataset, tmp_path, capsys):
    train_net = load_tool("tools/train_net.py")
    args = ["--config-file", tiny_dataset["config"], "--eval-only", "--dataset",
            f"x={tmp_path / 'missing.json'}:{tiny_dataset['images']}", "DATASETS.TEST", "('x',)"]
    assert run_cli(train_net.cli, args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "missing.json does not exist" in err
    if torch.cuda.device_count() < 4:
        args = ["--config-file", tiny_dataset["config"], "--eval-only", "--num-gpus", "4", "MODEL.DEVICE", "cuda"]
        assert run_cli(train_net.cli, args) == 2
        err = capsys.readouterr().err
        assert "asks for 4 GPUs but this machine has" in err and "MODEL.DEVICE cpu" in err and err.count("\n") == 1


def test_faster_coco_eval_gives_pycocotools_statistics(tiny_dataset):
    """The evaluator's default library (faster-coco-eval) and the fallback agree on all 12 statistics and on the
    precision table the plots are drawn from."""
    from adet.evaluation.coco_evaluation import coco_api

    pytest.importorskip("faster_coco_eval")
    results_file = tiny_dataset["root"] / "eval1" / "inference" / "coco_instances_results.json"
    if not results_file.exists():
        load_tool("tools/train_net.py").cli(eval_args(tiny_dataset, tiny_dataset["root"] / "eval1"))
    predictions = json.load(open(results_file))
    assert coco_api()[2] == "faster-coco-eval"
    for task in ("bbox", "segm"):
        outputs = []
        for library in ("faster-coco-eval", "pycocotools"):
            coco_class, eval_class, _ = coco_api(library)
            with contextlib.redirect_stdout(io.StringIO()):
                gt = coco_class(tiny_dataset["json"])
                evaluation = eval_class(gt, gt.loadRes([dict(p) for p in predictions]), task)
                evaluation.evaluate()
                evaluation.accumulate()
                evaluation.summarize()
            outputs.append((np.asarray(evaluation.stats[:12]), evaluation.eval["precision"]))
        np.testing.assert_allclose(outputs[0][0], outputs[1][0], atol=1e-12)
        np.testing.assert_allclose(outputs[0][1], outputs[1][1], atol=1e-12)


# ---- the official protocol: which area decides small / medium / large -------------------------------------------
def _l_shape(size: int, top: int, left: int, arm: int = 200, width: int = 10) -> np.ndarray:
    """An L of two ``width``-px arms: its box is large (arm x arm), its mask area medium (COCO's buckets)."""
    mask = np.zeros((size, size), dtype=bool)
    mask[top:top + arm, left:left + width] = True
    mask[top + arm - width:top + arm, left:left + arm] = True
    return mask


def _official_statistics(json_file: str, predictions: list[dict], task: str) -> list[float]:
    """pycocotools as detectron2's COCOEvaluator calls it: segm results without their boxes (the mask's area puts
    each detection in a size bucket), bbox results as they are."""
    dropped = "bbox" if task == "segm" else "segmentation"
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(json_file)
        evaluator = COCOeval(gt, gt.loadRes([{k: v for k, v in p.items() if k != dropped} for p in predictions]),
                             task)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return [float(s * 100 if s >= 0 else "nan") for s in evaluator.stats]


@pytest.mark.parametrize("library", ["pycocotools", "faster-coco-eval"])
def test_mask_area_decides_the_size_bucket_of_segm_results_as_in_the_official_protocol(tmp_path, library):
    """One medium-sized L-shaped object (its box is large) found, and a higher-scoring false positive of the same
    shape elsewhere: by mask area the false positive counts against medium objects (segm APm about 50); by box area
    it would be ignored there (APm 100). All 12 statistics of both tasks equal the official protocol's."""
    from adet.data import DatasetCatalog, register_coco_instances
    from adet.evaluation import COCOEvaluator
    from adet.evaluation.coco_evaluation import METRICS
    from adet.structures import Boxes, Instances

    if library == "faster-coco-eval":
        pytest.importorskip("faster_coco_eval")
    size = 300
    truth, false_positive = _l_shape(size, 10, 10), _l_shape(size, 60, 90)
    rle = mask_util.encode(np.asfortranarray(truth.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode()
    annotation = {"id": 1, "image_id": 1, "category_id": 5, "iscrowd": 0, "bbox": [10.0, 10.0, 200.0, 200.0],
                  "segmentation": rle, "area": float(truth.sum())}
    json_file = tmp_path / "l_shapes.json"
    json_file.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png", "height": size, "width": size}],
                                     "annotations": [annotation], "categories": [{"id": 5, "name": "ell"}]}))
    name = f"l_shapes_{library}"
    register_coco_instances(name, {}, str(json_file), str(tmp_path))
    DatasetCatalog.get(name)
    instances = Instances((size, size), pred_boxes=Boxes(torch.tensor([[60.0, 90.0, 290.0, 260.0],
                                                                        [10.0, 10.0, 210.0, 210.0]])),
                          scores=torch.tensor([0.95, 0.9]), pred_classes=torch.tensor([0, 0]),
                          pred_masks=torch.from_numpy(np.stack([false_positive, truth])))
    evaluator = COCOEvaluator(name, distributed=False, library=library)
    evaluator.process([{"image_id": 1}], [{"instances": instances}])
    results = evaluator.evaluate()
    assert 1024 < truth.sum() < 96 ** 2 < 200 * 200  # medium by mask, large by box
    for task in ("bbox", "segm"):
        official = _official_statistics(str(json_file), evaluator.predictions, task)
        stats = [float(v * 100 if v >= 0 else "nan") for v in evaluator.coco_evals[task].stats]
        np.testing.assert_allclose(stats, official, atol=1e-9, err_msg=task)  # all 12, AR too
        np.testing.assert_allclose([results[task][key] for key in METRICS], official[:6], atol=1e-9, err_msg=task)
    assert results["segm"]["APm"] == pytest.approx(50.0)  # precision 1/2 at every recall
    assert results["segm"]["AP"] == pytest.approx(50.0)
    assert results["bbox"]["APm"] == pytest.approx(100.0)  # the false positive's box is large: not a medium detection


def test_results_hold_each_detections_own_mask_and_xywh_box():
    """One call encodes every mask of an image: each RLE decodes back to its own detection's mask."""
    from adet.evaluation.coco_evaluation import instances_to_coco_json
    from adet.structures import Boxes, Instances

    rng = np.random.default_rng(0)
    masks = rng.random((5, 37, 53)) < 0.3
    instances = Instances((37, 53), pred_boxes=Boxes(torch.tensor([[1.0, 2.0, 11.0, 22.0]] * 5)),
                          scores=torch.linspace(0.9, 0.5, 5), pred_classes=torch.tensor([0, 1, 2, 1, 0]),
                          pred_masks=torch.from_numpy(masks))
    results = instances_to_coco_json(instances, image_id=7)
    assert [r["category_id"] for r in results] == [0, 1, 2, 1, 0] and {r["image_id"] for r in results} == {7}
    assert results[0]["bbox"] == [1.0, 2.0, 10.0, 20.0]
    for result, mask in zip(results, masks):
        assert result["segmentation"]["size"] == [37, 53]
        np.testing.assert_array_equal(mask_util.decode(result["segmentation"]).astype(bool), mask)


def test_results_of_many_detections_get_loadres_areas_and_boxes(tmp_path):
    """The evaluator's own loadRes (one area/box call for all results) on more results than pycocotools' area()
    takes at once: the same areas, boxes and ids as pycocotools' loadRes."""
    from adet.data import DatasetCatalog, register_coco_instances
    from adet.evaluation import COCOEvaluator

    rng = np.random.default_rng(0)
    masks = rng.random((600, 20, 30)) < 0.2
    rles = [mask_util.encode(np.asfortranarray(m.astype(np.uint8)[:, :, None]))[0] for m in masks]
    predictions = [{"image_id": 1, "category_id": 5, "score": 0.5, "bbox": [1.0, 2.0, 3.0, 4.0],
                    "segmentation": {"size": r["size"], "counts": r["counts"].decode()}} for r in rles]
    json_file = tmp_path / "one.json"
    json_file.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png", "height": 20, "width": 30}],
                                     "annotations": [], "categories": [{"id": 5, "name": "x"}]}))
    register_coco_instances("one_image", {}, str(json_file), str(tmp_path))
    DatasetCatalog.get("one_image")
    evaluator = COCOEvaluator("one_image", distributed=False, library="pycocotools")
    ours = evaluator.results_coco(predictions, "segm").dataset["annotations"]
    with contextlib.redirect_stdout(io.StringIO()):
        theirs = evaluator.coco_gt.loadRes([{k: v for k, v in p.items() if k != "bbox"} for p in predictions])
    theirs = theirs.dataset["annotations"]
    assert [a["id"] for a in ours] == [a["id"] for a in theirs] == list(range(1, 601))
    assert [a["area"] for a in ours] == [float(a["area"]) for a in theirs] == [float(m.sum()) for m in masks]
    np.testing.assert_allclose([a["bbox"] for a in ours], [a["bbox"] for a in theirs])
