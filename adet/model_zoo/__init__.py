"""EmbedMask's configs, shipped inside the package as detectron2's model zoo ships its own.

Name a config by its path, or by its packaged name from anywhere: ``EmbedMask/MS_R_50_1x.yaml`` (the source tree's
``configs/`` folder is this package folder, so ``configs/EmbedMask/MS_R_50_1x.yaml`` works as well).
"""

from __future__ import annotations

import difflib
import os

import torch

from adet.checkpoint import DetectionCheckpointer
from adet.config import CONFIG_ROOT, CfgNode, get_cfg
from adet.errors import ConfigError
from adet.modeling import build_model


def list_configs() -> list[str]:
    """Packaged config names, e.g. ``EmbedMask/MS_R_50_1x.yaml``."""
    names = []
    for folder, _, files in os.walk(CONFIG_ROOT):
        names += [os.path.relpath(os.path.join(folder, f), CONFIG_ROOT) for f in files if f.endswith(".yaml")]
    return sorted(n.replace(os.sep, "/") for n in names)


def get_config_file(name: str) -> str:
    """The file of a config given as a path or a packaged name; ConfigError naming the closest one if neither."""
    if os.path.isfile(name):
        return name
    packaged = name.replace("\\", "/")
    for prefix in ("configs/", "./configs/"):
        if packaged.startswith(prefix):
            packaged = packaged[len(prefix):]
    candidate = os.path.join(CONFIG_ROOT, packaged)
    if os.path.isfile(candidate):
        return candidate
    if os.path.isdir(name) or os.path.isdir(candidate):
        raise ConfigError(f"--config-file {name}: is a folder, not a config file")
    known = list_configs()
    hint = difflib.get_close_matches(packaged, known, n=1, cutoff=0.5)
    suggestion = f" (did you mean '{hint[0]}'?)" if hint else f"; packaged configs: {', '.join(known)}"
    raise ConfigError(f"--config-file {name}: no such file, and not a packaged config{suggestion}")


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
