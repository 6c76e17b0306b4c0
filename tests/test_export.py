"""ONNX export: one file for every image size, ONNX Runtime equal to PyTorch (and, for R-50 with the reference
weights, to the official implementation), an image without detections, the predictor and command-line paths; and
the bfloat16 inference mode."""

import json
import os
import sys

import cv2
import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from adet.cli import main as embedmask  # noqa: E402
from adet.cli.export import compare  # noqa: E402
from adet.cli.export import main as export_main  # noqa: E402
from adet.engine import DefaultPredictor  # noqa: E402
from adet.modeling import build_model  # noqa: E402

from .conftest import REFERENCE, make_tiny_cfg, shapes_image  # noqa: E402

pytestmark = pytest.mark.slow  # an export takes 20-40 s


def tiny_checkpoint(folder, *overrides):
    cfg = make_tiny_cfg("MODEL.FCOS.NUM_CLASSES", 2, *overrides)
    torch.manual_seed(0)
    state = build_model(cfg).state_dict()
    state["proposal_generator.fcos_head.bbox_pred.bias"] += 1.5
    state["proposal_generator.fcos_head.cls_logits.bias"].normal_(0, 2, generator=torch.Generator().manual_seed(0))
    path = os.path.join(folder, "tiny.pth")
    torch.save({"model": state, "config": cfg.dump(), "class_names": ["cat", "dog"], "category_ids": [5, 9]}, path)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    weights = tiny_checkpoint(str(folder))
    path = str(folder / "tiny.onnx")
    assert embedmask(["export", "--weights", weights, "--output", path]) == 0
    return weights, path


def test_the_check_fails_when_onnx_runtime_finds_other_detections(exported, tmp_path, monkeypatch):
    """The self-check on the exported file: a graph that loses detections, or finds some PyTorch does not, or finds
    none at all, is set aside; an empty comparison passes nothing."""
    import shutil

    from adet.errors import ExportCheckError
    from adet.export import ONNXPredictor, checked

    weights, path = exported
    reference, image = _pytorch(weights), shapes_image(96, 128, seed=2)[0]
    copy = str(tmp_path / "copy.onnx")
    shutil.copyfile(path, copy)
    assert all(c["detections"] > 5 for c in checked.check_against_pytorch(copy, reference, image))
    for keep in (slice(0, 0), slice(0, 3)):  # none, or 3 of them
        class Losing(ONNXPredictor):
            def __call__(self, bgr, keep=keep):
                found = super().__call__(bgr)["instances"]
                return {"instances": found[keep]}

        monkeypatch.setattr(checked, "ONNXPredictor", Losing)
        with pytest.raises(ExportCheckError, match="differ from PyTorch's"):
            checked.check_against_pytorch(copy, reference, image)
        assert os.path.isfile(copy + ".mismatch")
        os.replace(copy + ".mismatch", copy)
    silent = _pytorch(weights, "MODEL.FCOS.INFERENCE_TH_TEST", 0.99)  # PyTorch finds none, ONNX Runtime some
    monkeypatch.setattr(checked, "ONNXPredictor", ONNXPredictor)
    with pytest.raises(ExportCheckError, match="differ from PyTorch's"):
        checked.check_against_pytorch(copy, silent, image)


def _pytorch(weights, *overrides):
    from adet.api import load_config

    return DefaultPredictor(load_config(weights, None, ["MODEL.DEVICE", "cpu", *overrides]))


@pytest.mark.parametrize("size", [(96, 128), (200, 90), (64, 300), (333, 257)])
def test_one_file_for_every_size_and_aspect_ratio(exported, size):
    from adet.export import ONNXPredictor

    weights, path = exported
    image = cv2.resize(shapes_image(96, 128, seed=size[0])[0], (size[1], size[0]))
    expected = _pytorch(weights)(image)["instances"]
    actual = ONNXPredictor(path)(image)["instances"]
    check = compare(expected, actual)
    assert check["detections"] > 5 and check["matched"] == check["detections"] == check["onnx_detections"]
    assert check["score"] < 1e-5 and check["box"] < 1e-3 and check["mask_iou"] > 0.99
    assert actual.pred_masks.shape == (len(actual), *size) and actual.pred_masks.dtype == torch.bool


