from .boxes import Boxes, BoxMode, pairwise_iou, xywh_box
from .image_list import ImageList, padded_size
from .instances import Instances
from .local_masks import LocalMasks
from .masks import BitMasks, PolygonMasks, polygons_to_bitmask, segmentation_to_rle

__all__ = ["Boxes", "BoxMode", "pairwise_iou", "ImageList", "padded_size", "Instances", "LocalMasks", "BitMasks",
           "PolygonMasks", "polygons_to_bitmask", "segmentation_to_rle", "xywh_box"]
