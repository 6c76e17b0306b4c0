from adet.errors import ConfigError

from .config import CONFIG_ROOT, CfgNode, closest_key
from .defaults import get_cfg

__all__ = ["CONFIG_ROOT", "CfgNode", "ConfigError", "closest_key", "get_cfg"]
