"""The Python API: a model from a checkpoint in one call, predictions on paths, PIL images or arrays.

    import adet
    model = adet.load("output/embedmask_synthetic/model_final.pth")  # our checkpoints carry their config
    result = model("image.jpg")                                     # or a PIL image, or an array (format="BGR")
    print(result.class_names, result.scores, result.boxes)           # and .masks, .polygons, .category_ids
    result.save("drawn.jpg"); coco_results = result.to_json()

Official checkpoints carry no config: ``adet.load("models/EmbedMask_R_50_1x.pth", config="EmbedMask/MS_R_50_1x.yaml")``.
A config alone (``adet.load("EmbedMask/Synthetic.yaml")``) gives its untrained model. Training, evaluation and export
as Ultralytics has them (``training_api.py``):

    model.add_callback("on_fit_epoch_end", lambda trainer: print(trainer.iter, trainer.last_results))
    model.train(data={"train": ("train.json", "images/"), "val": "my_val"}, iterations=2000, batch=8)
    metrics = model.val(data="my_val")                              # {"bbox": {...}, "segm": {"AP": ...}}
    model.export("model.onnx")
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import cv2
import numpy as np
import torch

from adet import training_api
from adet.config import CfgNode, set_score_threshold
from adet.data import MetadataCatalog
from adet.data.image_io import as_color_uint8, image_id_from_name, read_image
from adet.engine import DefaultPredictor
from adet.engine.evaluate import single_dataset_results
from adet.engine.inference.remote import RemoteBackend, is_server_url
from adet.engine.inference.sliced import slice_overrides, sliced
from adet.engine.training.hooks import Callbacks
from adet.evaluation import instances_to_coco_json
from adet.export import ONNXPredictor
from adet.model_zoo import resolve_config
from adet.structures import Instances, LocalMasks
from adet.structures.masks import mask_to_polygons
from adet.utils.visualizer import class_label, draw_instance_predictions


def load_config(weights: str = "", config: str | None = None, overrides: Sequence[Any] = (),
                device: str | None = None) -> CfgNode:
    """The config for ``weights``: ``config`` (a file or packaged name) if given, else the one the checkpoint
    carries, else the released model's (:func:`adet.config.get_cfg`); then ``overrides`` (KEY VALUE ..., the last
    of a key wins). ``weights`` becomes MODEL.WEIGHTS when given (otherwise the overrides' or the config's).
    ``device`` None: CUDA when available, else the CPU (unless an override sets MODEL.DEVICE)."""
    return resolve_config(config or "", weights, overrides, device or "auto")


class Prediction:
    """The detections of one image, in its pixels.

    Attributes: ``boxes`` (N, 4) float32 XYXY, ``scores`` (N,) (sqrt(class x centerness) probabilities),
    ``class_ids`` (N,) contiguous 0..K-1, ``class_names`` (N names), ``category_ids`` (N,) the dataset's ids (COCO ids
    for COCO models), ``masks`` (N, H, W) bool (pasted when read; ``local_masks`` holds them as crops), ``polygons``
    (per instance, a list of flat [x0, y0, x1, y1, ...] outlines on the pixels' edges), ``instances`` (the model's
    Instances), ``image`` (the input as BGR uint8).
    """

    def __init__(self, instances: Instances, image_bgr: np.ndarray, class_names: list[str] | None,
                 category_ids: list[int] | None, source: str = ""):
        self.instances = instances
        self.image = image_bgr
        self.source = source
        self.boxes = instances.pred_boxes.tensor.numpy().astype(np.float32)
        self.scores = instances.scores.numpy().astype(np.float32)
        self.class_ids = instances.pred_classes.numpy().astype(np.int64)
        self._all_names = class_names
        self._all_ids = category_ids
        self._polygons: list[list[list[float]]] | None = None

    def __len__(self) -> int:
        return len(self.scores)

    def __getitem__(self, index) -> Prediction:
        """The detections ``index`` selects (an int array, a bool array over the detections, or a slice), on the
        same image: ``prediction[prediction.scores >= 0.7]``."""
        if isinstance(index, np.ndarray):
            index = torch.from_numpy(index)
        return Prediction(self.instances[index], self.image, self._all_names, self._all_ids, self.source)

    def __repr__(self) -> str:
        return f"Prediction({len(self)} instances: {', '.join(self.class_names[:8])}{'...' if len(self) > 8 else ''})"

    @property
    def class_names(self) -> list[str]:
        return [class_label(int(c), self._all_names) for c in self.class_ids]

    @property
    def category_ids(self) -> np.ndarray:
        if self._all_ids is None:
            return self.class_ids.copy()
        return np.array([self._all_ids[c] for c in self.class_ids], dtype=np.int64)

    @property
    def masks(self) -> np.ndarray:
        """(N, H, W) bool full-size masks (pasted from their crops when first read)."""
        if not self.instances.has("pred_masks"):
            return np.zeros((len(self), *self.instances.image_size), bool)
        return self.instances.pred_masks.numpy().astype(bool, copy=False)

    @property
    def local_masks(self) -> LocalMasks:
        """The masks as crops plus offsets (what the outlines, the RLEs and drawing use)."""
        if not self.instances.has("pred_masks"):
            return LocalMasks([], [], self.instances.image_size)
        return LocalMasks.of(self.instances)

    @property
    def polygons(self) -> list[list[list[float]]]:
        """Per instance, its outer outlines on the pixels' edges (rasterised back, they give the mask)."""
        if self._polygons is None:
            self._polygons = [mask_to_polygons(crop, (top, left)) for crop, top, left in
                              self.local_masks.numpy_crops()]
        return self._polygons

    def to_json(self, image_id: int | str | None = None) -> list[dict]:
        """COCO results: ``image_id``, ``category_id`` (dataset id), ``bbox`` XYWH, ``score``, ``segmentation`` RLE;
        plus ``category_name``. ``image_id`` None: the numeric stem of the source file, else its name."""
        if image_id is None:
            image_id = image_id_from_name(self.source) if self.source else 0
        results = instances_to_coco_json(self.instances, image_id)
        for record, category, name in zip(results, self.category_ids.tolist(), self.class_names):
            record["category_id"] = int(category)
            record["category_name"] = name
        return results

    def draw(self) -> np.ndarray:
        """The image (BGR uint8, as cv2 uses) with masks, boxes and "name score%" labels drawn."""
        return draw_instance_predictions(self.image, self.instances, self._all_names)

    def save(self, path: str) -> str:
        """Write :meth:`draw` to ``path`` (format from the extension)."""
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if not cv2.imwrite(path, self.draw()):
            raise OSError(f"{path}: could not write the image (unknown extension or unwritable location)")
        return path


