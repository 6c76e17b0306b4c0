"""``DefaultPredictor``: one image in, detections out, with the config's test-time resize."""

from __future__ import annotations

import numpy as np
import torch

from adet.checkpoint import DetectionCheckpointer
from adet.data.image_io import as_color_uint8
from adet.data.transforms import ResizeShortestEdge
from adet.modeling import build_model, prepare_for_inference
from adet.modeling.embedmask.tta import build_tta
from adet.structures import Instances


class DefaultPredictor:
    """Build the model from ``cfg``, load ``cfg.MODEL.WEIGHTS`` and run it on single images.

    ``predictor(image)`` takes an (H, W, 3) uint8 BGR array, as ``cv2.imread`` gives (gray and BGRA arrays are
    accepted too; with ``INPUT.FORMAT`` "RGB" the model is fed RGB), and returns ``{"instances": Instances}`` in
    original-image pixels with ``pred_boxes`` (Boxes, XYXY), ``scores`` (N,), ``pred_classes`` (N,) and
    ``pred_masks`` (N, H, W). With ``TEST.AUG.ENABLED`` the predictions are test-time augmented.
    """

    def __init__(self, cfg):
        self.cfg = cfg.clone()
        self.model = build_model(self.cfg)
        DetectionCheckpointer(self.model).load(cfg.MODEL.WEIGHTS)
        prepare_for_inference(self.model)
        self.inference_model = self.model
        self.aug = ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST)
        if cfg.TEST.AUG.ENABLED:
            self.inference_model = build_tta(cfg, self.model)
            self.aug = None  # every pass resizes the original itself
        self.input_format = cfg.INPUT.FORMAT
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT must be 'RGB' or 'BGR', got '{self.input_format}'")

    @property
    def class_names(self) -> list[str] | None:
        """Class names saved with the weights (our checkpoints carry them), else None."""
        return self.model.class_names

    @property
    def category_ids(self) -> list[int] | None:
        """The dataset's category id of each class, saved with the weights (ours carry them), else None."""
        return self.model.category_ids

    def preprocess(self, image: np.ndarray) -> dict:
        """The model's input dict for one image: resized (3, h, w) float32 BGR plus the original size."""
        image = np.ascontiguousarray(as_color_uint8(image))
        if self.input_format == "RGB":
            image = image[:, :, ::-1]
        height, width = image.shape[:2]
        resized = self.aug.get_transform(image).apply_image(image) if self.aug is not None else image
        tensor = torch.as_tensor(resized.astype("float32").transpose(2, 0, 1))
        return {"image": tensor, "height": height, "width": width}

    def __call__(self, original_image: np.ndarray) -> dict[str, Instances]:
        with torch.inference_mode():
            return self.inference_model([self.preprocess(original_image)])[0]
