from .defaults import default_argument_parser, default_setup
from .hooks import Callbacks, EarlyStopping, HookBase, ValidationLoss
from .launch import launch
from .predictor import DefaultPredictor
from .trainer import DefaultTrainer

__all__ = ["Callbacks", "DefaultPredictor", "DefaultTrainer", "EarlyStopping", "HookBase", "ValidationLoss",
           "default_argument_parser", "default_setup", "launch"]
