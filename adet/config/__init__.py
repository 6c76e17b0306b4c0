from adet.errors import ConfigError

from .config import CONFIG_ROOT, CfgNode, closest_key, get_config_file, list_configs
from .defaults import get_cfg
from .score_threshold import set_score_threshold

__all__ = ["CONFIG_ROOT", "CfgNode", "ConfigError", "closest_key", "get_cfg", "get_config_file", "list_configs",
           "set_score_threshold"]
