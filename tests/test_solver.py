import pytest
import torch
from torch import nn

from adet.config import get_cfg
from adet.solver import WarmupLRScheduler, build_lr_scheduler, optimizer_param_groups, scale_for_world_size


def test_param_groups_follow_detectron2_v04_rules(tiny_model):
    groups = optimizer_param_groups(tiny_model, base_lr=0.01, weight_decay=1e-4, weight_decay_norm=0.0)
    decay_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    named = dict(tiny_model.named_parameters())
    gn_weight = named["proposal_generator.fcos_head.cls_tower.1.weight"]
    gn_bias = named["proposal_generator.fcos_head.cls_tower.1.bias"]
    bn_weight = named["mask_branch.tower.0.1.weight"]
    conv_weight = named["proposal_generator.fcos_head.cls_tower.0.weight"]
    scale = named["proposal_head.margin_scales.0.scale"]
    assert decay_of[id(gn_weight)] == 0.0 and decay_of[id(bn_weight)] == 0.0
    assert decay_of[id(gn_bias)] == 1e-4  # the bias rule comes after the norm rule
    assert decay_of[id(conv_weight)] == 1e-4 and decay_of[id(scale)] == 1e-4
    frozen = named["backbone.bottom_up.stem.conv1.weight"]
    assert not frozen.requires_grad and id(frozen) not in decay_of
    assert len(decay_of) == sum(p.requires_grad for p in tiny_model.parameters())
    groups = optimizer_param_groups(tiny_model, 0.01, 1e-4, 0.0, bias_lr_factor=2.0, weight_decay_bias=0.0)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert lr_of[id(gn_bias)] == 0.02 and lr_of[id(conv_weight)] == 0.01


def test_warmup_multistep_schedule_values():
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.01)
    scheduler = WarmupLRScheduler(optimizer, "WarmupMultiStepLR", 100, steps=(60, 80), gamma=0.1, warmup_iters=10,
                                  warmup_factor_=0.001)
    lrs = []
    for _ in range(100):
        lrs.append(optimizer.param_groups[0]["lr"])
        scheduler.step()
    assert lrs[0] == pytest.approx(0.01 * 0.001)
    assert lrs[5] == pytest.approx(0.01 * (0.001 * 0.5 + 0.5))
    assert lrs[10] == pytest.approx(0.01) and lrs[59] == pytest.approx(0.01)
    assert lrs[60] == pytest.approx(0.001) and lrs[80] == pytest.approx(0.0001)
    state = scheduler.state_dict()
    fresh = WarmupLRScheduler(torch.optim.SGD([param], lr=0.01), "WarmupMultiStepLR", 100, (60, 80))
    fresh.load_state_dict(state)
    assert fresh.get_last_lr() == pytest.approx([0.0001])


def test_cosine_schedule_and_config_builder():
    cfg = get_cfg()
    cfg.merge_from_list(["SOLVER.LR_SCHEDULER_NAME", "WarmupCosineLR", "SOLVER.MAX_ITER", 100, "SOLVER.BASE_LR",
                         0.1, "SOLVER.WARMUP_ITERS", 0])
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = build_lr_scheduler(cfg, optimizer)
    assert scheduler.multiplier(0) == 1.0
    assert scheduler.multiplier(50) == pytest.approx(0.5)
    assert scheduler.multiplier(100) == pytest.approx(0.0, abs=1e-12)


def test_scale_for_world_size_is_detectron2s_linear_rule():
    cfg = get_cfg()
    cfg.merge_from_list(["SOLVER.REFERENCE_WORLD_SIZE", 8, "SOLVER.IMS_PER_BATCH", 16, "SOLVER.BASE_LR", 0.01,
                         "SOLVER.MAX_ITER", 90000, "SOLVER.STEPS", (60000, 80000), "SOLVER.WARMUP_ITERS", 1000])
    scaled = scale_for_world_size(cfg, 4)
    assert scaled.SOLVER.IMS_PER_BATCH == 8 and scaled.SOLVER.BASE_LR == pytest.approx(0.005)
    assert scaled.SOLVER.MAX_ITER == 180000 and tuple(scaled.SOLVER.STEPS) == (120000, 160000)
    assert scaled.SOLVER.WARMUP_ITERS == 2000 and scaled.SOLVER.REFERENCE_WORLD_SIZE == 4
    unscaled = get_cfg()  # REFERENCE_WORLD_SIZE 0: the rescaling is off and the config comes back as it was
    assert scale_for_world_size(unscaled, 4) is unscaled and unscaled.SOLVER.IMS_PER_BATCH == 16
    assert cfg.SOLVER.IMS_PER_BATCH == 16  # the input config is untouched