def test_an_image_without_detections(exported, tmp_path):
    """A model whose scores never pass the threshold: both runtimes return nothing, with the right shapes."""
    from adet.export import ONNXPredictor

    folder = tmp_path / "silent"
    folder.mkdir()
    weights = tiny_checkpoint(str(folder), "MODEL.FCOS.INFERENCE_TH_TEST", 0.99)
    path = str(folder / "silent.onnx")
    report = export_main(["--weights", weights, "--output", path])
    # Nothing to compare at the model's threshold, so the check compared the same graph at threshold 0.
    assert len(report["checks"]) == 2 and all(c["detections"] > 5 and c["matched"] == c["detections"]
                                              for c in report["checks"])
    assert sorted(os.listdir(folder)) == ["silent.onnx", "tiny.pth"]  # the threshold-0 twin is gone
    image = shapes_image(96, 128)[0]
    assert len(_pytorch(weights)(image)["instances"]) == 0
    instances = ONNXPredictor(path)(image)["instances"]
    assert len(instances) == 0 and instances.pred_masks.shape == (0, 96, 128)
    assert instances.pred_boxes.tensor.shape == (0, 4)


def test_file_carries_config_classes_and_dataset_ids(exported):
    import onnx

    from adet.export import ONNXPredictor

    _, path = exported
    metadata = {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}
    assert "MODEL:" in metadata["embedmask_config"] and json.loads(metadata["category_ids"]) == [5, 9]
    predictor = ONNXPredictor(path)
    assert predictor.class_names == ["cat", "dog"] and predictor.cfg.MODEL.RESNETS.DEPTH == 18


def test_predict_and_python_api_run_the_onnx_file(exported, tmp_path, monkeypatch):
    import onnxruntime

    import adet

    weights, path = exported
    images = tmp_path / "images"
    images.mkdir()
    for k in range(2):
        cv2.imwrite(str(images / f"{k:012d}.png"), shapes_image(96, 128, seed=k)[0])
    sessions = []

    class CountedSession(onnxruntime.InferenceSession):
        def __init__(self, *args, **kwargs):
            sessions.append(args[0])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", CountedSession)
    for label, source in (("onnx", ["--onnx", path]), ("torch", ["--weights", weights, "--device", "cpu"])):
        assert embedmask(["predict", *source, "--input", str(images), "--json", str(tmp_path / f"{label}.json"),
                          "--confidence-threshold", "0.3"]) == 0
    assert sessions == [path]  # the session that checked the file predicts: the file is read once
    onnx_results, torch_results = (json.loads((tmp_path / f"{label}.json").read_text()) for label in ("onnx", "torch"))
    assert len(onnx_results) == len(torch_results) > 0
    for a, b in zip(onnx_results, torch_results):
        assert (a["image_id"], a["category_id"], a["segmentation"]) == (b["image_id"], b["category_id"],
                                                                         b["segmentation"])
        assert abs(a["score"] - b["score"]) < 1e-5
    result = adet.load(path, confidence=0.3)(str(images / "000000000001.png"))
    assert len(result) > 0 and set(result.category_ids) <= {5, 9} and (result.scores >= 0.3).all()
    # Sliced, both runtimes: the same tiles, the same merge, the same results (and not the unsliced ones).
    for label, source in (("onnx", ["--onnx", path]), ("torch", ["--weights", weights, "--device", "cpu"])):
        assert embedmask(["predict", *source, "--input", str(images), "--json", str(tmp_path / f"{label}_sliced.json"),
                          "--confidence-threshold", "0.3", "--slice", "48", "64", "--overlap", "0.5"]) == 0
    onnx_sliced, torch_sliced = (json.loads((tmp_path / f"{label}_sliced.json").read_text()) for label in
                                 ("onnx", "torch"))
    assert len(onnx_sliced) == len(torch_sliced) > 0 and onnx_sliced != onnx_results
    assert [a["segmentation"] for a in onnx_sliced] == [b["segmentation"] for b in torch_sliced]
    sliced_result = adet.load(path, confidence=0.3, slice=(48, 64), overlap=0.5)(str(images / "000000000001.png"))
    expected = [r for r in onnx_sliced if r["image_id"] == 1]
    assert [r["segmentation"] for r in sliced_result.to_json()] == [r["segmentation"] for r in expected]
    assert embedmask(["predict", "--onnx", path, "--weights", weights, "--input", str(images)]) == 2


