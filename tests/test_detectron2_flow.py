"""detectron2's official Colab tutorial (custom dataset, train, predict, draw, evaluate), with its imports pointed at
this package and a tiny model; and the Ultralytics-style Python API (load, callbacks, train, val, export)."""

import json
import os

import cv2
import numpy as np
import pytest

from adet.data.synthetic import write_split

from .conftest import TINY_OVERRIDES


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("flow_data")
    return {"json": write_split(str(root), "shapes", 6, seed=5), "images": str(root / "shapes")}


def test_detectron2_tutorial_flow(shapes, tmp_path):
    from adet import model_zoo
    from adet.config import get_cfg
    from adet.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader
    from adet.data.datasets import register_coco_instances
    from adet.engine import DefaultPredictor, DefaultTrainer
    from adet.evaluation import COCOEvaluator, inference_on_dataset
    from adet.utils.visualizer import ColorMode, Visualizer

    for name in ("tut_train", "tut_val"):
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_coco_instances(name, {}, shapes["json"], shapes["images"])
    dataset_dicts = DatasetCatalog.get("tut_train")
    metadata = MetadataCatalog.get("tut_train")
    assert metadata.thing_classes == ["circle", "square", "triangle", "star"]
    d = dataset_dicts[0]
    img = cv2.imread(d["file_name"])
    drawn = Visualizer(img[:, :, ::-1], metadata=metadata, scale=0.5).draw_dataset_dict(d).get_image()
    assert drawn.shape == (img.shape[0] // 2, img.shape[1] // 2, 3) and not np.array_equal(
        drawn, cv2.resize(img, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)[:, :, ::-1])

    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file("EmbedMask/MS_R_50_1x.yaml"))
    cfg.merge_from_list(TINY_OVERRIDES)  # test-only: a model that trains in seconds on a CPU
    cfg.DATASETS.TRAIN = ("tut_train",)
    cfg.DATASETS.TEST = ()
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.MODEL.WEIGHTS = ""  # the tutorial's model_zoo.get_checkpoint_url(...) needs the official file in models/
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.SOLVER.BASE_LR = 0.00025
    cfg.SOLVER.MAX_ITER = 3
    cfg.SOLVER.STEPS = []
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 128  # no ROI heads here: ignored with a warning
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 4
    cfg.OUTPUT_DIR = str(tmp_path / "output")
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    trainer = DefaultTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert cfg.MODEL.FCOS.NUM_CLASSES == 4 and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"))

    cfg.MODEL.WEIGHTS = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0  # keep every detection of this barely trained model
    predictor = DefaultPredictor(cfg)
    counts = {}
    for record in DatasetCatalog.get("tut_val"):
        im = cv2.imread(record["file_name"])
        outputs = predictor(im)
        counts[record["image_id"]] = len(outputs["instances"])
        v = Visualizer(im[:, :, ::-1], metadata=metadata, scale=1.0, instance_mode=ColorMode.IMAGE_BW)
        out = v.draw_instance_predictions(outputs["instances"].to("cpu"))
        assert out.get_image()[:, :, ::-1].shape == im.shape

    evaluator = COCOEvaluator("tut_val", output_dir=str(tmp_path / "eval"))
    val_loader = build_detection_test_loader(cfg, "tut_val")
    results = inference_on_dataset(predictor.model, val_loader, evaluator)
    written = json.load(open(tmp_path / "eval" / "coco_instances_results.json"))
    assert sum(counts.values()) > 0 and {"bbox", "segm"} <= set(results)
    assert {i: sum(r["image_id"] == i for r in written) for i in counts} == counts  # the loader sees what we see

    # A 3-iteration model finds none of the shapes (AP 0, whatever the evaluator does). Against a ground truth made
    # of its own 3 best detections per image, AP is high and any difference from pycocotools shows.
    import pycocotools.mask as mask_util
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    truth = json.load(open(shapes["json"]))
    best = [r for i in counts
            for r in sorted((r for r in written if r["image_id"] == i), key=lambda r: -r["score"])[:3]]
    truth["annotations"] = [{"id": k + 1, "image_id": r["image_id"], "category_id": r["category_id"], "iscrowd": 0,
                             "bbox": r["bbox"], "segmentation": r["segmentation"],
                             "area": float(mask_util.area(r["segmentation"]))} for k, r in enumerate(best)]
    (tmp_path / "own.json").write_text(json.dumps(truth))
    if "tut_own" in DatasetCatalog.list():
        DatasetCatalog.remove("tut_own")
        MetadataCatalog.remove("tut_own")
    register_coco_instances("tut_own", {}, str(tmp_path / "own.json"), shapes["images"])
    cfg.DATASETS.TEST = ("tut_own",)
    results = DefaultTrainer.test(cfg, predictor.model, COCOEvaluator("tut_own", output_dir=str(tmp_path / "own")))
    written = json.load(open(tmp_path / "own" / "coco_instances_results.json"))
    reference = COCO(str(tmp_path / "own.json"))
    for task in ("bbox", "segm"):  # masks alone for segm, as detectron2 scores them
        records = [{k: v for k, v in r.items() if task == "bbox" or k != "bbox"} for r in written]
        check = COCOeval(reference, reference.loadRes(records), task)
        check.evaluate()
        check.accumulate()
        check.summarize()
        expected = [100 * s if s >= 0 else float("nan") for s in check.stats[:6]]
        got = [results[task][k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")]
        assert got == pytest.approx(expected, abs=1e-9, nan_ok=True) and got[0] > 20
    again = inference_on_dataset(predictor.model, build_detection_test_loader(cfg, "tut_own"),
                                 COCOEvaluator("tut_own", output_dir=str(tmp_path / "again")))
    assert again["segm"] == pytest.approx(results["segm"], nan_ok=True)


def test_ultralytics_style_train_val_export_with_callbacks(tmp_path, monkeypatch):
    """The five lines of docs/train.md (a few iterations, in a temporary folder)."""
    import adet
    import adet.model_zoo
    from adet.export.checked import compare

    monkeypatch.chdir(tmp_path)
    events = []
    model = adet.load("EmbedMask/Synthetic.yaml")
    model.add_callback("on_train_batch_end", lambda trainer: events.append(("batch", trainer.iter)))
    model.add_callback("on_fit_epoch_end", lambda trainer: events.append(("eval", trainer.iter)))
    with pytest.raises(ValueError, match="unknown callback event 'on_epoch_end'"):
        model.add_callback("on_epoch_end", print)
    # Threshold 0: a 3-iteration model scores below the default, and comparisons need detections.
    trained = model.train(data={"train": "synthetic_train", "val": "synthetic_val"}, iterations=3, batch=2,
                          workers=0, output_dir="run", **{"MODEL.FCOS.INFERENCE_TH_TEST": 0.0})
    assert events == [("batch", 0), ("batch", 1), ("batch", 2), ("eval", 2)]
    assert model.cfg.MODEL.WEIGHTS == os.path.join("run", "model_final.pth")
    final = __import__("torch").load("run/model_final.pth", weights_only=True)
    assert final["iteration"] == 2 and final["class_names"] == ["circle", "square", "triangle", "star"]
    # The schedule scaled with the iterations (Ultralytics' epochs): warm-up and steps at the same fractions.
    base = adet.model_zoo.get_config("EmbedMask/Synthetic.yaml").SOLVER
    scale = 3 / base.MAX_ITER
    assert model.cfg.SOLVER.STEPS == tuple(int(s * scale) for s in base.STEPS)
    assert model.cfg.SOLVER.WARMUP_ITERS == int(base.WARMUP_ITERS * scale)

    again = model.val(data="synthetic_val")
    for task in ("bbox", "segm"):
        assert again[task] == pytest.approx(trained[task], nan_ok=True)
    # The same detections behind both: val's results file is training's last evaluation's, and not empty.
    during, after = (json.load(open(os.path.join(folder, "inference", "coco_instances_results.json")))
                     for folder in ("run", os.path.join("output", "val")))
    # BatchNorm is folded for val: scores equal up to rounding, so near-ties may come in another order.
    assert len(during) == len(after) > 1000
    assert np.allclose(sorted(r["score"] for r in during), sorted(r["score"] for r in after), atol=1e-5)
    assert sum(r["segmentation"] == s["segmentation"] for r, s in zip(during, after)) > 0.95 * len(during)
    path = model.export(str(tmp_path / "synthetic.onnx"))
    onnx_model = adet.load(path, device="cpu")
    image = np.full((128, 160, 3), 30, np.uint8)
    cv2.circle(image, (80, 64), 30, (200, 200, 200), -1)
    ours, theirs = model(image), onnx_model(image)
    check = compare(ours.instances, theirs.instances)  # matched by class and box: near-ties may swap places
    assert check["detections"] == check["onnx_detections"] > 20
    assert check["matched"] >= 0.97 * check["detections"]
    assert check["score"] < 1e-3 and check["box"] < 0.5
