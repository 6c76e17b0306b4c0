"""FCOS target assignment on tiny images, against expectations worked out by hand (spec 4.2), and the choice of
the positives that train the masks (MAX_PROPOSALS, TOPK_PROPOSALS_PER_IM)."""

import pytest
import torch

from adet.layers import compute_locations
from adet.modeling.embedmask import Positives, select_for_mask_loss
from adet.modeling.fcos.targets import INF, compute_targets
from adet.structures import Boxes, Instances

NUM_CLASSES = 3


def ground_truth(boxes, classes, masks=None, size=(64, 64)):
    gt = Instances(size)
    gt.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    gt.gt_classes = torch.tensor(classes, dtype=torch.int64)
    if masks is not None:
        gt.gt_bitmasks_full = masks
    return gt


def rectangle_mask(x0, y0, x1, y1, size=(64, 64)):
    mask = torch.zeros(size)
    mask[y0:y1, x0:x1] = 1
    return mask


def positives(targets, locations):
    """{(x, y): (label, gt_index)} of the positive locations."""
    points = torch.cat(locations)
    found = {}
    for row in torch.nonzero(targets.labels != NUM_CLASSES).squeeze(1).tolist():
        x, y = points[row].tolist()
        found[(int(x), int(y))] = (int(targets.labels[row]), int(targets.gt_index[row]))
    return found


def test_centre_sampling_is_around_the_mask_centroid_not_the_box_centre():
    # Stride 8 on a 64 x 64 image: cell centres at 4, 12, ..., 60. The box is 64 x 48, its mask only the left half
    # (x < 32): centroid (15.5, 23.5) in pixel indices. With radius 1.5 strides (12 px) the centre region is
    # x in (3.5, 27.5), y in (11.5, 35.5): x in {4, 12, 20}, y in {12, 20, 28}. (The box centre would give x in
    # {20, 28, 36}.)
    locations = [compute_locations(8, 8, 8, "cpu")]
    gt = ground_truth([[0, 0, 64, 48]], [2], rectangle_mask(0, 0, 32, 48)[None])
    targets = compute_targets(locations, [gt], [8], [[-1, INF]], NUM_CLASSES, center_sample=True, radius=1.5)
    assert positives(targets, locations) == {(x, y): (2, 0) for x in (4, 12, 20) for y in (12, 20, 28)}
    row = 1 * 8 + 0  # (x=4, y=12)
    assert targets.ltrb_px[row].tolist() == [4.0, 12.0, 60.0, 36.0]  # distances to the box, not the mask
    assert targets.level.tolist() == [0] * 64 and targets.image_index.tolist() == [0] * 64


def test_without_centre_sampling_every_location_inside_the_box_is_positive():
    locations = [compute_locations(8, 8, 8, "cpu")]
    gt = ground_truth([[10, 0, 30, 20]], [1])  # strictly inside: x in {12, 20, 28}, y in {4, 12}
    targets = compute_targets(locations, [gt], [8], [[-1, INF]], NUM_CLASSES, center_sample=False)
    assert positives(targets, locations) == {(x, y): (1, 0) for x in (12, 20, 28) for y in (4, 12)}


def test_size_ranges_send_each_object_to_its_level():
    # Strides 8 and 16, sizes_of_interest [32]: level 0 takes max(l, t, r, b) in [-1, 32], level 1 [32, INF].
    # The small box (0, 0, 24, 24) reaches at most 20 from its level-0 cells; at its level-1 cell (8, 8) only 16.
    # The large box (0, 0, 64, 64) is at least 36 away from one side at every cell: level 1 only.
    locations = [compute_locations(8, 8, 8, "cpu"), compute_locations(4, 4, 16, "cpu")]
    gt = ground_truth([[0, 0, 24, 24], [0, 0, 64, 64]], [0, 1])
    targets = compute_targets(locations, [gt], [8, 16], [[-1, 32], [32, INF]], NUM_CLASSES, center_sample=False)
    found = positives(targets, locations)
    level = dict(zip(map(tuple, torch.cat(locations).int().tolist()), targets.level.tolist()))
    small = {(x, y) for x in (4, 12, 20) for y in (4, 12, 20)}
    assert {p for p, (label, _) in found.items() if label == 0} == small
    assert all(level[p] == 0 for p in small)
    large = {(x, y) for x in (8, 24, 40, 56) for y in (8, 24, 40, 56)}
    assert {p for p, (label, _) in found.items() if label == 1} == large
    # Level-0 cells of the large box are all out of range, level-1 cells of the small one too.
    assert len(found) == len(small) + len(large)