class Model:
    """The model facade ``adet.load`` returns: it predicts (``model(image)`` -> :class:`Prediction`, ``model([a, b])``
    -> a list), trains (:meth:`train`), evaluates (:meth:`val`) and exports (:meth:`export`), as Ultralytics' YOLO.

    ``image``: a file path, a PIL image, or an (H, W, 3) uint8 array whose channel order ``format`` states ("BGR", as
    cv2 reads, by default; "RGB" as PIL and matplotlib use). Built from a config (run by PyTorch) or from a
    backend of the inference contract (``adet/engine/inference/backend.py``), e.g. an
    :class:`adet.export.ONNXPredictor`. ``min_score`` drops detections
    scoring lower (applied to the backend's output; the PyTorch backend can also take it as its threshold).
    """

    def __init__(self, cfg_or_backend, min_score: float = 0.0):
        self.min_score = min_score
        self.callbacks: dict[str, list] = {}
        self.trainer = None  # the DefaultTrainer of the last train()
        self._use(cfg_or_backend)

    def _use(self, cfg_or_backend) -> None:
        self.predictor = DefaultPredictor(cfg_or_backend) if isinstance(cfg_or_backend, CfgNode) else cfg_or_backend
        self.cfg = cfg = self.predictor.cfg
        self.class_names = self.predictor.class_names or _dataset_metadata(cfg, "thing_classes")
        self.category_ids = self.predictor.category_ids
        if self.category_ids is None and self.class_names is not None:
            id_map = _dataset_metadata(cfg, "thing_dataset_id_to_contiguous_id")
            if id_map and len(id_map) == len(self.class_names):
                self.category_ids = [k for k, _ in sorted(id_map.items(), key=lambda kv: kv[1])]

    def _pytorch_config(self, what: str) -> CfgNode:
        if not isinstance(self.predictor, DefaultPredictor):
            raise TypeError(f"{what} needs a PyTorch model: adet.load() the .pth checkpoint, not the exported file")
        return self.predictor.cfg

    def add_callback(self, event: str, function) -> None:
        """Run ``function(trainer)`` at ``event`` of the next :meth:`train` (Ultralytics' event names, see
        :data:`adet.engine.training.hooks.CALLBACK_EVENTS`)."""
        Callbacks().add(event, function)  # an unknown event is an error now, not at train()
        self.callbacks.setdefault(event, []).append(function)

    def train(self, data, resume: bool = False, **overrides) -> dict:
        """Train from these weights on ``data`` (see ``adet.training_api``), in this process; afterwards this
        object predicts with the trained weights (OUTPUT_DIR/model_final.pth). Returns the last evaluation."""
        self.trainer, trained = training_api.train(self._pytorch_config("train"), data, self.callbacks, resume,
                                                   overrides)
        self._use(trained)
        return single_dataset_results(self.trainer.last_results)

    def val(self, data=None, **overrides) -> dict:
        """COCO results ({"bbox": {...}, "segm": {...}}) on ``data`` (default: the config's DATASETS.TEST)."""
        return training_api.val(self._pytorch_config("val"), self.predictor.model, data, overrides)

    def export(self, path: str, int8: bool = False, calibration=None, opset: int = 18, check: bool = True) -> str:
        """An ONNX file of these weights (``embedmask export``); ``int8`` needs a ``calibration`` dataset."""
        return training_api.export(self._pytorch_config("export"), path, int8, calibration, opset, check)

    def __call__(self, images, format: str = "BGR"):
        if isinstance(images, (list, tuple)):
            return [self.predict(image, format) for image in images]
        return self.predict(images, format)

    def predict(self, image, format: str = "BGR") -> Prediction:
        bgr, source = as_bgr(image, format)
        instances = self.predictor.predict_batch([self.predictor.preprocess(bgr)])[0].to("cpu")
        if self.min_score > 0:
            instances = instances[instances.scores >= self.min_score]
        return Prediction(instances, bgr, self.class_names, self.category_ids, source)


