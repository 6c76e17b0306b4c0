"""``DatasetMapper``: one dataset dict -> the model's input dict (image tensor, sizes, and in training the
augmented ground truth as Instances)."""

from __future__ import annotations

import copy
import logging

import numpy as np
import pycocotools.mask as mask_util
import torch

from adet.errors import ImageSizeError
from adet.structures import BitMasks, Boxes, BoxMode, Instances, PolygonMasks, polygons_to_bitmask, segmentation_to_rle

from .image_io import read_image
from .transforms import HFlipTransform, ResizeForTest, ResizeShortestEdge, TransformList

logger = logging.getLogger(__name__)


def _xyxy(obj: dict) -> np.ndarray:
    box = np.asarray(obj["bbox"], dtype=np.float64)
    if obj.get("bbox_mode", BoxMode.XYWH_ABS) == BoxMode.XYWH_ABS:
        box = np.array([box[0], box[1], box[0] + box[2], box[1] + box[3]])
    return box


def transform_annotation(obj: dict, transforms: TransformList, image_size: tuple[int, int]) -> dict:
    """Apply the image's transforms to one annotation: box (clipped to the image), polygons or RLE mask."""
    height, width = image_size
    box = transforms.apply_box(_xyxy(obj)[None])[0]
    obj = dict(obj, bbox=np.minimum(np.maximum(box, 0), [width, height, width, height]), bbox_mode=BoxMode.XYXY_ABS)
    segmentation = obj.get("segmentation")
    if isinstance(segmentation, list):
        obj["segmentation"] = transforms.apply_polygons([np.asarray(p, dtype=np.float64) for p in segmentation])
    elif isinstance(segmentation, dict):
        rle = segmentation_to_rle(segmentation, *segmentation["size"])
        obj["segmentation"] = transforms.apply_segmentation(mask_util.decode(rle))
    return obj


def annotations_to_instances(annotations: list[dict], image_size: tuple[int, int], mask_format: str = "polygon"
                             ) -> Instances:
    """Transformed annotations -> Instances with ``gt_boxes``, ``gt_classes`` and ``gt_masks``."""
    instances = Instances(image_size)
    boxes = np.array([a["bbox"] for a in annotations], dtype=np.float32).reshape(-1, 4)
    instances.gt_boxes = Boxes(torch.from_numpy(boxes))
    instances.gt_classes = torch.tensor([a["category_id"] for a in annotations], dtype=torch.int64)
    if annotations and all("segmentation" in a for a in annotations):
        segmentations = [a["segmentation"] for a in annotations]
        if all(isinstance(s, list) for s in segmentations) and mask_format == "polygon":
            instances.gt_masks = PolygonMasks(segmentations)
        else:
            height, width = image_size
            masks = [_as_bitmask(s, height, width) for s in segmentations]
            instances.gt_masks = BitMasks(torch.from_numpy(np.stack(masks)))
    return instances


def _as_bitmask(segmentation, height: int, width: int) -> np.ndarray:
    """A transformed annotation's mask: already a bitmap (from RLE), or polygons."""
    if isinstance(segmentation, np.ndarray):
        return segmentation.astype(bool)
    return polygons_to_bitmask(segmentation, height, width)


def filter_empty_instances(instances: Instances, box_threshold: float = 1e-5) -> Instances:
    """Drop instances whose box has a side <= ``box_threshold`` or whose mask is empty."""
    keep = instances.gt_boxes.nonempty(threshold=box_threshold)
    if instances.has("gt_masks"):
        keep &= instances.gt_masks.nonempty()
    return instances[keep]


class DatasetMapper:
    """Reads the image (BGR), resizes it (and in training flips it with probability 0.5), and converts the
    annotations. Output: ``image`` (3, h, w) uint8 tensor, ``height``/``width`` of the original, ``image_id``,
    ``file_name`` and, in training, ``instances``. ``DatasetMapper(cfg, is_train)`` is :meth:`from_config`, as
    detectron2 users write it."""

    def __init__(self, resize: ResizeShortestEdge | ResizeForTest | None, is_train: bool, image_format: str = "BGR",
                 horizontal_flip: bool = False, mask_format: str = "polygon", seed: int | None = None):
        if hasattr(resize, "INPUT"):  # a config
            self.__dict__.update(vars(DatasetMapper.from_config(resize, is_train, seed)))
            return
        self.resize = resize
        self.is_train = is_train
        self.image_format = image_format
        self.horizontal_flip = horizontal_flip
        self.mask_format = mask_format
        self.rng = np.random.default_rng(seed)

    @classmethod
    def from_config(cls, cfg, is_train: bool, seed: int | None = None) -> DatasetMapper:
        if is_train:
            resize = ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN,
                                        cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING)
        elif cfg.TEST.AUG.ENABLED or cfg.TEST.SLICE.ENABLED:
            resize = None  # test-time augmentation and slicing resize (parts of) the original image themselves
        else:
            resize = ResizeForTest(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
        return cls(resize, is_train, cfg.INPUT.FORMAT, is_train and cfg.INPUT.HFLIP_TRAIN, cfg.INPUT.MASK_FORMAT,
                   seed)

    def __call__(self, dataset_dict: dict, rng: np.random.Generator | None = None) -> dict:
        """Map one dict; ``rng`` (default: the mapper's own) draws the resize size and the flip."""
        rng = self.rng if rng is None else rng
        record = copy.deepcopy(dataset_dict)
        image = read_image(record["file_name"], self.image_format)
        expected = (record.get("height"), record.get("width"))
        if None not in expected and image.shape[:2] != expected:
            hint = " (rotated by its EXIF orientation?)" if image.shape[:2] == expected[::-1] else ""
            raise ImageSizeError(f"{record['file_name']}: the image is {image.shape[1]}x{image.shape[0]} (WxH) but "
                                 f"the annotation file says {expected[1]}x{expected[0]}{hint}")
        record.setdefault("height", image.shape[0])
        record.setdefault("width", image.shape[1])
        transforms = [self.resize.get_transform(image, rng)] if self.resize is not None else []
        if self.horizontal_flip and rng.random() < 0.5:
            transforms.append(HFlipTransform(transforms[0].new_w if transforms else image.shape[1]))
        transforms = TransformList(transforms)
        image = transforms.apply_image(image)
        record["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        annotations = record.pop("annotations", None)
        if not self.is_train or annotations is None:
            return record
        size = image.shape[:2]
        annotations = [transform_annotation(a, transforms, size) for a in annotations if not a.get("iscrowd", 0)]
        record["instances"] = filter_empty_instances(annotations_to_instances(annotations, size, self.mask_format))
        return record