def test_an_ambiguous_location_goes_to_the_smallest_box():
    # Boxes (0, 0, 40, 40), area 1600, and (16, 16, 64, 64), area 2304, overlap on x, y in (16, 40): cells
    # 20, 28, 36 on each axis belong to the first box.
    locations = [compute_locations(8, 8, 8, "cpu")]
    gt = ground_truth([[0, 0, 40, 40], [16, 16, 64, 64]], [0, 1])
    targets = compute_targets(locations, [gt], [8], [[-1, INF]], NUM_CLASSES, center_sample=False)
    found = positives(targets, locations)
    for x in (20, 28, 36):
        for y in (20, 28, 36):
            assert found[(x, y)] == (0, 0)
    assert found[(44, 44)] == (1, 1) and found[(4, 4)] == (0, 0)


def test_sample_in_mask_keeps_only_locations_on_the_mask():
    # An L-shaped mask in the box (0, 0, 32, 32): the left column x < 8 and the bottom row y >= 24. Without
    # centre sampling, the positives are the box's cells whose own pixel lies on the mask.
    mask = rectangle_mask(0, 0, 8, 32) + rectangle_mask(0, 24, 32, 32)
    locations = [compute_locations(8, 8, 8, "cpu")]
    gt = ground_truth([[0, 0, 32, 32]], [2], mask.clamp(max=1)[None])
    targets = compute_targets(locations, [gt], [8], [[-1, INF]], NUM_CLASSES, center_sample=False,
                              sample_in_mask=True)
    expected = {(4, y) for y in (4, 12, 20, 28)} | {(x, 28) for x in (4, 12, 20, 28)}
    assert set(positives(targets, locations)) == expected


def test_gt_indices_run_over_the_batch_and_rows_are_level_major():
    locations = [compute_locations(2, 2, 8, "cpu"), compute_locations(1, 1, 16, "cpu")]
    first = ground_truth([[0, 0, 16, 16]], [0], size=(16, 16))
    second = ground_truth([[0, 0, 8, 8], [0, 0, 16, 16]], [1, 2], size=(16, 16))
    targets = compute_targets(locations, [first, second], [8, 16], [[-1, 8], [8, INF]], NUM_CLASSES,
                              center_sample=False)
    # Rows: level 0 of image 0 (4), level 0 of image 1 (4), level 1 of image 0 (1), level 1 of image 1 (1).
    assert targets.image_index.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 0, 1]
    assert targets.level.tolist() == [0] * 8 + [1] * 2
    # Image 1's cell (4, 4) is inside both of its boxes with max distance 4 <= 8: its smaller box, batch GT 1.
    assert targets.gt_index[4].item() == 1 and targets.labels[4].item() == 1
    # Level 1: both images' 16 x 16 boxes (batch GTs 0 and 2), max distance 8 in [8, INF].
    assert targets.gt_index[8:].tolist() == [0, 2] and targets.labels[8:].tolist() == [0, 2]


def test_an_image_without_objects_has_no_positives():
    locations = [compute_locations(4, 4, 8, "cpu")]
    targets = compute_targets(locations, [ground_truth([], [], torch.zeros(0, 64, 64))], [8], [[-1, INF]],
                              NUM_CLASSES)
    assert (targets.labels == NUM_CLASSES).all() and len(targets.labels) == 16


def hand_made_positives():
    # Image 0: object 0 with scores .9 .5 .7, object 1 with .2; image 1: object 2 with .1 .4 .3 .8.
    scores = torch.tensor([0.9, 0.5, 0.7, 0.2, 0.1, 0.4, 0.3, 0.8])
    return Positives(embeddings=torch.arange(8.0)[:, None].repeat(1, 4), margins=torch.ones(8, 4),
                     gt_index=torch.tensor([0, 0, 0, 1, 2, 2, 2, 2]), image_index=torch.tensor([0] * 4 + [1] * 4),
                     scores=scores)


def test_topk_per_image_splits_the_budget_over_objects_and_keeps_the_best():
    # 4 per image: image 0 has 2 objects -> 2 each (object 1 has only 1); image 1 has one object -> all 4.
    # Kept in order: image by image, object by object, best first within an object that had to be cut.
    kept = select_for_mask_loss(hand_made_positives(), topk_per_image=4)
    assert kept.embeddings[:, 0].tolist() == [0.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    # 1 per image over 2 objects: at least one each, the best of each.
    kept = select_for_mask_loss(hand_made_positives(), topk_per_image=1)
    assert kept.gt_index.tolist() == [0, 1, 2] and kept.embeddings[:, 0].tolist() == [0.0, 3.0, 7.0]


def test_max_proposals_draws_a_random_subset_and_the_two_caps_exclude_each_other():
    torch.manual_seed(0)
    kept = select_for_mask_loss(hand_made_positives(), max_proposals=3)
    assert len(kept) == 3 and len(set(kept.embeddings[:, 0].tolist())) == 3
    torch.manual_seed(0)
    again = select_for_mask_loss(hand_made_positives(), max_proposals=3)
    assert torch.equal(kept.gt_index, again.gt_index)  # a function of torch's RNG state
    assert len(select_for_mask_loss(hand_made_positives(), max_proposals=100)) == 8
    with pytest.raises(ValueError, match="cannot both be set"):
        select_for_mask_loss(hand_made_positives(), max_proposals=3, topk_per_image=4)
