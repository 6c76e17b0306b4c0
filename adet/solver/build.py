"""SGD with detectron2 v0.4's parameter groups (spec section 7), gradient clipping and the LR schedule."""

from __future__ import annotations

import torch
from torch import nn

from adet.errors import ConfigError
from adet.layers import FrozenBatchNorm2d

from .lr_scheduler import WarmupLRScheduler

NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm, nn.InstanceNorm2d,
              nn.LayerNorm, nn.LocalResponseNorm, FrozenBatchNorm2d)


def optimizer_param_groups(model: nn.Module, base_lr: float, weight_decay: float, weight_decay_norm: float,
                           bias_lr_factor: float = 1.0, weight_decay_bias: float | None = None) -> list[dict]:
    """Normalisation weights decay with ``weight_decay_norm``; every parameter named ``bias`` (norm biases too,
    the rule applied after the norm rule) with ``weight_decay_bias`` (None: ``weight_decay``) and lr x
    ``bias_lr_factor``; everything else with ``weight_decay``. Frozen parameters are left out."""
    if weight_decay_bias is None:
        weight_decay_bias = weight_decay
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    seen: set[int] = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            lr, decay = base_lr, weight_decay
            if isinstance(module, NORM_TYPES):
                decay = weight_decay_norm
            if name == "bias":
                lr, decay = base_lr * bias_lr_factor, weight_decay_bias
            groups.setdefault((lr, decay), []).append(param)
    return [{"params": params, "lr": lr, "weight_decay": decay} for (lr, decay), params in groups.items()]


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    solver = cfg.SOLVER
    groups = optimizer_param_groups(model, solver.BASE_LR, solver.WEIGHT_DECAY, solver.WEIGHT_DECAY_NORM,
                                    solver.BIAS_LR_FACTOR, solver.WEIGHT_DECAY_BIAS)
    return torch.optim.SGD(groups, lr=solver.BASE_LR, momentum=solver.MOMENTUM, nesterov=solver.NESTEROV,
                           weight_decay=solver.WEIGHT_DECAY)


def build_lr_scheduler(cfg, optimizer: torch.optim.Optimizer) -> WarmupLRScheduler:
    solver = cfg.SOLVER
    steps = [s for s in solver.STEPS if s <= solver.MAX_ITER]
    end_factor = solver.BASE_LR_END / solver.BASE_LR if solver.BASE_LR else 0.0
    return WarmupLRScheduler(optimizer, solver.LR_SCHEDULER_NAME, solver.MAX_ITER, tuple(steps), solver.GAMMA,
                             solver.WARMUP_ITERS, solver.WARMUP_FACTOR, solver.WARMUP_METHOD, end_factor)


def clip_gradients(cfg, model: nn.Module) -> None:
    """SOLVER.CLIP_GRADIENTS: "value" clips each gradient element, "norm" each parameter's gradient norm,
    "full_model" the norm over all parameters (detectron2's three modes)."""
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if not clip.ENABLED:
        return
    params = [p for p in model.parameters() if p.grad is not None]
    if clip.CLIP_TYPE == "value":
        torch.nn.utils.clip_grad_value_(params, clip.CLIP_VALUE)
    elif clip.CLIP_TYPE == "norm":
        for p in params:
            torch.nn.utils.clip_grad_norm_([p], clip.CLIP_VALUE, clip.NORM_TYPE)
    elif clip.CLIP_TYPE == "full_model":
        torch.nn.utils.clip_grad_norm_(params, clip.CLIP_VALUE, clip.NORM_TYPE)
    else:
        raise ConfigError(f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE must be 'value', 'norm' or 'full_model', got "
                         f"'{clip.CLIP_TYPE}'")


def scale_for_world_size(cfg, world_size: int):
    """detectron2's automatic rescaling: when SOLVER.REFERENCE_WORLD_SIZE > 0 differs from ``world_size``, scale the
    batch and LR linearly and the schedule inversely. Returns a new (unfrozen) config."""
    reference = cfg.SOLVER.REFERENCE_WORLD_SIZE
    if reference == 0 or reference == world_size:
        return cfg
    cfg = cfg.clone()
    was_frozen = cfg.is_frozen()
    cfg.defrost()
    if cfg.SOLVER.IMS_PER_BATCH % reference != 0:
        raise ConfigError(f"SOLVER.IMS_PER_BATCH ({cfg.SOLVER.IMS_PER_BATCH}) must be divisible by "
                         f"SOLVER.REFERENCE_WORLD_SIZE ({reference})")
    scale = world_size / reference
    solver = cfg.SOLVER
    solver.IMS_PER_BATCH = int(round(solver.IMS_PER_BATCH * scale))
    solver.BASE_LR = solver.BASE_LR * scale
    solver.MAX_ITER = int(round(solver.MAX_ITER / scale))
    solver.WARMUP_ITERS = int(round(solver.WARMUP_ITERS / scale))
    solver.STEPS = tuple(int(round(s / scale)) for s in solver.STEPS)
    solver.CHECKPOINT_PERIOD = int(round(solver.CHECKPOINT_PERIOD / scale))
    cfg.TEST.EVAL_PERIOD = int(round(cfg.TEST.EVAL_PERIOD / scale))
    solver.REFERENCE_WORLD_SIZE = world_size
    if was_frozen:
        cfg.freeze()
    return cfg
