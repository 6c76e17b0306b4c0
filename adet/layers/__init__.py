from .aligned_bilinear import aligned_bilinear
from .batch_norm import FrozenBatchNorm2d, fold_frozen_batchnorm
from .conv import Conv2d, Scale, c2_msra_fill, c2_xavier_fill
from .coupling import image_mask_probability, mask_probability, mask_probability_reference
from .locations import compute_location_map, compute_locations

__all__ = [
    "aligned_bilinear",
    "FrozenBatchNorm2d",
    "fold_frozen_batchnorm",
    "Conv2d",
    "Scale",
    "c2_msra_fill",
    "c2_xavier_fill",
    "image_mask_probability",
    "mask_probability",
    "mask_probability_reference",
    "compute_location_map",
    "compute_locations",
]
