from .config import CfgNode, ConfigError, closest_key, get_cfg

__all__ = ["CfgNode", "ConfigError", "closest_key", "get_cfg"]
