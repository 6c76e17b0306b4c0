"""The official implementation's outputs and losses (tests/fixtures/reference) reproduced with the same
deterministic weights, through the public API."""

import json
import os
import sys

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

from adet.checkpoint import DetectionCheckpointer
from adet.config import get_cfg
from adet.engine import DefaultPredictor
from adet.modeling import build_model
from adet.structures import Boxes, Instances, PolygonMasks

from .conftest import REFERENCE, ROOT


@pytest.fixture(scope="module")
def official_checkpoint(tmp_path_factory):
    sys.path.insert(0, REFERENCE)
    import detweights

    with open(os.path.join(REFERENCE, "embedmask_R_50_state_dict.json")) as f:
        entries = json.load(f)
    path = str(tmp_path_factory.mktemp("weights") / "official_R_50.pth")
    torch.save({"model": detweights.make_state_dict(entries)}, path)
    return path


def r50_cfg(weights):
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(ROOT, "configs", "EmbedMask", "MS_R_50_1x.yaml"))
    cfg.merge_from_list(["MODEL.WEIGHTS", weights, "MODEL.DEVICE", "cpu"])
    return cfg


@pytest.mark.parametrize("name", ["astronaut", "coffee"])
def test_inference_matches_official_outputs(official_checkpoint, name):
    predictor = DefaultPredictor(r50_cfg(official_checkpoint))
    image = cv2.imread(os.path.join(REFERENCE, "images", f"{name}.png"), cv2.IMREAD_COLOR)
    with torch.no_grad():
        instances = predictor(image)["instances"]
    reference = np.load(os.path.join(REFERENCE, "outputs_R_50.npz"))
    with open(os.path.join(REFERENCE, "outputs_R_50_masks_rle.json")) as f:
        rles = json.load(f)[name]
    count = int(reference[f"{name}__num"])
    assert len(instances) == count == 100
    # Same order (score-descending, identical tie-breaking): compare element-wise.
    np.testing.assert_allclose(instances.scores.numpy(), reference[f"{name}__scores"][:count], atol=1e-5)
    np.testing.assert_allclose(instances.pred_boxes.tensor.numpy(), reference[f"{name}__boxes"][:count], atol=0.01)
    assert np.array_equal(instances.pred_classes.numpy(), reference[f"{name}__classes"][:count])
    ref_masks = mask_util.decode([{"size": r["size"], "counts": r["counts"].encode()} for r in rles])
    ref_masks = ref_masks.transpose(2, 0, 1).astype(bool)
    masks = instances.pred_masks.numpy().astype(bool)
    inter = (ref_masks & masks).reshape(count, -1).sum(1)
    union = (ref_masks | masks).reshape(count, -1).sum(1)
    assert (inter / np.maximum(union, 1)).min() > 0.999
    # Areas to the pixel, but for pixels whose probability sits at 0.5 within float rounding.
    areas = masks.reshape(count, -1).sum(1)
    assert np.abs(areas - reference[f"{name}__mask_areas"][:count]).max() <= 5


def test_training_losses_match_official(official_checkpoint):
    folder = os.path.join(REFERENCE, "train_batch")
    with open(os.path.join(folder, "annotations.json")) as f:
        annotations = json.load(f)
    batched = []
    for image_info in annotations["images"]:
        image = cv2.imread(os.path.join(folder, image_info["file_name"]), cv2.IMREAD_COLOR)
        instances = Instances(image.shape[:2])
        objects = image_info["annotations"]
        instances.gt_boxes = Boxes(torch.tensor([a["bbox_xyxy"] for a in objects], dtype=torch.float32))
        instances.gt_classes = torch.tensor([a["class_id"] for a in objects])
        instances.gt_masks = PolygonMasks([[np.array(p) for p in a["segmentation"]] for a in objects])
        batched.append({"image": torch.as_tensor(image.astype("float32").transpose(2, 0, 1)),
                        "height": image.shape[0], "width": image.shape[1], "instances": instances})
    torch.manual_seed(0)
    model = build_model(r50_cfg(official_checkpoint))
    DetectionCheckpointer(model).load(official_checkpoint)
    model.train()
    losses = {k: v.item() for k, v in model(batched).items()}
    with open(os.path.join(REFERENCE, "train_losses_R_50.json")) as f:
        expected = json.load(f)
    assert set(losses) == set(expected)
    for key, value in expected.items():
        assert losses[key] == pytest.approx(value, rel=1e-4), key


def test_r101_official_names_load_strictly(tmp_path):
    sys.path.insert(0, REFERENCE)
    import detweights

    with open(os.path.join(REFERENCE, "embedmask_R_101_state_dict.json")) as f:
        entries = json.load(f)
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(ROOT, "configs", "EmbedMask", "MS_R_101_3x.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    state = detweights.make_state_dict(entries)
    path = str(tmp_path / "r101.pth")
    torch.save({"model": state}, path)
    DetectionCheckpointer(model).load(path)  # strict: any missing/unexpected/misshaped name raises
    key = "backbone.bottom_up.res4.22.conv3.weight"
    assert torch.equal(model.state_dict()[key], state[key])
