"""EmbedMask as one ONNX graph: the network and its detection decoding, with dynamic image size.

The graph (``EmbedMaskONNX``, outside the model as SAM's ONNX wrapper is) is the model's own ``detect``, the one
inference path eager runs and test-time augmentation also take, on one image; the wrapper only adapts the input
layout. What comes before and after runs in Python, in the very functions the PyTorch predictor uses
(``adet/export/predictor.py``):

    inputs   image       (H, W, 3) uint8 BGR, resized (shortest side MIN_SIZE_TEST, longest <= MAX_SIZE_TEST) and
                         padded at the bottom/right to multiples of the model's size divisibility (32)
             image_size  (2,) int64, (h, w) of the resized image before padding
    outputs  boxes       (N, 4) float32 XYXY in network-input pixels
             scores      (N,) float32, sqrt(class probability x centerness)
             classes     (N,) int64 contiguous class ids
             mask_probs  (N, H/8, W/8) float32 coupling probabilities at the pixel embeddings' stride

Why the resize and the mask pasting stay outside: the official models saw images resized by PIL's anti-aliased
bilinear filter on uint8, which ONNX's Resize does not reproduce bit for bit; and pasting full-resolution masks in the
graph would need the original size as a value (data-dependent output shapes) and N x H x W floats (~400 MB for 100
detections at 800x1333), where the predictor pastes each mask only over the rectangle it can reach.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import time
import warnings

import numpy as np
import torch
from torch import nn

from adet.modeling.embedmask import EmbedMask
from adet.structures import padded_size

logger = logging.getLogger(__name__)

INPUT_NAMES = ["image", "image_size"]
TRACE_SIZE = 320
OUTPUT_NAMES = ["boxes", "scores", "classes", "mask_probs"]


class EmbedMaskONNX(nn.Module):
    """A trained :class:`adet.modeling.embedmask.EmbedMask` (in eval mode) as a function of one padded uint8
    image; see the module docstring for inputs and outputs."""

    def __init__(self, model: EmbedMask):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, image_size: torch.Tensor) -> tuple[torch.Tensor, ...]:
        found = self.model.detect(image.permute(2, 0, 1)[None], image_size[None])[0]
        return found.boxes, found.scores, found.classes, found.mask_probs.float()


def padded_input(image: np.ndarray, size_divisibility: int) -> tuple[np.ndarray, tuple[int, int]]:
    """(padded uint8 HWC array, (h, w)): ``image`` (h, w, 3) zero-padded at the bottom/right to multiples of
    ``size_divisibility``, as the model pads its batches."""
    height, width = image.shape[:2]
    padded = np.zeros((*padded_size(height, width, size_divisibility), 3), dtype=np.uint8)
    padded[:height, :width] = image
    return padded, (height, width)


def export_onnx(model: nn.Module, cfg, path: str, sample: np.ndarray, opset: int = 18) -> dict:
    """Export a prepared model (``prepare_for_inference(model, channels_last=False)``) to ``path``; ``sample`` is a
    resized (h, w, 3) uint8 image to trace with. The config, class names and dataset ids go into the file's
    metadata. Returns {"seconds", "bytes"}."""
    import onnx  # optional (the export extra): only an export needs it

    padded, size = padded_input(sample, model.size_divisibility)
    # Traced on a canvas of at least TRACE_SIZE (the padding beyond the image is masked out by image_size): a
    # feature map of size 1 in the trace (P7 of a small image) would be specialised to 1 in the graph.
    canvas = np.zeros((max(padded.shape[0], TRACE_SIZE), max(padded.shape[1], TRACE_SIZE), 3), dtype=np.uint8)
    canvas[: padded.shape[0], : padded.shape[1]] = padded
    image = torch.from_numpy(canvas)
    image_size = torch.tensor(size, dtype=torch.int64)
    wrapper = EmbedMaskONNX(model).eval()
    # Dimensions are multiples of 32: declared so, every feature map's size follows exactly from them. From 160 px
    # every level is at least 2 wide, which the trace assumes; ONNX Runtime runs smaller inputs too (tested).
    divisibility = model.size_divisibility
    height = torch.export.Dim(f"height_{divisibility}", min=5, max=512) * divisibility
    width = torch.export.Dim(f"width_{divisibility}", min=5, max=512) * divisibility
    start = time.perf_counter()
    logger.info("Exporting to ONNX (opset %d): tracing with a %dx%d input", opset, padded.shape[1], padded.shape[0])
    # The exporter prints its progress and torchvision warns about its own deprecations: neither is ours to show.
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        program = torch.onnx.export(wrapper, (image, image_size), None, dynamo=True, opset_version=opset,
                                    input_names=INPUT_NAMES, output_names=OUTPUT_NAMES,
                                    dynamic_shapes={"image": {0: height, 1: width}, "image_size": None},
                                    optimize=True, verbose=False)
    proto = program.model_proto
    metadata = {"embedmask_config": cfg.dump(), "class_names": json.dumps(getattr(model, "class_names", None)),
                "category_ids": json.dumps(getattr(model, "category_ids", None)),
                "size_divisibility": str(divisibility)}
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    temporary = path + ".tmp"
    onnx.save(proto, temporary)
    os.replace(temporary, path)
    return {"seconds": time.perf_counter() - start, "bytes": os.path.getsize(path)}
