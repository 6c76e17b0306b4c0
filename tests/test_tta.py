"""Test-time augmentation: one pass without flip is plain inference; with flip, the merge is mirror-symmetric."""

import numpy as np
import torch

from adet.engine import DefaultPredictor
from adet.modeling import build_model

from .conftest import make_tiny_cfg, shapes_image


def _predictor(tmp_path, *aug):
    cfg = make_tiny_cfg("MODEL.FCOS.INFERENCE_TH_TEST", 0.0, "MODEL.FCOS.POST_NMS_TOPK_TEST", 30)
    torch.manual_seed(0)
    weights = tmp_path / "tiny.pth"
    if not weights.exists():
        state = build_model(cfg).state_dict()
        # Random weights predict boxes of about zero size; these give boxes of a few strides and varied scores.
        state["proposal_generator.fcos_head.bbox_pred.bias"] += 1.5
        state["proposal_generator.fcos_head.cls_logits.bias"].normal_(0, 2, generator=torch.Generator().manual_seed(0))
        torch.save({"model": state}, weights)
    cfg.merge_from_list(["MODEL.WEIGHTS", str(weights), *aug])
    return DefaultPredictor(cfg)


def _as_numpy(instances):
    return {k: (v.tensor if hasattr(v, "tensor") else v).numpy() for k, v in instances.get_fields().items()}


def test_one_scale_without_flip_is_plain_inference(tmp_path):
    image = shapes_image(90, 120)[0]
    plain = _as_numpy(_predictor(tmp_path)(image)["instances"])
    augmented = _as_numpy(_predictor(tmp_path, "TEST.AUG.ENABLED", True, "TEST.AUG.MIN_SIZES", (96,),
                                     "TEST.AUG.FLIP", False)(image)["instances"])
    assert len(plain["scores"]) == 30  # enough detections to exercise the merge
    np.testing.assert_array_equal(augmented["scores"], plain["scores"])
    np.testing.assert_array_equal(augmented["pred_classes"], plain["pred_classes"])
    np.testing.assert_allclose(augmented["pred_boxes"], plain["pred_boxes"], atol=1e-4)
    # After the model's own NMS no two detections of a class overlap beyond the threshold: every vote is unanimous.
    assert (augmented["pred_masks"] != plain["pred_masks"]).sum() <= 5  # float rounding exactly at 0.5


def test_flip_merge_is_mirror_symmetric_and_scales_merge(tmp_path):
    image = shapes_image(90, 120, seed=3)[0]
    predictor = _predictor(tmp_path, "TEST.AUG.ENABLED", True, "TEST.AUG.MIN_SIZES", (80, 112),
                           "TEST.AUG.FLIP", True)
    result = _as_numpy(predictor(image)["instances"])
    mirrored = _as_numpy(predictor(np.ascontiguousarray(image[:, ::-1]))["instances"])
    assert 0 < len(result["scores"]) <= 30 and result["pred_masks"].shape == (len(result["scores"]), 90, 120)
    order, mirrored_order = np.argsort(-result["scores"], kind="stable"), np.argsort(-mirrored["scores"],
                                                                                      kind="stable")
    np.testing.assert_allclose(result["scores"][order], mirrored["scores"][mirrored_order], atol=1e-6)
    boxes = mirrored["pred_boxes"][mirrored_order]
    np.testing.assert_allclose(result["pred_boxes"][order], np.stack(
        [120 - boxes[:, 2], boxes[:, 1], 120 - boxes[:, 0], boxes[:, 3]], 1), atol=1e-3)
    flipped_masks = mirrored["pred_masks"][mirrored_order][:, :, ::-1]
    assert (result["pred_masks"][order] != flipped_masks).mean() < 1e-3
    # The merged set draws on every pass: some kept detections come from each scale.
    plain = _as_numpy(_predictor(tmp_path)(image)["instances"])
    assert not np.array_equal(np.sort(result["scores"]), np.sort(plain["scores"]))
