"""Detections at network resolution -> detections in original-image pixels (spec section 6).

Boxes are scaled and clipped; the stride-4 mask probabilities are brought to the padded input size with
aligned_bilinear, cropped to the resized image, resized bilinearly to the original size and thresholded.
"""

from __future__ import annotations

import torch.nn.functional as F

from adet.layers import aligned_bilinear
from adet.structures import Instances


def postprocess(results: Instances, output_height: int, output_width: int, padded_size: tuple[int, int],
                mask_threshold: float = 0.5) -> Instances:
    """Rescale one image's detections to (output_height, output_width).

    Args:
        results: Instances whose ``image_size`` is the resized, unpadded network input (h, w), with
            ``pred_boxes`` and optionally ``pred_global_masks`` (K, 1, H_pad/4, W_pad/4) probabilities.
        padded_size: (H_pad, W_pad) of the padded network input.

    Returns:
        new Instances of size (output_height, output_width); detections whose box becomes empty are dropped;
        ``pred_masks`` (K, output_height, output_width) float 0/1 when masks were given.
    """
    resized_h, resized_w = results.image_size
    scale_x, scale_y = output_width / resized_w, output_height / resized_h
    results = Instances((output_height, output_width), **results.get_fields())
    boxes = results.pred_boxes
    boxes.scale(scale_x, scale_y)
    boxes.clip(results.image_size)
    results = results[boxes.nonempty()]

    if results.has("pred_global_masks"):
        masks = results.pred_global_masks
        factor_h, factor_w = padded_size[0] // masks.shape[-2], padded_size[1] // masks.shape[-1]
        if factor_h != factor_w:
            raise ValueError(f"mask size {tuple(masks.shape[-2:])} is not a uniform downscale of {padded_size}")
        masks = aligned_bilinear(masks, factor_h)[:, :, :resized_h, :resized_w]
        masks = F.interpolate(masks, size=(output_height, output_width), mode="bilinear", align_corners=False)
        results.pred_masks = (masks[:, 0] > mask_threshold).float()
    return results