def load(weights: str, config: str | None = None, device: str | None = None, confidence: float | None = None,
         overrides: Sequence[Any] = (), slice: tuple[int, int] | None = None, overlap: float | None = None) -> Model:
    """A :class:`Model` for a checkpoint (its own config, or ``config``: a file or packaged name), for an
    exported ``.onnx`` file (run by ONNX Runtime; ``config`` and ``overrides`` do not apply to it), or for the model
    an ``embedmask serve`` runs at an ``http(s)://host:port`` address (the same predictions, computed there; an
    address ending in a weight-file suffix or with ``#sha256=`` is weights to download instead).
    ``confidence``: keep detections whose score is at least this (default: the config's 0.05 on class x centerness,
    i.e. scores from 0.22). ``slice`` (h, w): predict in overlapping tiles of that size (``overlap`` a fraction of a
    tile, default TEST.SLICE.OVERLAP), for images much larger than the model's input; the same as the overrides
    TEST.SLICE.ENABLED True TEST.SLICE.SIZE (h, w)."""
    slicing = slice_overrides(slice, overlap) if slice is not None else []
    if is_server_url(str(weights)):  # an EmbedMask server (embedmask serve): the model runs there
        if config is not None or overrides or device not in (None, "cpu"):
            raise ValueError(f"{weights}: a served model runs as its server configured it; config, overrides and "
                             "device do not apply to it")
        return Model(sliced(RemoteBackend(str(weights), confidence), slicing))
    if str(weights).endswith(".onnx"):
        providers = ["CPUExecutionProvider"] if device == "cpu" else None
        return Model(sliced(ONNXPredictor(str(weights), providers), slicing), min_score=confidence or 0.0)
    if str(weights).endswith((".yaml", ".yml")) and config is None:  # a config alone: its (untrained) model
        weights, config = "", str(weights)
    cfg = load_config(weights, config, [*overrides, *slicing], device)
    if confidence is None:
        return Model(cfg)
    cfg.defrost()
    left_to_filter = set_score_threshold(cfg, confidence, "confidence")
    return Model(cfg, min_score=left_to_filter)


def as_bgr(image, format: str = "BGR") -> tuple[np.ndarray, str]:
    """(H, W, 3) uint8 BGR and a source name from a path, a PIL image or an array in ``format``."""
    if format not in ("BGR", "RGB"):
        raise ValueError(f"format must be 'BGR' or 'RGB', got {format!r}")
    if isinstance(image, (str, os.PathLike)):
        return read_image(os.fspath(image), format="BGR"), os.fspath(image)
    if type(image).__module__.startswith("PIL."):
        return np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1]), getattr(image, "filename", "")
    if isinstance(image, np.ndarray):
        image = as_color_uint8(image)
        return (np.ascontiguousarray(image[:, :, ::-1]) if format == "RGB" else image), ""
    raise TypeError(f"expected a file path, a PIL image or an (H, W, 3) uint8 array, got {type(image).__name__}")


def _dataset_metadata(cfg: CfgNode, key: str):
    for name in list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN):
        value = MetadataCatalog.get(name).get(key)
        if value is not None:
            return value
    return None


Predictor = Model  # its earlier name, kept for scripts that use it

__all__ = ["Model", "Prediction", "Predictor", "as_bgr", "image_id_from_name", "load", "load_config",
           "mask_to_polygons"]
