"""EmbedMask as an ONNX graph (``onnx_model.py``) and its ONNX Runtime predictor (``predictor.py``)."""

from .checked import export_model
from .onnx_model import EmbedMaskONNX, export_onnx
from .predictor import ONNXPredictor

__all__ = ["EmbedMaskONNX", "ONNXPredictor", "export_model", "export_onnx"]
