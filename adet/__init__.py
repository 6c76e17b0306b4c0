"""EmbedMask: Embedding Coupling for One-stage Instance Segmentation, in an AdelaiDet/detectron2-style package."""

from .api import Prediction, Predictor, load
from .version import __version__

__all__ = ["Prediction", "Predictor", "__version__", "load"]
