from .build import build_lr_scheduler, build_optimizer, clip_gradients, optimizer_param_groups, scale_for_world_size
from .lr_scheduler import WarmupLRScheduler

__all__ = ["WarmupLRScheduler", "build_lr_scheduler", "build_optimizer", "clip_gradients", "optimizer_param_groups",
           "scale_for_world_size"]
