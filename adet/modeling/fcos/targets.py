"""FCOS training targets: which ground-truth instance, if any, each location of each level predicts (spec 4.2).

A location is positive for a GT when it lies strictly inside the GT's centre region (a square of 1.5 strides around
the *mask centroid*, clipped to the box) and the GT's size, max(l, t, r, b), is in the level's range. Among several
such GTs the one with the smallest box area wins.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from adet.structures import Instances

INF = 100000000


def center_region(boxes: torch.Tensor, strides: list[int], locations_per_level: list[int], xs: torch.Tensor,
                  ys: torch.Tensor, bitmasks: torch.Tensor | None, radius: float) -> torch.Tensor:
    """(R, M) bool: location r lies strictly inside GT m's centre region.

    Args:
        boxes: (M, 4) GT boxes. bitmasks: (M, H_pad, W_pad) full-resolution masks or None (then box centres).
        xs, ys: (R,) location coordinates, levels concatenated; ``locations_per_level`` gives each level's count.
    """
    if bitmasks is not None:
        height, width = bitmasks.shape[1:]
        pixel_ys = torch.arange(0, height, dtype=torch.float32, device=bitmasks.device)
        pixel_xs = torch.arange(0, width, dtype=torch.float32, device=bitmasks.device)
        mass = bitmasks.sum(dim=-1).sum(dim=-1).clamp(min=1e-6)
        # Centroid in pixel-index coordinates (no +0.5), as the official code computes it.
        center_x = (bitmasks * pixel_xs).sum(dim=-1).sum(dim=-1) / mass
        center_y = (bitmasks * pixel_ys[:, None]).sum(dim=-1).sum(dim=-1) / mass
    else:
        center_x = boxes[:, [0, 2]].sum(dim=-1) * 0.5
        center_y = boxes[:, [1, 3]].sum(dim=-1) * 0.5
    num_locations = len(xs)
    # Official quirk, kept for parity: if the first GT's centre x is exactly 0, the image gets no positives.
    if center_x.numel() == 0 or center_x[0] == 0:
        return xs.new_zeros((num_locations, boxes.shape[0]), dtype=torch.bool)

    region = boxes.new_zeros((num_locations, boxes.shape[0], 4))  # (R, M, 4)
    begin = 0
    for stride, count in zip(strides, locations_per_level):
        end = begin + count
        reach = stride * radius
        level_boxes = boxes[None].expand(count, -1, 4)
        cx, cy = center_x[None].expand(count, -1), center_y[None].expand(count, -1)
        xmin, ymin, xmax, ymax = cx - reach, cy - reach, cx + reach, cy + reach
        region[begin:end, :, 0] = torch.where(xmin > level_boxes[..., 0], xmin, level_boxes[..., 0])
        region[begin:end, :, 1] = torch.where(ymin > level_boxes[..., 1], ymin, level_boxes[..., 1])
        region[begin:end, :, 2] = torch.where(xmax > level_boxes[..., 2], level_boxes[..., 2], xmax)
        region[begin:end, :, 3] = torch.where(ymax > level_boxes[..., 3], level_boxes[..., 3], ymax)
        begin = end
    distances = torch.stack([
        xs[:, None] - region[..., 0], ys[:, None] - region[..., 1],
        region[..., 2] - xs[:, None], region[..., 3] - ys[:, None],
    ], dim=-1)
    return distances.min(dim=-1)[0] > 0


def targets_for_image(locations: torch.Tensor, size_ranges: torch.Tensor, gt: Instances, num_classes: int,
                      strides: list[int], locations_per_level: list[int], center_sample: bool, radius: float,
                      sample_in_mask: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For the R locations of one image: labels (R,) (``num_classes`` = background), ltrb targets (R, 4) in pixels,
    and the matched GT index (R,) within this image."""
    boxes = gt.gt_boxes.tensor
    if boxes.numel() == 0:
        return (torch.full((len(locations),), num_classes, dtype=torch.long, device=locations.device),
                locations.new_zeros((len(locations), 4)),
                torch.full((len(locations),), -1, dtype=torch.long, device=locations.device))
    xs, ys = locations[:, 0], locations[:, 1]
    ltrb_px = torch.stack([xs[:, None] - boxes[:, 0][None], ys[:, None] - boxes[:, 1][None],
                        boxes[:, 2][None] - xs[:, None], boxes[:, 3][None] - ys[:, None]], dim=2)  # (R, M, 4)
    if center_sample:
        bitmasks = gt.gt_bitmasks_full if gt.has("gt_bitmasks_full") else None
        inside = center_region(boxes, strides, locations_per_level, xs, ys, bitmasks, radius)
    else:
        inside = ltrb_px.min(dim=2)[0] > 0
    max_distance = ltrb_px.max(dim=2)[0]  # (R, M)
    in_size_range = (max_distance >= size_ranges[:, [0]]) & (max_distance <= size_ranges[:, [1]])

    area_per_location = gt.gt_boxes.area()[None].repeat(len(locations), 1)  # (R, M)
    area_per_location[~inside] = INF
    area_per_location[~in_size_range] = INF
    if sample_in_mask:
        # The location's pixel must lie on the mask; a 64-pixel margin keeps border lookups in range.
        masks = gt.gt_bitmasks_full.permute(1, 2, 0)  # (H, W, M)
        padded = masks.new_zeros((masks.shape[0] + 64, masks.shape[1] + 64, masks.shape[2]))
        padded[: masks.shape[0], : masks.shape[1]] = masks
        area_per_location[padded[ys.long(), xs.long()] == 0] = INF
    min_area, gt_index = area_per_location.min(dim=1)
    ltrb_px = ltrb_px[range(len(locations)), gt_index]
    labels = gt.gt_classes[gt_index]
    labels[min_area == INF] = num_classes
    return labels, ltrb_px, gt_index


