"""What the commands share: the argument parser and the options every command declares the same way. The config
they describe is made by :func:`adet.model_zoo.resolve_config` (the Python API's too), and ``--dataset`` registers
through :func:`adet.data.register_datasets_from_args`."""

from __future__ import annotations

from adet.data import register_datasets_from_args
from adet.engine.arguments import (
    CONFIG_KEY,
    OVERRIDES_HELP,
    ArgumentParser,
    add_config_arguments,
    add_dataset_argument,
    add_launch_arguments,
)
from adet.model_zoo import last_value, resolve_config

__all__ = ["CONFIG_KEY", "OVERRIDES_HELP", "ArgumentParser", "add_config_arguments", "add_dataset_argument",
           "add_launch_arguments", "last_value", "register_datasets_from_args", "resolve_config"]
