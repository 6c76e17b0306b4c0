"""int8 EmbedMask for CPUs: static QDQ quantization of an exported graph with ONNX Runtime, calibrated on images.

What is quantized: every convolution of the backbone, the FPN and the FCOS towers and predictors (per-channel int8
weights, uint8 activations from min/max calibration). What stays float32: the proposal and pixel embedding heads,
whose outputs (embeddings and margins) enter the coupling's exponent, where an 8-bit step in a margin changes every
mask probability of its proposal; and everything that is not a convolution (decoding, NMS, the coupling itself).
Deployment CPUs with VNNI (AVX512-VNNI, AVX-VNNI) run int8 dot products at several times the float32 rate.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator

import numpy as np

from .onnx_model import INPUT_NAMES

logger = logging.getLogger(__name__)

# Parameter-name prefixes (the exporter names a convolution's weight after its module) that stay float32.
FLOAT_MODULES = ("model.proposal_head.", "model.pixel_head.")


def float_convolutions(model_proto) -> list[str]:
    """Names of the Conv nodes whose weights belong to :data:`FLOAT_MODULES`."""
    return [node.name for node in model_proto.graph.node
            if node.op_type == "Conv" and len(node.input) > 1 and node.input[1].startswith(FLOAT_MODULES)]


def _calibration_reader(inputs: Iterable[tuple[np.ndarray, tuple[int, int]]]):
    from onnxruntime.quantization import CalibrationDataReader  # optional (the export extra)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items: Iterator = iter(inputs)
            self.count = 0

        def get_next(self) -> dict | None:
            item = next(self.items, None)
            if item is None:
                return None
            self.count += 1
            padded, size = item
            return {INPUT_NAMES[0]: padded, INPUT_NAMES[1]: np.asarray(size, dtype=np.int64)}

    return Reader()


def quantize_int8(float_path: str, int8_path: str, inputs: Iterable[tuple[np.ndarray, tuple[int, int]]]) -> dict:
    """Write the int8 version of the exported ``float_path`` to ``int8_path`` (atomically), calibrated on
    ``inputs``: (padded uint8 network input, (h, w)) pairs as :meth:`ONNXPredictor.preprocess` makes them. The
    float file's metadata (config, classes) is kept. Returns {"seconds", "bytes", "images", "float_nodes"}."""
    import onnx  # optional (the export extra)
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static  # (optional)

    start = time.perf_counter()
    model = onnx.load(float_path)
    keep_float = float_convolutions(model)
    reader = _calibration_reader(inputs)
    temporary = int8_path + ".tmp"
    quantize_static(float_path, temporary, reader, quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv"],
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    # (min/max calibration keeps per-tensor reductions of each image, not the tensors: small)
                    nodes_to_exclude=keep_float, calibrate_method=CalibrationMethod.MinMax)
    if reader.count == 0:
        os.remove(temporary)
        raise ValueError("no calibration images")
    quantized = onnx.load(temporary)
    del quantized.metadata_props[:]
    quantized.metadata_props.extend(model.metadata_props)
    entry = quantized.metadata_props.add()
    entry.key, entry.value = "quantization", f"int8 static QDQ, calibrated on {reader.count} images"
    onnx.save(quantized, temporary)
    os.replace(temporary, int8_path)
    return {"seconds": time.perf_counter() - start, "bytes": os.path.getsize(int8_path), "images": reader.count,
            "float_nodes": len(keep_float)}
