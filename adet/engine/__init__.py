from .predictor import DefaultPredictor

__all__ = ["DefaultPredictor"]
