"""The engine, by concern: ``training/`` (the trainer, hooks, metrics, trackers), ``inference/`` (the predictor,
batched, sliced and TTA prediction, the prediction store) and ``distributed/`` (launch, SLURM, stop signals, the
OUTPUT_DIR claim); here, what detectron2 scripts import from ``detectron2.engine``."""

import sys

from .defaults import default_argument_parser, default_setup
from .distributed import launch as _launch_module
from .inference.predictor import DefaultPredictor
from .training import hooks
from .training.hooks import Callbacks, EarlyStopping, HookBase, ValidationLoss
from .training.trainer import DefaultTrainer

launch = _launch_module.launch
# detectron2's module paths (``from detectron2.engine.hooks import HookBase``, ``...engine.launch import launch``)
sys.modules[__name__ + ".hooks"] = hooks
sys.modules[__name__ + ".launch"] = _launch_module

__all__ = ["Callbacks", "DefaultPredictor", "DefaultTrainer", "EarlyStopping", "HookBase", "ValidationLoss",
           "default_argument_parser", "default_setup", "hooks", "launch"]
