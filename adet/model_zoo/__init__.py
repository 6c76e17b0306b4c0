"""EmbedMask's configs, shipped inside the package as detectron2's model zoo ships its own.

Name a config by its path, or by its packaged name from anywhere: ``EmbedMask/MS_R_50_1x.yaml`` (the source tree's
``configs/`` folder is this package folder, so ``configs/EmbedMask/MS_R_50_1x.yaml`` works as well).
"""

from __future__ import annotations

import os

import torch

from adet.checkpoint import DetectionCheckpointer
from adet.config import CfgNode, get_cfg, get_config_file, list_configs
from adet.modeling import build_model

from .resolve import last_value, resolve_config

__all__ = ["get", "get_checkpoint_url", "get_config", "get_config_file", "last_value", "list_configs", "resolve_config"]


def get_config(name: str) -> CfgNode:
    """A fresh config with the named packaged config (or config file) merged in."""
    cfg = get_cfg()
    cfg.merge_from_file(get_config_file(name))
    return cfg


def get_checkpoint_url(name: str) -> str:
    """Where the released weights of a packaged config are looked for: ``models/EmbedMask_R_50_1x.pth`` for
    ``EmbedMask/MS_R_50_1x.yaml`` (the official files are not on a public download server: put them in models/)."""
    stem = os.path.splitext(os.path.basename(get_config_file(name)))[0]
    return os.path.join("models", f"EmbedMask_{stem[3:] if stem.startswith('MS_') else stem}.pth")


def get(name: str, trained: bool = False, device: str | None = None):
    """The model of a packaged config, in eval mode: with random weights, or (``trained``) its released weights
    (:func:`get_checkpoint_url`, resolved as MODEL.WEIGHTS is)."""
    cfg = get_config(name)
    if device is not None:
        cfg.MODEL.DEVICE = device
    elif not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    if trained:
        DetectionCheckpointer(model).load(get_checkpoint_url(name))
    return model.eval()
