import numpy as np
import pytest
import torch

from adet.engine import DefaultPredictor
from adet.modeling import build_model
from adet.modeling.backbone import ResNet
from adet.modeling.embedmask.postprocess import postprocess
from adet.structures import Boxes, Instances, PolygonMasks

from .conftest import make_tiny_cfg, shapes_image


def test_resnet50_stages_strides_channels_and_stride_in_1x1():
    resnet = ResNet(depth=50, out_features=("res3", "res4", "res5"))
    outputs = resnet(torch.randn(1, 3, 64, 96))
    assert {k: tuple(v.shape) for k, v in outputs.items()} == {
        "res3": (1, 512, 8, 12), "res4": (1, 1024, 4, 6), "res5": (1, 2048, 2, 3)}
    assert resnet.res3[0].conv1.stride == (2, 2) and resnet.res3[0].conv2.stride == (1, 1)
    assert sum(len(getattr(resnet, f"res{i}")) for i in range(2, 6)) == 16
    frozen = [n for n, p in resnet.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith(("stem.", "res2.")) for n in frozen)


def test_fpn_levels_and_padding_rule(tiny_model):
    features = tiny_model.backbone(torch.randn(1, 3, 96, 160))
    assert {k: tuple(v.shape[2:]) for k, v in features.items()} == {
        "p3": (12, 20), "p4": (6, 10), "p5": (3, 5), "p6": (2, 3), "p7": (1, 2)}
    assert tiny_model.backbone.size_divisibility == 32


def _training_inputs(with_objects=True):
    image, polygons = shapes_image()
    instances = Instances(image.shape[:2])
    if with_objects:
        masks = PolygonMasks([[p] for p in polygons])
        instances.gt_boxes = masks.get_bounding_boxes()
        instances.gt_classes = torch.tensor([0, 2])
        instances.gt_masks = masks
    else:
        instances.gt_boxes = Boxes(torch.zeros(0, 4))
        instances.gt_classes = torch.zeros(0, dtype=torch.long)
        instances.gt_masks = PolygonMasks([])
    return [{"image": torch.as_tensor(image.transpose(2, 0, 1).astype("float32")), "instances": instances}]


def test_training_losses_and_every_trainable_parameter_gets_a_gradient(tiny_model):
    tiny_model.train()
    losses = tiny_model(_training_inputs() * 2)
    assert set(losses) == {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr", "loss_mask", "loss_sem"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    trainable = {n: p for n, p in tiny_model.named_parameters() if p.requires_grad}
    assert [n for n, p in trainable.items() if p.grad is None] == []
    # Only the per-level scales of levels without positive locations (this image's objects are small) get zeros.
    zero = [n for n, p in trainable.items() if not p.grad.abs().sum() > 0]
    assert zero and all("scales." in n and not n.endswith(".0.scale") for n in zero)


def test_image_without_objects_has_zero_box_and_mask_losses(tiny_model):
    tiny_model.train()
    losses = tiny_model(_training_inputs(with_objects=False))
    assert losses["loss_fcos_loc"].item() == 0.0 and losses["loss_mask"].item() == 0.0
    assert losses["loss_fcos_ctr"].item() == 0.0
    assert losses["loss_fcos_cls"] > 0 and torch.isfinite(losses["loss_sem"])
    sum(losses.values()).backward()


def test_eval_output_contract(tiny_cfg):
    tiny_cfg.MODEL.FCOS.INFERENCE_TH_TEST = 0.0  # a random model scores below the default 0.05
    torch.manual_seed(0)
    model = build_model(tiny_cfg).eval()
    image, _ = shapes_image(96, 128)
    with torch.no_grad():
        outputs = model([{"image": torch.as_tensor(image.transpose(2, 0, 1).astype("float32")),
                          "height": 48, "width": 64}])
    instances = outputs[0]["instances"]
    assert instances.image_size == (48, 64) and 0 < len(instances) <= 100
    assert instances.pred_masks.shape == (len(instances), 48, 64)
    assert instances.pred_masks.dtype == torch.bool
    assert (instances.scores[:-1] >= instances.scores[1:]).all()  # score-descending
    boxes = instances.pred_boxes.tensor
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 64).all() and (boxes[:, 3] <= 48).all()
    assert ((instances.pred_classes >= 0) & (instances.pred_classes < 3)).all()


def test_postprocess_scales_clips_drops_empty_and_thresholds():
    results = Instances((8, 8))
    results.pred_boxes = Boxes(torch.tensor([[1.0, 2.0, 6.0, 10.0], [9.0, 1.0, 12.0, 4.0]]))
    results.scores = torch.tensor([0.9, 0.8])
    probs = torch.zeros(2, 2, 2)
    probs[0, 0, 0] = 1.0  # top-left stride-4 cell of the first detection
    results.mask_probs = probs
    out = postprocess(results, 16, 16, padded_size=(8, 8))
    # x scaled by 2 then clipped to 16; the second box starts at x = 18 > 16 and becomes empty
    assert out.image_size == (16, 16) and len(out) == 1
    assert out.pred_boxes.tensor.tolist() == [[2.0, 4.0, 12.0, 16.0]]
    # Independent 1-d chain: aligned x4 of [1, 0] is m = [1, 1, 1, .75, .5, .25, 0, 0]; resizing 8 -> 16 without
    # aligned corners samples m at i / 2 - 0.25 (clamped), and the mask is the outer product > 0.5.
    m = np.array([1, 1, 1, 0.75, 0.5, 0.25, 0, 0])
    profile = np.interp(np.clip(np.arange(16) / 2 - 0.25, 0, 7), np.arange(8), m)
    expected = np.outer(profile, profile) > 0.5
    assert out.pred_masks.shape == (1, 16, 16)
    assert out.pred_masks.dtype == torch.bool and np.array_equal(out.pred_masks[0].numpy(), expected)


def test_predictor_with_no_detections_returns_empty_fields(tiny_cfg):
    tiny_cfg.MODEL.FCOS.INFERENCE_TH_TEST = 1.0
    predictor = DefaultPredictor(tiny_cfg)
    image, _ = shapes_image(50, 70)
    instances = predictor(image)["instances"]
    assert len(instances) == 0 and instances.image_size == (50, 70)
    assert instances.pred_masks.shape == (0, 50, 70) and instances.pred_boxes.tensor.shape == (0, 4)


def test_predictor_accepts_gray_and_rejects_bad_input(tiny_cfg):
    predictor = DefaultPredictor(tiny_cfg)
    gray = np.zeros((40, 60), dtype=np.uint8)
    assert predictor(gray)["instances"].image_size == (40, 60)
    with pytest.raises(TypeError, match="uint8"):
        predictor(np.zeros((40, 60, 3), dtype=np.float32))


def test_cuda_device_falls_back_to_cpu_without_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    cfg = make_tiny_cfg("MODEL.DEVICE", "cuda")
    assert build_model(cfg).device.type == "cpu"
