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


@pytest.mark.parametrize("variant,head_channels", [("Conv3", 16), ("Conv1_Conv3", 32)])
def test_proposal_head_variants_start_at_the_prior_margin(variant, head_channels):
    """With zero weights the head's outputs are its biases: each margin m makes the coupling 0.5 at squared
    distance PRIOR_MARGIN ** 2 (exp(-m * 2 ** 2) = 0.5), and the spatial embeddings are the cell centres / 100."""
    from adet.modeling.embedmask import ProposalHead

    head = ProposalHead(in_channels=16, strides=[8, 16], embed_dim=4, prior_margin=2.0, variant=variant,
                        head_channels=32)
    names = {n.split(".")[0] for n, _ in head.named_parameters()}
    assert ("margin_conv" in names and "embed_conv" in names) == (variant == "Conv1_Conv3")
    assert head.embed_head.free_embed_head.in_channels == head_channels
    with torch.no_grad():
        for name, p in head.named_parameters():
            if name.endswith("weight") and "scale" not in name:
                p.zero_()
    embeddings, margins = head(torch.randn(1, 16, 3, 5), level=1)
    assert embeddings.shape == margins.shape == (1, 4, 3, 5)
    assert torch.allclose(torch.exp(-margins * 2.0**2), torch.full_like(margins, 0.5))
    # Level 1 is stride 16: cell (row 2, column 4) is centred at x = 4 * 16 + 8, y = 2 * 16 + 8.
    assert torch.allclose(embeddings[0, :2, 2, 4], torch.tensor([72.0, 40.0]) / 100)
    assert (embeddings[0, 2:] == 0).all()
    assert len(head.margin_scales) == 2  # one per level


def test_shared_convs_run_before_both_towers():
    """NUM_SHARE_CONVS > 0: the head equals a head without shared convs applied to the shared tower's output."""
    from adet.modeling.fcos import FCOSHead

    torch.manual_seed(0)
    shared = FCOSHead(in_channels=32, num_classes=3, num_levels=2, num_cls_convs=1, num_box_convs=1,
                      num_share_convs=1)
    plain = FCOSHead(in_channels=32, num_classes=3, num_levels=2, num_cls_convs=1, num_box_convs=1)
    assert sorted(k for k in shared.state_dict() if k.startswith("share_tower.")) == [
        "share_tower.0.bias", "share_tower.0.weight", "share_tower.1.bias", "share_tower.1.weight"]
    for p in shared.parameters():
        p.data.normal_(0, 0.1, generator=torch.Generator().manual_seed(p.numel()))
    plain.load_state_dict({k: v for k, v in shared.state_dict().items() if not k.startswith("share_tower.")})
    features = [torch.randn(2, 32, 6, 8), torch.randn(2, 32, 3, 4)]
    with torch.no_grad():
        expected = plain([shared.share_tower(f) for f in features])
        actual = shared(features)
    for field in ("class_logits", "ltrb_strides", "ctrness_logits", "box_towers"):
        for a, b in zip(getattr(actual, field), getattr(expected, field)):
            assert torch.equal(a, b)


@pytest.mark.parametrize("overrides", [
    ("MODEL.EMBEDMASK.MAX_PROPOSALS", -1, "MODEL.EMBEDMASK.TOPK_PROPOSALS_PER_IM", 4),
    ("MODEL.EMBEDMASK.SAMPLE_IN_MASK", True),
    ("MODEL.EMBEDMASK.PROPOSAL_HEAD", "Conv3"),
    ("MODEL.FCOS.CENTER_SAMPLE", False),
    ("MODEL.FCOS.NUM_SHARE_CONVS", 1),
    ("MODEL.EMBEDMASK.MASK_LOSS_TYPE", "Dice"),
])
def test_every_option_trains(overrides):
    """Each option gives finite losses, a mask loss from real positives, and a gradient to every parameter."""
    cfg = make_tiny_cfg(*overrides)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    losses = model(_training_inputs() * 2)
    assert all(torch.isfinite(v) for v in losses.values()) and losses["loss_mask"] > 0
    sum(losses.values()).backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []


def test_loss_weights_scale_their_terms_only(tiny_cfg):
    torch.manual_seed(0)
    plain = build_model(tiny_cfg).train()
    tiny_cfg.merge_from_list(["MODEL.FCOS.LOSS_WEIGHT_CLS", 2.0, "MODEL.EMBEDMASK.MASK_LOSS_ALPHA", 0.5])
    torch.manual_seed(0)
    weighted = build_model(tiny_cfg).train()
    torch.manual_seed(1)
    expected = plain(_training_inputs())
    torch.manual_seed(1)
    actual = weighted(_training_inputs())
    assert list(actual) == ["loss_sem", "loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr", "loss_mask"]
    factors = {"loss_fcos_cls": 2.0, "loss_mask": 0.5}
    for term, value in actual.items():
        assert torch.allclose(value, expected[term] * factors.get(term, 1.0))
