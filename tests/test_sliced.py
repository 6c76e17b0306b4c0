"""Sliced inference: tiles that cover the image, crop-local masks encoded as full-image RLEs, and the merge that
makes one instance of an object seen by two tiles while keeping neighbours apart."""

import numpy as np
import pycocotools.mask as mask_util
import torch

from adet.engine import DefaultPredictor
from adet.engine.inference import sliced as slicing
from adet.engine.inference.backend import ModelBackend
from adet.engine.inference.sliced import LocalDetection, merge, predict_sliced, tile_windows, to_instances
from adet.engine.inference.tta import EmbedMaskWithTTA
from adet.evaluation import instances_to_coco_json
from adet.structures.rle import encode_local_mask

from .conftest import make_tiny_cfg, shapes_image


def test_tiles_cover_the_image_with_the_overlap_and_end_at_its_edges():
    windows = tile_windows(300, 500, (128, 160), 0.25)
    covered = np.zeros((300, 500), int)
    for y0, x0, y1, x1 in windows:
        assert (y1 - y0, x1 - x0) == (128, 160)
        covered[y0:y1, x0:x1] += 1
    assert covered.min() >= 1
    assert sorted({w[0] for w in windows}) == [0, 96, 172] and sorted({w[1] for w in windows}) == [0, 120, 240, 340]
    assert tile_windows(100, 90, (128, 160), 0.2) == [(0, 0, 100, 90)]


def test_local_masks_encode_to_the_rle_of_the_full_image():
    rng = np.random.default_rng(1)
    for _ in range(50):
        mask = rng.random((7, 9)) > 0.5
        top, left = int(rng.integers(0, 30)), int(rng.integers(0, 40))
        full = np.zeros((40, 50), dtype=np.uint8)
        full[top:top + 7, left:left + 9] = mask
        expected = mask_util.encode(np.asfortranarray(full))
        assert encode_local_mask(mask, top, left, 40, 50)["counts"] == expected["counts"].decode()


