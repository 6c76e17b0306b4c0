"""The inference contract every way of running a model keeps: ``preprocess`` one BGR image into an
:class:`ImageInput`, ``predict_batch`` a list of them into one :class:`Instances` per image, in its original pixels.

The PyTorch model (:class:`ModelBackend`, test-time augmented under TEST.AUG) and ONNX Runtime
(:class:`adet.export.ONNXPredictor`) implement it; slicing (:class:`adet.engine.inference.sliced.SlicedBackend`)
wraps any of them and implements it again; batching over files (``batch_predict``), sharding over processes, the
Python API, ``eval``, video and webcam all call it. A server hands ``predict_batch`` the requests of many clients
and gets one result per request back, in order; a remote backend needs only these two methods and the attributes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np
import torch

from adet.data.image_io import as_color_uint8
from adet.data.transforms import ResizeForTest
from adet.engine.inference.tta import build_tta
from adet.structures import Instances


@dataclass
class ImageInput:
    """One image as a backend takes it: ``image`` (3, h, w) uint8 in the model's channel order, resized for the test
    (a numpy array travels by value between processes; a tensor is fine too), and the size (``height``,
    ``width``) the detections come back in: the original image's."""

    image: np.ndarray | torch.Tensor
    height: int
    width: int

    def as_model_input(self) -> dict:
        """The dict detectron2-style models take."""
        image = torch.from_numpy(self.image) if isinstance(self.image, np.ndarray) else self.image
        return {"image": image, "height": self.height, "width": self.width}


class Backend(Protocol):
    """What runs a model: its config, class names and dataset ids, and the two steps of the contract."""

    cfg: object
    class_names: list[str] | None
    category_ids: list[int] | None
    size_divisibility: int  # inputs of one padded size batch without waste

    def preprocess(self, image_bgr: np.ndarray) -> ImageInput: ...

    def predict_batch(self, batch: Sequence[ImageInput]) -> list[Instances]: ...


def prepare_image(image: np.ndarray, input_format: str, resize: ResizeForTest | None) -> np.ndarray:
    """What every backend feeds the network: an (h, w, 3) uint8 array in the model's channel order
    (``input_format``), resized for the test (unless ``resize`` is None), from an (H, W, 3) BGR array (gray and
    BGRA are accepted too)."""
    image = np.ascontiguousarray(as_color_uint8(image))
    if input_format == "RGB":
        image = image[:, :, ::-1]
    return resize.get_transform(image).apply_image(image) if resize is not None else image


def resize_for_test(cfg) -> ResizeForTest:
    """The test-time resize of ``cfg`` (INPUT.MIN_SIZE_TEST, INPUT.MAX_SIZE_TEST)."""
    return ResizeForTest(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)


def image_input(image_bgr: np.ndarray, input_format: str, resize: ResizeForTest | None) -> ImageInput:
    """The :class:`ImageInput` of a BGR image for a model of ``input_format`` and test-time ``resize``."""
    image_bgr = as_color_uint8(image_bgr)
    prepared = prepare_image(image_bgr, input_format, resize)
    return ImageInput(np.ascontiguousarray(prepared.transpose(2, 0, 1)), image_bgr.shape[0], image_bgr.shape[1])


class ModelBackend:
    """A built, loaded PyTorch EmbedMask in eval mode, run as the config says: resized to the test size, or under
    TEST.AUG.ENABLED test-time augmented (each pass resizes the original itself)."""

    def __init__(self, cfg, model: torch.nn.Module):
        self.cfg = cfg
        self.model = model
        self.input_format = cfg.INPUT.FORMAT
        self.resize: ResizeForTest | None = resize_for_test(cfg)
        self.inference_model = model
        if cfg.TEST.AUG.ENABLED:
            self.inference_model = build_tta(cfg, model)
            self.resize = None
        self.class_names: list[str] | None = model.class_names
        self.category_ids: list[int] | None = model.category_ids
        self.size_divisibility: int = model.size_divisibility

    def preprocess(self, image_bgr: np.ndarray) -> ImageInput:
        return image_input(image_bgr, self.input_format, self.resize)

    def predict_batch(self, batch: Sequence[ImageInput]) -> list[Instances]:
        with torch.inference_mode():
            outputs = self.inference_model([item.as_model_input() for item in batch])
        return [output["instances"] for output in outputs]


class BackendAsModel(torch.nn.Module):
    """A backend called as a detectron2 model (``model(batched_inputs) -> [{"instances": ...}]``), for the evaluation
    loop: each input's ``image`` is what the backend's ``preprocess`` makes (the test loader's mapper resizes, or
    not, to match), ``height`` and ``width`` the original size. ``model`` is the module it runs (its mode and
    device are the evaluation's)."""

    def __init__(self, backend: Backend, model: torch.nn.Module):
        super().__init__()
        self.backend = backend
        self.model = model

    def forward(self, batched_inputs: list[dict]) -> list[dict[str, Instances]]:
        items = [ImageInput(inputs["image"], int(inputs.get("height", inputs["image"].shape[1])),
                            int(inputs.get("width", inputs["image"].shape[2]))) for inputs in batched_inputs]
        return [{"instances": instances} for instances in self.backend.predict_batch(items)]