@dataclass
class LocationTargets:
    """What each of the R locations of a batch must predict, rows in the order of :func:`flatten_level_first`
    (level -> image -> row -> column)."""

    labels: torch.Tensor  # (R,) int64 class, or K (the class count) for background
    ltrb_px: torch.Tensor  # (R, 4) distances to the matched GT box's sides, in input pixels
    gt_index: torch.Tensor  # (R,) int64 index into the batch's GTs concatenated image by image (-1: none)
    image_index: torch.Tensor  # (R,) int64 the image of each location
    level: torch.Tensor  # (R,) int64 the FPN level of each location


def compute_targets(locations: list[torch.Tensor], gt_instances: list[Instances], strides: list[int],
                    size_ranges: list[list[float]], num_classes: int, center_sample: bool = True,
                    radius: float = 1.5, sample_in_mask: bool = False) -> LocationTargets:
    """Targets of a batch. ``locations``: per level (H_l * W_l, 2) cell centres; ``size_ranges``: per level the
    inclusive [min, max] of max(l, t, r, b) its positives may have."""
    per_level = [len(loc) for loc in locations]
    all_locations = torch.cat(locations, dim=0)
    ranges = torch.cat([all_locations.new_tensor(r)[None].expand(n, -1) for r, n in zip(size_ranges, per_level)])
    fields: dict[str, list[tuple[torch.Tensor, ...]]] = {k: [] for k in ("labels", "ltrb_px", "gt_index",
                                                                        "image_index")}
    gt_offset = 0
    for image_index, gt in enumerate(gt_instances):
        labels, ltrb_px, gt_index = targets_for_image(all_locations, ranges, gt, num_classes, strides, per_level,
                                                   center_sample, radius, sample_in_mask)
        per_image = {"labels": labels, "ltrb_px": ltrb_px, "gt_index": gt_index + gt_offset,
                     "image_index": torch.full_like(labels, image_index)}
        gt_offset += len(gt)
        for key, value in per_image.items():
            fields[key].append(torch.split(value, per_level, dim=0))
    # (image, level) splits -> level-major rows
    flat = {key: torch.cat([torch.cat(level, dim=0) for level in zip(*splits)]) for key, splits in fields.items()}
    levels = torch.cat([torch.full((n * len(gt_instances),), level, dtype=torch.long, device=all_locations.device)
                        for level, n in enumerate(per_level)])
    return LocationTargets(**flat, level=levels)


def flatten_level_first(per_level: list[torch.Tensor]) -> torch.Tensor:
    """Head outputs per level (N, C, H_l, W_l) -> (R, C) rows in the order of :func:`compute_targets`."""
    return torch.cat([x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]) for x in per_level], dim=0)
