"""``DefaultPredictor``: one image in, detections out, with the config's test-time resize."""

from __future__ import annotations

import numpy as np
import torch

from adet.checkpoint import DetectionCheckpointer
from adet.data.image_io import as_color_uint8, check_image_format
from adet.data.transforms import ResizeForTest
from adet.engine.inference.tta import build_tta
from adet.modeling import build_model, prepare_for_inference
from adet.structures import Instances


def prepare_image(image: np.ndarray, input_format: str, resize: ResizeForTest | None) -> np.ndarray:
    """What every predictor feeds the network: an (h, w, 3) uint8 array in the model's channel order
    (``input_format``), resized for the test (unless ``resize`` is None), from an (H, W, 3) BGR array (gray and
    BGRA are accepted too)."""
    image = np.ascontiguousarray(as_color_uint8(image))
    if input_format == "RGB":
        image = image[:, :, ::-1]
    return resize.get_transform(image).apply_image(image) if resize is not None else image


def resize_for_test(cfg) -> ResizeForTest:
    """The test-time resize of ``cfg`` (INPUT.MIN_SIZE_TEST, INPUT.MAX_SIZE_TEST)."""
    return ResizeForTest(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)


class DefaultPredictor:
    """Build the model from ``cfg``, load ``cfg.MODEL.WEIGHTS`` and run it on single images.

    ``predictor(image)`` takes an (H, W, 3) uint8 BGR array, as ``cv2.imread`` gives (gray and BGRA arrays are
    accepted too; with ``INPUT.FORMAT`` "RGB" the model is fed RGB), and returns ``{"instances": Instances}`` in
    original-image pixels with ``pred_boxes`` (Boxes, XYXY), ``scores`` (N,), ``pred_classes`` (N,) and
    ``pred_masks`` (N, H, W). With ``TEST.AUG.ENABLED`` the predictions are test-time augmented.
    """

    def __init__(self, cfg):
        check_image_format(cfg.INPUT.FORMAT)
        self.cfg = cfg.clone()
        self.model = build_model(self.cfg)
        DetectionCheckpointer(self.model).load(cfg.MODEL.WEIGHTS)
        prepare_for_inference(self.model)
        self.inference_model = self.model
        self.aug: ResizeForTest | None = resize_for_test(cfg)
        if cfg.TEST.AUG.ENABLED:
            self.inference_model = build_tta(cfg, self.model)
            self.aug = None  # every pass resizes the original itself
        self.input_format = cfg.INPUT.FORMAT

    @property
    def class_names(self) -> list[str] | None:
        """Class names saved with the weights (our checkpoints carry them), else None."""
        return self.model.class_names

    @property
    def category_ids(self) -> list[int] | None:
        """The dataset's category id of each class, saved with the weights (ours carry them), else None."""
        return self.model.category_ids

    def preprocess(self, image: np.ndarray) -> dict:
        """The model's input dict for one image: the resized (3, h, w) uint8 image plus the original size."""
        image = as_color_uint8(image)
        height, width = image.shape[:2]
        prepared = prepare_image(image, self.input_format, self.aug)
        return {"image": torch.from_numpy(np.ascontiguousarray(prepared.transpose(2, 0, 1))), "height": height,
                "width": width}

    def __call__(self, original_image: np.ndarray) -> dict[str, Instances]:
        with torch.inference_mode():
            return self.inference_model([self.preprocess(original_image)])[0]
