"""``ONNXPredictor``: an exported EmbedMask run by ONNX Runtime, called as :class:`adet.engine.DefaultPredictor`, and
a backend of the inference contract (``adet/engine/inference/backend.py``)."""

from __future__ import annotations

import json
from typing import Sequence

import numpy as np
import torch

from adet.config import CfgNode
from adet.engine.inference.backend import ImageInput, image_input, resize_for_test
from adet.errors import WeightFileError
from adet.modeling.embedmask.postprocess import postprocess
from adet.structures import Boxes, Instances

from .onnx_model import INPUT_NAMES, padded_input


class ONNXPredictor:
    """``predictor(image)`` takes an (H, W, 3) uint8 BGR array (gray and BGRA too) and returns
    ``{"instances": Instances}`` in its pixels, with ``pred_boxes``, ``scores``, ``pred_classes`` and
    ``pred_masks`` (N, H, W) bool, as DefaultPredictor does. The test-time resize before the graph and the mask
    pasting after it are DefaultPredictor's and the model's own code; the config, class names and dataset ids come
    from the file's metadata.

    Args:
        path: a file written by ``embedmask export``.
        providers: ONNX Runtime execution providers (default: CUDA when available, then CPU).
        threads: intra-op threads (default: ONNX Runtime's choice).
    """

    def __init__(self, path: str, providers: list[str] | None = None, threads: int | None = None):
        self._arguments = (path, providers, threads)
        try:
            import onnxruntime as ort  # optional (the export extra): imported when an ONNX model is used
        except ImportError:
            raise WeightFileError("ONNX Runtime is not installed: pip install 'embedmask[export]'") from None
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        available = ort.get_available_providers()
        providers = providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        try:
            self.session = ort.InferenceSession(path, options, providers=providers)
        except Exception as e:  # noqa: BLE001 - ONNX Runtime raises its own types for unreadable files
            raise WeightFileError(f"{path}: not a loadable ONNX model ({str(e).splitlines()[0][:200]})") from None
        metadata = self.session.get_modelmeta().custom_metadata_map
        if "embedmask_config" not in metadata:
            raise WeightFileError(f"{path}: not an EmbedMask export (no embedmask_config in its metadata)")
        self.cfg = CfgNode.load_cfg(metadata["embedmask_config"])
        self.class_names = json.loads(metadata.get("class_names", "null"))
        self.category_ids = json.loads(metadata.get("category_ids", "null"))
        self.size_divisibility = int(metadata.get("size_divisibility", 32))
        self.aug = resize_for_test(self.cfg)
        self.input_format = self.cfg.INPUT.FORMAT

    def __getstate__(self) -> tuple:
        # An ONNX Runtime session cannot be pickled: a spawned process opens the file again, and only such a
        # process (the one that checked the file keeps using its session).
        return self._arguments

    def __setstate__(self, arguments: tuple) -> None:
        self.__init__(*arguments)

    def preprocess(self, image: np.ndarray) -> ImageInput:
        """One BGR image as the graph takes it (resized, in the model's channel order) plus the original size."""
        return image_input(image, self.input_format, self.aug)

    def network_input(self, item: ImageInput) -> tuple[np.ndarray, tuple[int, int]]:
        """(padded (H_pad, W_pad, 3) network input, its unpadded size) of a preprocessed image."""
        image = item.image.numpy() if isinstance(item.image, torch.Tensor) else item.image
        return padded_input(np.ascontiguousarray(image.transpose(1, 2, 0)), self.size_divisibility)

    def detections(self, padded: np.ndarray, size: tuple[int, int]) -> Instances:
        """The graph's detections at network resolution, with ``mask_probs``, as the model's own."""
        boxes, scores, classes, mask_probs = self.run(padded, size)
        return Instances(size, pred_boxes=Boxes(torch.from_numpy(boxes)), scores=torch.from_numpy(scores),
                         pred_classes=torch.from_numpy(classes), mask_probs=torch.from_numpy(mask_probs))

    def run(self, padded: np.ndarray, size: tuple[int, int]) -> list[np.ndarray]:
        """The graph's outputs (boxes, scores, classes, mask_probs) for a padded network input."""
        return self.session.run(None, {INPUT_NAMES[0]: padded, INPUT_NAMES[1]: np.asarray(size, dtype=np.int64)})

    def predict_batch(self, batch: Sequence[ImageInput]) -> list[Instances]:
        """The detections of each input in its original pixels (the graph runs one image at a time)."""
        embedmask, results = self.cfg.MODEL.EMBEDMASK, []
        for item in batch:
            padded, size = self.network_input(item)
            results.append(postprocess(self.detections(padded, size), item.height, item.width, padded.shape[:2],
                                       embedmask.MASK_TH, embedmask.MASK_OUT_STRIDE))
        return results

    def __call__(self, original_image: np.ndarray) -> dict[str, Instances]:
        return {"instances": self.predict_batch([self.preprocess(original_image)])[0]}
