"""``DefaultPredictor``: one image in, detections out, with the config's test-time resize, test-time augmentation
(TEST.AUG) and slicing (TEST.SLICE); a :class:`~adet.engine.inference.backend.Backend` itself."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from adet.checkpoint import DetectionCheckpointer
from adet.data.image_io import check_image_format
from adet.engine.inference.backend import ImageInput, ModelBackend, prepare_image, resize_for_test
from adet.engine.inference.sliced import with_slicing
from adet.modeling import build_model, prepare_for_inference
from adet.structures import Instances

__all__ = ["DefaultPredictor", "prepare_image", "resize_for_test"]


class DefaultPredictor:
    """Build the model from ``cfg``, load ``cfg.MODEL.WEIGHTS`` and run it on single images.

    ``predictor(image)`` takes an (H, W, 3) uint8 BGR array, as ``cv2.imread`` gives (gray and BGRA arrays are
    accepted too; with ``INPUT.FORMAT`` "RGB" the model is fed RGB), and returns ``{"instances": Instances}`` in
    original-image pixels with ``pred_boxes`` (Boxes, XYXY), ``scores`` (N,), ``pred_classes`` (N,) and
    ``pred_masks`` (N, H, W; held as crops, :class:`adet.structures.LocalMasks`). With ``TEST.AUG.ENABLED`` the
    predictions are test-time augmented; with ``TEST.SLICE.ENABLED`` the image is predicted in overlapping tiles
    (each tile test-time augmented too when both are on). ``preprocess`` and ``predict_batch`` are the backend
    contract (``adet/engine/inference/backend.py``).
    """

    def __init__(self, cfg):
        check_image_format(cfg.INPUT.FORMAT)
        self.cfg = cfg.clone()
        self.model = build_model(self.cfg)
        DetectionCheckpointer(self.model).load(cfg.MODEL.WEIGHTS)
        prepare_for_inference(self.model)
        self.backend = with_slicing(ModelBackend(self.cfg, self.model), self.cfg.TEST.SLICE)
        self.input_format = cfg.INPUT.FORMAT
        self.aug = self.backend.resize if isinstance(self.backend, ModelBackend) else None
        # Class names and the dataset's category id of each class, saved with the weights (ours carry them)
        self.class_names: list[str] | None = self.model.class_names
        self.category_ids: list[int] | None = self.model.category_ids
        self.size_divisibility: int = self.backend.size_divisibility

    def preprocess(self, image: np.ndarray) -> ImageInput:
        """One BGR image as the model takes it (resized, in its channel order) plus the original size."""
        return self.backend.preprocess(image)

    def predict_batch(self, batch: Sequence[ImageInput]) -> list[Instances]:
        """The detections of each input, in its original pixels."""
        return self.backend.predict_batch(batch)

    def __call__(self, original_image: np.ndarray) -> dict[str, Instances]:
        with torch.inference_mode():
            return {"instances": self.predict_batch([self.preprocess(original_image)])[0]}