def disc(center, radius, window, class_id=0, score=0.9, image=(100, 200)):
    """The part of a disc a pass over ``window`` (of an image of ``image`` size) sees, as a LocalDetection."""
    y0, x0, y1, x1 = window
    yy, xx = np.mgrid[y0:y1, x0:x1]
    inside = (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius ** 2
    rows, cols = np.flatnonzero(inside.any(1)), np.flatnonzero(inside.any(0))
    crop = inside[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    cut = (x0 > 0 and cols[0] == 0) or (x1 < image[1] and x0 + cols[-1] + 1 == x1)
    return LocalDetection(score, class_id, y0 + rows[0], x0 + cols[0], crop, [window], cut=cut)


def test_an_object_across_a_tile_border_becomes_one_instance_and_neighbours_stay_two():
    left, right = (0, 0, 100, 120), (0, 80, 100, 200)  # tiles overlapping in columns 80..120
    big = [disc((50, 100), 30, left, score=0.9), disc((50, 100), 30, right, score=0.8)]
    (merged,) = merge(big)
    whole = disc((50, 100), 30, (0, 0, 100, 200))
    assert merged.score == 0.9 and merged.box == whole.box
    assert np.array_equal(merged.within((0, 0, 100, 200)), whole.within((0, 0, 100, 200)))
    # An object seen whole by one tile and cut by the other's edge: the whole view, whatever the scores.
    seen = [disc((50, 90), 12, left, score=0.6), disc((50, 90), 12, right, score=0.95)]
    assert seen[1].cut and not seen[0].cut
    (kept,) = merge(seen)
    assert kept.score == 0.6 and np.array_equal(kept.mask, seen[0].mask) and len(kept.windows) == 2
    # Two touching objects in the overlap, each seen by both tiles: two instances.
    pair = [disc((50, 92), 7, w, score=s) for w, s in ((left, 0.9), (right, 0.85))]
    pair += [disc((50, 108), 7, w, score=s) for w, s in ((left, 0.7), (right, 0.75))]
    assert len(merge(pair)) == 2
    # Another class in the same place is another instance; the same pass never merges with itself.
    assert len(merge([disc((50, 100), 30, left), disc((50, 100), 30, right, class_id=1)])) == 2
    assert len(merge([disc((50, 100), 30, left), disc((50, 100), 28, left, score=0.5)])) == 2
    records = instances_to_coco_json(to_instances([merged], 100, 200), 7)
    full = mask_util.decode(records[0]["segmentation"]).astype(bool)
    assert np.array_equal(full, whole.within((0, 0, 100, 200))) and records[0]["bbox"][2:] == [61, 61]


def tiny_weights(folder):
    """A tiny model (its config carried by the checkpoint) that finds dozens of objects in a shapes image."""
    cfg = make_tiny_cfg("MODEL.FCOS.INFERENCE_TH_TEST", 0.0)
    torch.manual_seed(0)
    from adet.modeling import build_model

    state = build_model(cfg).state_dict()
    state["proposal_generator.fcos_head.cls_logits.bias"].normal_(0, 2, generator=torch.Generator().manual_seed(0))
    torch.save({"model": state, "config": cfg.dump()}, folder / "w.pth")
    cfg.MODEL.WEIGHTS = str(folder / "w.pth")
    return cfg


def test_a_single_tile_is_the_plain_prediction(tmp_path):
    cfg = tiny_weights(tmp_path)
    predictor = DefaultPredictor(cfg)
    image = shapes_image(96, 128, seed=3)[0]
    plain = predictor(image)["instances"]
    detections = predict_sliced(predictor, image, (96, 128), full_image=True, match_threshold=1.01)
    assert len(detections) == len(plain) > 0  # one tile is the whole image: no second pass, nothing to merge
    sliced = to_instances(detections, 96, 128)
    order = torch.argsort(plain.scores, descending=True)
    assert torch.allclose(sliced.scores, plain.scores[order])
    assert torch.equal(sliced.pred_masks, plain.pred_masks[order])
    assert torch.allclose(sliced.pred_boxes.tensor, plain.pred_boxes.tensor[order])
    # Smaller tiles: each tile (3 x 3 of 48x64 at overlap 0.5) and the whole image go through the backend.
    seen = []

    class Recording:
        def __getattr__(self, name):
            return getattr(predictor, name)

        def preprocess(self, bgr):
            seen.append(bgr.shape[:2])
            return predictor.preprocess(bgr)

    tiled = predict_sliced(Recording(), image, (48, 64), overlap=0.5)
    assert seen == [(48, 64)] * 9 + [(96, 128)] and len(tiled) > 0


def test_slicing_is_the_same_from_the_config_the_python_api_and_the_function(tmp_path):
    """TEST.SLICE in the config (DefaultPredictor), ``adet.load(..., slice=)`` and predict_sliced over the plain
    backend give the same detections; with TEST.AUG too, each tile is test-time augmented."""
    import adet

    cfg = tiny_weights(tmp_path)
    image = shapes_image(96, 128, seed=3)[0]
    plain = DefaultPredictor(cfg)
    expected = to_instances(predict_sliced(plain.backend, image, (48, 64), overlap=0.5), 96, 128)
    cfg.merge_from_list(slicing.slice_overrides((48, 64), 0.5))
    from_config = DefaultPredictor(cfg)(image)["instances"]
    from_api = adet.load(str(tmp_path / "w.pth"), device="cpu", slice=(48, 64), overlap=0.5)(image)
    assert len(expected) > len(plain(image)["instances"]) > 0  # a different result: tiles were predicted
    for instances in (from_config, from_api.instances):
        assert torch.equal(instances.scores, expected.scores) and torch.equal(instances.pred_masks,
                                                                               expected.pred_masks)
    assert from_api.masks.shape == (len(expected), 96, 128)
    cfg.merge_from_list(["TEST.AUG.ENABLED", True, "TEST.AUG.MIN_SIZES", (80, 96), "TEST.AUG.FLIP", False])
    augmented = DefaultPredictor(cfg)
    assert isinstance(augmented.backend.backend, ModelBackend)
    assert isinstance(augmented.backend.backend.inference_model, EmbedMaskWithTTA)
    assert len(augmented(image)["instances"]) > 0


def test_the_merge_compares_neighbours_only():
    """A 20 x 20 grid of separate objects seen twice each (by two passes that both saw the whole image): every pair
    merges, and the number of mask comparisons grows with the detections (a few per detection), not with their
    square."""
    windows = [(0, 0, 2000, 2000), (0, 0, 2001, 2000)]
    detections = []
    for row in range(20):
        for col in range(20):
            for window in windows:
                d = LocalDetection(0.5 + 0.001 * (row * 20 + col), 0, row * 100 + 10, col * 100 + 10,
                                   np.ones((60, 60), bool), [window], cut=False)
                detections.append(d)
    calls = []
    original = slicing.same_object

    def counted(a, b, threshold):
        calls.append(1)
        return original(a, b, threshold)

    slicing.same_object = counted
    try:
        kept = merge(detections, cell=(200, 200))
    finally:
        slicing.same_object = original
    assert len(kept) == 400 and all(len(d.windows) == 2 for d in kept)
    assert 400 <= len(calls) <= 4 * len(detections)  # all 800 against all kept: ~80,000