@pytest.mark.slow
def test_r50_in_onnx_runtime_gives_the_official_outputs(tmp_path):
    """The official R-50 architecture with the reference weights, exported and run in ONNX Runtime, against the
    official implementation's outputs (check_parity.py's tolerances)."""
    import pycocotools.mask as mask_util

    from adet.export import ONNXPredictor

    sys.path.insert(0, REFERENCE)
    import detweights

    sys.path.insert(0, os.path.join(os.path.dirname(REFERENCE), "..", "..", "benchmarks"))
    from gpu_check import compare_outputs

    with open(os.path.join(REFERENCE, "embedmask_R_50_state_dict.json")) as f:
        entries = json.load(f)
    weights = str(tmp_path / "r50.pth")
    torch.save({"model": detweights.make_state_dict(entries)}, weights)
    path = str(tmp_path / "r50.onnx")
    assert embedmask(["export", "--config-file", "EmbedMask/MS_R_50_1x.yaml", "--weights", weights, "--output",
                      path, "--no-check"]) == 0
    predictor = ONNXPredictor(path)
    official = np.load(os.path.join(REFERENCE, "outputs_R_50.npz"))
    with open(os.path.join(REFERENCE, "outputs_R_50_masks_rle.json")) as f:
        rles = json.load(f)
    for name in ("astronaut", "coffee"):
        instances = predictor(cv2.imread(os.path.join(REFERENCE, "images", f"{name}.png"), cv2.IMREAD_COLOR))[
            "instances"]
        count = int(official[f"{name}__num"])
        reference = {"boxes": official[f"{name}__boxes"][:count], "scores": official[f"{name}__scores"][:count],
                     "classes": official[f"{name}__classes"][:count],
                     "masks": mask_util.decode([{"size": r["size"], "counts": r["counts"].encode()}
                                                for r in rles[name]]).transpose(2, 0, 1).astype(bool)}
        ours = {"boxes": instances.pred_boxes.tensor.numpy(), "scores": instances.scores.numpy(),
                "classes": instances.pred_classes.numpy(), "masks": instances.pred_masks.numpy()}
        summary, ok = compare_outputs(reference, ours)
        assert ok and summary.startswith("100/100 matched"), summary


def test_bfloat16_inference_decodes_in_float32(tmp_path):
    from adet.config import ConfigError

    weights = tiny_checkpoint(str(tmp_path))
    image = shapes_image(96, 128)[0]
    full = _pytorch(weights)(image)["instances"]
    half = _pytorch(weights, "MODEL.INFERENCE_DTYPE", "bfloat16")(image)["instances"]
    assert half.scores.dtype == torch.float32 and half.pred_boxes.tensor.dtype == torch.float32
    check = compare(full, half)
    assert check["matched"] >= 0.8 * check["detections"] and check["score"] < 0.05
    with pytest.raises(ConfigError, match="float16 needs a GPU"):
        build_model(make_tiny_cfg("MODEL.INFERENCE_DTYPE", "float16"))
    with pytest.raises(ConfigError, match="MODEL.INFERENCE_DTYPE must be one of"):
        build_model(make_tiny_cfg("MODEL.INFERENCE_DTYPE", "int8"))


@pytest.fixture(scope="module")
def own_predictions_dataset(tmp_path_factory):
    """A tiny checkpoint (with a mask threshold its random embeddings pass) and six synthetic images whose ground
    truth is its own 5 best detections in float32, so that its AP is high."""
    import pycocotools.mask as mask_util

    root = tmp_path_factory.mktemp("own_predictions")
    weights = tiny_checkpoint(str(root), "MODEL.EMBEDMASK.MASK_TH", 0.2)
    (root / "images").mkdir()
    predictor, images, annotations = _pytorch(weights), [], []
    for image_id in range(1, 7):
        image = shapes_image(112, 144, seed=image_id)[0]
        cv2.imwrite(str(root / "images" / f"{image_id}.png"), image)
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": 112, "width": 144})
        found = predictor(image)["instances"]
        found = found[found.pred_masks.flatten(1).sum(1) >= 20]
        for k in range(min(5, len(found))):
            x1, y1, x2, y2 = found.pred_boxes.tensor[k].tolist()
            rle = mask_util.encode(np.asfortranarray(found.pred_masks[k].numpy().astype(np.uint8)))
            rle["counts"] = rle["counts"].decode()
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "iscrowd": 0,
                                "category_id": [5, 9][int(found.pred_classes[k])], "segmentation": rle,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": float(mask_util.area(rle))})
    json_file = root / "own.json"
    json_file.write_text(json.dumps({"images": images, "annotations": annotations,
                                     "categories": [{"id": 5, "name": "cat"}, {"id": 9, "name": "dog"}]}))
    assert len(annotations) >= 20
    return weights, f"own={json_file}:{root / 'images'}"


