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
from adet.structures import Instances, LocalMasks


def resize_operator(size: int, factors: list[int], crop: int, out_size: int, device: torch.device) -> torch.Tensor:
    """(out_size, size) matrix of the mask chain along one axis: aligned_bilinear by each factor, crop to ``crop``,
    bilinear resize to ``out_size``. Its entries are >= 0 and each row sums to 1 (every step interpolates)."""
    basis = torch.eye(size, device=device).view(size, 1, size, 1)  # one basis vector per batch entry
    for factor in factors:
        basis = aligned_bilinear(basis, factor)[..., :1]
    basis = basis[:, :, :crop]
    basis = F.interpolate(basis, size=(out_size, 1), mode="bilinear", align_corners=False)
    return basis[:, 0, :, 0].t().contiguous()


def mask_operators(mask_size: tuple[int, int], padded_size: tuple[int, int], resized_size: tuple[int, int],
                   output_size: tuple[int, int], mask_out_stride: int, device: torch.device
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows (out_h, h), cols (out_w, w)): the whole chain from (h, w) coupling probabilities of a padded network
    input to the output image, pasted = rows @ probabilities @ cols.T."""
    factors = mask_factors(mask_size, padded_size, mask_out_stride)
    rows = resize_operator(mask_size[0], factors, resized_size[0], output_size[0], device)
    cols = resize_operator(mask_size[1], factors, resized_size[1], output_size[1], device)
    return rows, cols


def mask_reach(probabilities: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, threshold: float
               ) -> list[tuple[int, int, int, int]]:
    """Per mask of (P, h, w) ``probabilities``, the output rectangle (y0, y1, x0, x1), inclusive, that its inputs
    above the threshold (1e-6 below it, for rounding) reach through the operators; y0 > y1 when none does.

    Each output pixel is a convex combination of the inputs in its support, so it can pass a positive threshold only
    inside that rectangle."""
    above = probabilities > threshold - 1e-6
    y_ranges = _reach(above.any(2), rows).tolist()
    x_ranges = _reach(above.any(1), cols).tolist()
    return [(y0, y1, x0, x1) for (y0, y1), (x0, x1) in zip(y_ranges, x_ranges)]


def _reach(inputs_above: torch.Tensor, operator: torch.Tensor) -> torch.Tensor:
    """(P, n) inputs above the threshold, (out, n) operator -> (P, 2) first and last output index they reach
    (first > last when none)."""
    touched = (inputs_above.float() @ (operator != 0).float().t()) > 0  # (P, out)
    out = touched.shape[1]
    first = touched.float().argmax(1)
    last = out - 1 - touched.flip(1).float().argmax(1)
    none = ~touched.any(1)
    return torch.stack([first.masked_fill(none, out), last.masked_fill(none, -1)], 1)


def paste_region(members: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], region: tuple[int, int, int, int]
                 ) -> torch.Tensor:
    """The mean of pasted (h, w) probability maps over an output rectangle: ``members`` are (probabilities, rows,
    cols) (one for a detection, several for test-time augmentation's voting); ``region`` (y0, y1, x0, x1)
    inclusive. Returns (y1 - y0 + 1, x1 - x0 + 1) float."""
    y0, y1, x0, x1 = region
    total = 0
    for probabilities, rows, cols in members:
        total = total + rows[y0:y1 + 1] @ probabilities @ cols[x0:x1 + 1].t()
    return total / len(members)


def paste_masks(probabilities: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, threshold: float
                ) -> LocalMasks:
    """(P, h, w) probabilities -> P masks of (out_h, out_w) through the operators of :func:`mask_operators`.

    Each mask is computed only over the output rectangle it can reach (:func:`mask_reach`), its crop: objects cover a
    small part of the image, so this skips most of the work, and no full-size mask is made."""
    size = (rows.shape[0], cols.shape[0])
    probabilities = probabilities.float()
    if threshold <= 0:  # any output pixel may pass
        return LocalMasks(list(torch.matmul(rows, torch.matmul(probabilities, cols.t())) > threshold),
                          [(0, 0)] * probabilities.shape[0], size)
    crops, offsets = [], []
    for index, (y0, y1, x0, x1) in enumerate(mask_reach(probabilities, rows, cols, threshold)):
        if y0 <= y1 and x0 <= x1:
            crops.append(paste_region([(probabilities[index], rows, cols)], (y0, y1, x0, x1)) > threshold)
            offsets.append((y0, x0))
        else:
            crops.append(torch.zeros((0, 0), dtype=torch.bool, device=probabilities.device))
            offsets.append((0, 0))
    return LocalMasks(crops, offsets, size)


def postprocess(results: Instances, output_height: int, output_width: int, padded_size: tuple[int, int],
                mask_threshold: float = 0.5, mask_out_stride: int = 4) -> Instances:
    """Rescale one image's detections to (output_height, output_width).

    Args:
        results: Instances whose ``image_size`` is the resized, unpadded network input (h, w), with
            ``pred_boxes`` and optionally ``mask_probs`` (P, H_pad/s, W_pad/s) coupling probabilities.
        padded_size: (H_pad, W_pad) of the padded network input.
        mask_out_stride: MODEL.EMBEDMASK.MASK_OUT_STRIDE, the stride of the first upsampling.

    Returns:
        new Instances of size (output_height, output_width); detections whose box becomes empty are dropped;
        ``pred_masks`` (:class:`LocalMasks`, read as (P, output_height, output_width) bool) replaces ``mask_probs``
        when probabilities were given.
    """
    resized_h, resized_w = results.image_size
    scale_x, scale_y = output_width / resized_w, output_height / resized_h
    fields = results.get_fields()
    probabilities = fields.pop("mask_probs", None)
    results = Instances((output_height, output_width), **fields)
    boxes = results.pred_boxes
    boxes.scale(scale_x, scale_y)
    boxes.clip(results.image_size)
    keep = boxes.nonempty()
    results = results[keep]
    if probabilities is not None:
        probabilities = probabilities[keep]
        rows, cols = mask_operators(probabilities.shape[-2:], padded_size, (resized_h, resized_w),
                                    (output_height, output_width), mask_out_stride, probabilities.device)
        results.pred_masks = paste_masks(probabilities, rows, cols, mask_threshold)
    return results


def mask_factors(mask_size: tuple[int, int], padded_size: tuple[int, int], mask_out_stride: int = 4) -> list[int]:
    """The official two upsamplings: to MASK_OUT_STRIDE, then to the padded input size."""
    stride_h, stride_w = padded_size[0] // mask_size[0], padded_size[1] // mask_size[1]
    if stride_h != stride_w or stride_h * mask_size[0] != padded_size[0] or stride_w * mask_size[1] != padded_size[1]:
        raise ValueError(f"mask size {tuple(mask_size)} is not a uniform downscale of {tuple(padded_size)}")
    if stride_h % mask_out_stride:
        return [stride_h]
    return [factor for factor in (stride_h // mask_out_stride, mask_out_stride) if factor > 1]
