"""Detections at network resolution -> detections in original-image pixels (spec section 6).

Boxes are scaled and clipped. Masks follow the official chain: coupling probabilities at the pixel-embedding
stride (8) -> aligned_bilinear x2 (stride 4) -> aligned_bilinear x4 (padded input size) -> crop to the resized image
-> bilinear resize (align_corners=False) to the original size -> > 0.5.

Every step of that chain is linear and acts on rows and columns separately, so it equals ``A_y @ P @ A_x^T`` for two
small matrices, which are built by running the very same torch ops on identity bases. Two matrix products per mask,
over the part of the image the mask can reach, replace ~10^8-element intermediates at full resolution: same masks (up
to float rounding at exactly 0.5), a fraction of the time and memory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from adet.layers import aligned_bilinear
from adet.structures import Instances


def resize_operator(size: int, factors: list[int], crop: int, out_size: int, device: torch.device) -> torch.Tensor:
    """(out_size, size) matrix of the mask chain along one axis: aligned_bilinear by each factor, crop to ``crop``,
    bilinear resize to ``out_size``. Its entries are >= 0 and each row sums to 1 (every step interpolates)."""
    basis = torch.eye(size, device=device).view(size, 1, size, 1)  # one basis vector per batch entry
    for factor in factors:
        basis = aligned_bilinear(basis, factor)[..., :1]
    basis = basis[:, :, :crop]
    basis = F.interpolate(basis, size=(out_size, 1), mode="bilinear", align_corners=False)
    return basis[:, 0, :, 0].t().contiguous()


def reach(inputs_above: torch.Tensor, operator: torch.Tensor) -> torch.Tensor:
    """(K, n) inputs above the threshold, (out, n) operator -> (K, 2) first and last output index they reach
    (first > last when none)."""
    touched = (inputs_above.float() @ (operator != 0).float().t()) > 0  # (K, out)
    out = touched.shape[1]
    first = touched.float().argmax(1)
    last = out - 1 - touched.flip(1).float().argmax(1)
    none = ~touched.any(1)
    return torch.stack([first.masked_fill(none, out), last.masked_fill(none, -1)], 1)


def paste_masks(probabilities: torch.Tensor, factors: list[int], crop_size: tuple[int, int],
                output_size: tuple[int, int], threshold: float) -> torch.Tensor:
    """(K, h, w) probabilities -> (K, out_h, out_w) bool masks through the chain described above.

    Each output pixel is a convex combination of the inputs in its support, so it can pass a positive threshold only
    if one of those inputs does: each mask is computed only over the output rectangle that its inputs above the
    threshold reach (1e-6 below it, for rounding), and is False elsewhere. Objects cover a small part of the image,
    so this skips most of the work.
    """
    num, height, width = probabilities.shape
    out_h, out_w = output_size
    masks = torch.zeros((num, out_h, out_w), dtype=torch.bool, device=probabilities.device)
    if num == 0:
        return masks
    rows = resize_operator(height, factors, crop_size[0], out_h, probabilities.device)  # (out_h, h)
    cols = resize_operator(width, factors, crop_size[1], out_w, probabilities.device)  # (out_w, w)
    probabilities = probabilities.float()
    if threshold <= 0:  # any output pixel may pass
        return torch.matmul(rows, torch.matmul(probabilities, cols.t())) > threshold
    above = probabilities > threshold - 1e-6
    row_ranges = reach(above.any(2), rows).tolist()
    col_ranges = reach(above.any(1), cols).tolist()
    for index, ((y0, y1), (x0, x1)) in enumerate(zip(row_ranges, col_ranges)):
        if y0 <= y1 and x0 <= x1:
            region = rows[y0:y1 + 1] @ probabilities[index] @ cols[x0:x1 + 1].t()
            masks[index, y0:y1 + 1, x0:x1 + 1] = region > threshold
    return masks


def postprocess(results: Instances, output_height: int, output_width: int, padded_size: tuple[int, int],
                mask_threshold: float = 0.5, mask_out_stride: int = 4) -> Instances:
    """Rescale one image's detections to (output_height, output_width).

    Args:
        results: Instances whose ``image_size`` is the resized, unpadded network input (h, w), with
            ``pred_boxes`` and optionally ``mask_probs`` (K, H_pad/s, W_pad/s) coupling probabilities.
        padded_size: (H_pad, W_pad) of the padded network input.
        mask_out_stride: MODEL.EMBEDMASK.MASK_OUT_STRIDE, the stride of the first upsampling.

    Returns:
        new Instances of size (output_height, output_width); detections whose box becomes empty are dropped;
        ``pred_masks`` (K, output_height, output_width) bool when probabilities were given.
    """
    resized_h, resized_w = results.image_size
    scale_x, scale_y = output_width / resized_w, output_height / resized_h
    results = Instances((output_height, output_width), **results.get_fields())
    boxes = results.pred_boxes
    boxes.scale(scale_x, scale_y)
    boxes.clip(results.image_size)
    results = results[boxes.nonempty()]

    if results.has("mask_probs"):
        probabilities = results.mask_probs
        factors = mask_factors(probabilities.shape[-2:], padded_size, mask_out_stride)
        results.pred_masks = paste_masks(probabilities, factors, (resized_h, resized_w),
                                         (output_height, output_width), mask_threshold)
    return results


def mask_factors(mask_size: tuple[int, int], padded_size: tuple[int, int], mask_out_stride: int = 4) -> list[int]:
    """The official two upsamplings: to MASK_OUT_STRIDE, then to the padded input size."""
    stride_h, stride_w = padded_size[0] // mask_size[0], padded_size[1] // mask_size[1]
    if stride_h != stride_w or stride_h * mask_size[0] != padded_size[0] or stride_w * mask_size[1] != padded_size[1]:
        raise ValueError(f"mask size {tuple(mask_size)} is not a uniform downscale of {tuple(padded_size)}")
    if stride_h % mask_out_stride:
        return [stride_h]
    return [factor for factor in (stride_h // mask_out_stride, mask_out_stride) if factor > 1]
