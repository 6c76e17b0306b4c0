"""EmbedMask's configs, shipped inside the package as detectron2's model zoo ships its own.

Name a config by its path, or by its packaged name from anywhere: ``EmbedMask/MS_R_50_1x.yaml`` (the source tree's
``configs/`` folder is this package folder, so ``configs/EmbedMask/MS_R_50_1x.yaml`` works as well).
"""

from __future__ import annotations

import difflib
import os

from adet.config import CONFIG_ROOT, CfgNode, get_cfg
from adet.errors import ConfigError


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
