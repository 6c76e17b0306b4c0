"""One mask type from pasting to RLE: crops plus offsets. Nothing on the way to an RLE, an outline or a drawing makes
a full-size mask; reading ``pred_masks`` still gives one."""

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

from adet.evaluation import instances_to_coco_json
from adet.modeling.embedmask.postprocess import postprocess
from adet.structures import Boxes, Instances, LocalMasks
from adet.utils.visualizer import draw_instance_predictions


def detections(output_size=(2000, 3000), count=12, seed=0) -> Instances:
    """A network's detections of a 104 x 152 padded input (image 100 x 150) with blob-like coupling probabilities,
    pasted to ``output_size``: one below the threshold everywhere, one touching a corner."""
    generator = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(13.0), torch.arange(19.0), indexing="ij")
    centres = torch.rand(count, 2, generator=generator) * torch.tensor([13.0, 19.0])
    radii = 0.5 + torch.rand(count, generator=generator) * 2.5
    squared_distance = (yy - centres[:, :1, None]) ** 2 + (xx - centres[:, 1:, None]) ** 2
    probs = torch.exp(-squared_distance / radii[:, None, None] ** 2)
    probs[0] *= 0.4  # never above 0.5
    probs[1] = torch.exp(-(yy ** 2 + xx ** 2) / 4)  # at the corner
    boxes = torch.cat([centres.flip(1) * 8 - 10, centres.flip(1) * 8 + 10], 1).clamp(0, 150)
    found = Instances((100, 150), pred_boxes=Boxes(boxes), scores=torch.linspace(0.9, 0.1, count),
                      pred_classes=torch.arange(count) % 3, mask_probs=probs)
    return postprocess(found, *output_size, (104, 152))


def test_rles_outlines_and_drawing_come_from_the_crops(monkeypatch):
    instances = detections()
    stored = instances.get_fields()["pred_masks"]
    assert isinstance(stored, LocalMasks) and len(stored) == len(instances) > 10
    # Each crop is a small part of the 2000 x 3000 image.
    assert sum(crop.numel() for crop in stored.crops) < 0.05 * len(stored) * 2000 * 3000
    full = stored.to_tensor().numpy()
    expected = [mask_util.encode(np.asfortranarray(m.astype(np.uint8))) for m in full]
    assert sum(m.any() for m in full) >= len(full) - 1  # masks to compare, all but the one below the threshold

    fresh = detections()

    def no_full_masks(self):
        raise AssertionError("a full-size mask was made")

    monkeypatch.setattr(LocalMasks, "to_tensor", no_full_masks)
    results = instances_to_coco_json(fresh, image_id=7)
    assert [r["segmentation"]["counts"] for r in results] == [e["counts"].decode() for e in expected]
    draw_instance_predictions(np.zeros((2000, 3000, 3), np.uint8), fresh)
    from adet.api import Prediction

    polygons = Prediction(fresh, np.zeros((2000, 3000, 3), np.uint8), None, None).polygons
    assert len(polygons) == len(full) and all(polygons[k] for k in range(len(full)) if full[k].sum() >= 1)
    with pytest.raises(AssertionError, match="full-size"):
        _ = fresh.pred_masks  # reading the field pastes them: the check above would have caught a full mask


def test_pred_masks_read_as_full_size_masks_through_indexing_moving_and_concatenation():
    instances = detections((300, 450))
    full = instances.pred_masks
    assert full.shape == (len(instances), 300, 450) and full.dtype == torch.bool
    picked = instances[torch.tensor([3, 1, 5])]
    assert torch.equal(picked.pred_masks, full[[3, 1, 5]])
    assert torch.equal(instances[2].pred_masks, full[2:3])
    assert torch.equal(instances[instances.scores > 0.5].pred_masks, full[instances.scores > 0.5])
    both = Instances.cat([instances[:4].to("cpu"), instances[4:]])
    assert torch.equal(both.pred_masks, full)
    # Full masks cut to crops and back are the same masks.
    again = LocalMasks.from_full(full)
    assert torch.equal(again.to_tensor(), full) and again.encode_rle() == LocalMasks.of(instances).encode_rle()


def test_full_masks_are_cut_to_the_rows_and_columns_they_touch():
    full = torch.zeros(3, 6, 8, dtype=torch.bool)
    full[0, 1:3, 2] = True  # a column segment: rows 1-2, column 2
    full[0, 4, 5] = True  # and a pixel: the box spans both
    full[2, 5, 0] = full[2, 0, 7] = True  # opposite corners of the image
    cut = LocalMasks.from_full(full)
    assert cut.offsets == [(1, 2), (0, 0), (0, 0)] and cut.image_size == (6, 8)
    assert [tuple(c.shape) for c in cut.crops] == [(4, 4), (0, 0), (6, 8)]
    assert torch.equal(cut.to_tensor(), full)