def test_int8_export_quantizes_the_trunk_keeps_the_embedding_heads_float_and_measures_ap(own_predictions_dataset,
                                                                                         tmp_path):
    import onnx

    from adet.cli.export import main as export
    from adet.export import ONNXPredictor

    weights, dataset = own_predictions_dataset
    path = str(tmp_path / "tiny.onnx")
    report = export(["--weights", weights, "--output", path, "--int8", "--calibration", "own", "--validation", "own",
                     "--dataset", dataset, "--no-check", "--max-ap-drop", "100"])
    assert os.path.isfile(str(tmp_path / "tiny.fp32.onnx")) and report["int8"]["images"] == 6
    graph = onnx.load(path)
    produced_by = {output: node for node in graph.graph.node for output in node.output}
    convolutions = [node for node in graph.graph.node if node.op_type == "Conv"]
    quantized = [node for node in convolutions if produced_by.get(node.input[1]) is not None
                 and produced_by[node.input[1]].op_type == "DequantizeLinear"]
    kept = [node for node in convolutions if node not in quantized]
    # every convolution but the embedding and margin heads' reads int8 weights
    assert kept and all(node.input[1].startswith(("model.proposal_head.", "model.pixel_head.")) for node in kept)
    assert len(quantized) > 2 * len(kept)
    metadata = {p.key: p.value for p in graph.metadata_props}
    assert json.loads(metadata["category_ids"]) == [5, 9] and metadata["quantization"].startswith("int8 static")
    ap = report["int8"]["ap"]
    assert set(ap["float32"]) == set(ap["int8"]) == {"bbox", "segm"} and ap["float32"]["segm"] > 50
    image = shapes_image(112, 144, seed=1)[0]
    check = compare(ONNXPredictor(str(tmp_path / "tiny.fp32.onnx"))(image)["instances"],
                    ONNXPredictor(path)(image)["instances"])
    assert check["detections"] > 5 and check["onnx_detections"] > 0


def test_an_int8_graph_beyond_the_ap_gate_is_refused(own_predictions_dataset, tmp_path, capsys):
    weights, dataset = own_predictions_dataset
    path = str(tmp_path / "gated.onnx")
    code = embedmask(["export", "--weights", weights, "--output", path, "--int8", "--calibration", "own",
                      "--calibration-images", "2", "--validation", "own", "--dataset", dataset, "--no-check",
                      "--max-ap-drop", "-100"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and err.startswith("error: --max-ap-drop -100.0: the int8 graph loses")
    assert not os.path.exists(path) and os.path.isfile(str(tmp_path / "gated.rejected.onnx"))
    assert embedmask(["export", "--weights", weights, "--output", path, "--int8"]) == 2
    assert "--int8 needs --calibration DATASET" in capsys.readouterr().err


def test_an_int8_gate_without_ground_truth_is_one_line_before_any_work(own_predictions_dataset, tmp_path, capsys):
    weights, dataset = own_predictions_dataset
    annotations, images = dataset.split("=", 1)[1].split(":", 1)
    info = json.load(open(annotations))
    (tmp_path / "info.json").write_text(json.dumps({"images": info["images"], "categories": info["categories"]}))
    path = str(tmp_path / "gated.onnx")
    code = embedmask(["export", "--weights", weights, "--output", path, "--int8", "--calibration", "own",
                      "--dataset", dataset, "--dataset", f"info={tmp_path / 'info.json'}:{images}",
                      "--validation", "info"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == ("error: --validation info: no annotations to score the int8 graph against (an "
                                 "image-info file); name a dataset with ground truth")
    assert not os.path.exists(str(tmp_path / "gated.fp32.onnx"))  # refused before the export
