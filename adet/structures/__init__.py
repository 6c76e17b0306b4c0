from .boxes import Boxes, pairwise_iou
from .image_list import ImageList, padded_size
from .instances import Instances
from .masks import BitMasks, PolygonMasks, polygons_to_bitmask, segmentation_to_rle

__all__ = ["Boxes", "pairwise_iou", "ImageList", "padded_size", "Instances", "BitMasks", "PolygonMasks",
           "polygons_to_bitmask", "segmentation_to_rle"]
