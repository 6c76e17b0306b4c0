import numpy as np
import pytest
import torch

from adet.structures import BitMasks, Boxes, ImageList, Instances, PolygonMasks, pairwise_iou, polygons_to_bitmask


def test_boxes_area_clip_nonempty_scale():
    boxes = Boxes(torch.tensor([[-5.0, 2.0, 20.0, 12.0], [3.0, 3.0, 3.0, 9.0], [50.0, 60.0, 70.0, 90.0]]))
    assert boxes.area().tolist() == [250.0, 0.0, 600.0]
    boxes.clip((40, 60))  # (height, width)
    assert boxes.tensor.tolist() == [[0.0, 2.0, 20.0, 12.0], [3.0, 3.0, 3.0, 9.0], [50.0, 40.0, 60.0, 40.0]]
    assert boxes.nonempty().tolist() == [True, False, False]
    boxes.scale(2.0, 0.5)
    assert boxes.tensor[0].tolist() == [0.0, 1.0, 40.0, 6.0]
    assert len(Boxes(torch.zeros(0))) == 0 and Boxes([]).tensor.shape == (0, 4)
    assert Boxes.cat([boxes[0], boxes[1:]]).tensor.shape == (3, 4)
    with pytest.raises(ValueError, match="shape"):
        Boxes(torch.zeros(3, 5))


def test_pairwise_iou_hand_computed():
    a = Boxes(torch.tensor([[0.0, 0.0, 10.0, 10.0]]))
    b = Boxes(torch.tensor([[5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0], [0.0, 0.0, 10.0, 10.0]]))
    # overlap 50 over union 150
    assert torch.allclose(pairwise_iou(a, b), torch.tensor([[1 / 3, 0.0, 1.0]]))


def test_instances_fields_indexing_and_cat():
    inst = Instances((10, 20), scores=torch.tensor([0.75, 0.25, 0.5]))
    inst.pred_boxes = Boxes(torch.arange(12.0).view(3, 4))
    assert len(inst) == 3 and inst.image_size == (10, 20) and inst.has("scores")
    picked = inst[inst.scores > 0.4]
    assert picked.scores.tolist() == [0.75, 0.5] and picked.pred_boxes.tensor[1].tolist() == [8.0, 9.0, 10.0, 11.0]
    assert inst[1].scores.tolist() == [0.25] and inst[-1].scores.tolist() == [0.5]
    merged = Instances.cat([inst, picked])
    assert len(merged) == 5 and merged.pred_boxes.tensor.shape == (5, 4)
    with pytest.raises(ValueError, match="length"):
        inst.pred_classes = torch.zeros(2)
    with pytest.raises(AttributeError, match="missing"):
        _ = inst.missing
    with pytest.raises(ValueError, match="image size"):
        Instances.cat([inst, Instances((5, 5), scores=torch.zeros(1))])


def test_image_list_pads_bottom_right_to_divisibility():
    a = torch.ones(3, 5, 7)
    b = torch.full((3, 8, 4), 2.0)
    images = ImageList.from_tensors([a, b], size_divisibility=4, pad_value=-1.0)
    assert images.tensor.shape == (2, 3, 8, 8) and images.image_sizes == [(5, 7), (8, 4)]
    assert (images.tensor[0, :, :5, :7] == 1).all() and (images.tensor[0, :, 5:, :] == -1).all()
    assert (images.tensor[1, :, :, 4:] == -1).all() and torch.equal(images[1], b)
    single = ImageList.from_tensors([a], size_divisibility=32)
    assert single.tensor.shape == (1, 3, 32, 32) and single.tensor[0, 0, 31, 31] == 0


def test_polygon_masks_box_area_and_rasterisation():
    square = np.array([10.0, 10.0, 20.0, 10.0, 20.0, 20.0, 10.0, 20.0])
    triangle = np.array([0.0, 0.0, 4.0, 0.0, 0.0, 3.0])
    masks = PolygonMasks([[square], [triangle, square + 30]])
    assert masks.area().tolist() == [100.0, 6.0 + 100.0]
    assert masks.get_bounding_boxes().tensor.tolist() == [[10.0, 10.0, 20.0, 20.0], [0.0, 0.0, 50.0, 50.0]]
    assert len(masks[torch.tensor([True, False])]) == 1 and len(PolygonMasks.cat([masks, masks])) == 4
    bitmap = polygons_to_bitmask([square], 32, 32)
    assert bitmap.shape == (32, 32) and bitmap.dtype == bool
    assert bitmap.sum() == 100 and bitmap[10:20, 10:20].all()  # pycocotools' rasterisation of a 10x10 square
    with pytest.raises(ValueError, match=">= 6"):
        PolygonMasks([[np.array([1.0, 2.0, 3.0, 4.0])]])


def test_bitmasks_boxes_and_from_polygons():
    square = np.array([10.0, 10.0, 20.0, 10.0, 20.0, 20.0, 10.0, 20.0])
    bitmasks = BitMasks.from_polygon_masks(PolygonMasks([[square]]), 32, 40)
    assert bitmasks.tensor.shape == (1, 32, 40) and bitmasks.area().tolist() == [100.0]
    assert bitmasks.get_bounding_boxes().tensor.tolist() == [[10.0, 10.0, 20.0, 20.0]]
    empty = BitMasks(torch.zeros(2, 4, 4))
    assert empty.nonempty().tolist() == [False, False]


def test_encode_masks_writes_the_rle_pycocotools_writes():
    """Runs found inside each mask's bounding box give pycocotools' own RLE strings, including the edge cases: empty,
    full, the first and last pixel, and runs that continue from the bottom of one column to the top of the next."""
    import pycocotools.mask as mask_util

    from adet.structures.rle import encode_local_mask

    height, width = 13, 9
    cases = [np.zeros((height, width), bool), np.ones((height, width), bool)]
    for rows, cols in ((-1, -1), (0, 0), (slice(None), slice(3, 5)), (slice(8, None), slice(2, 7))):
        mask = np.zeros((height, width), bool)
        mask[rows, cols] = True
        cases.append(mask)
    joined = np.zeros((height, width), bool)
    joined[-1, 2] = joined[0, 3] = True  # one run of two pixels across a column boundary
    cases.append(joined)
    rng = np.random.default_rng(0)
    for _ in range(300):
        h, w = rng.integers(1, 20, 2)
        mask = rng.random((h, w)) < rng.random()
        top, bottom = sorted(rng.integers(0, h + 1, 2))
        mask[:top], mask[bottom:] = False, False
        cases.append(mask)
    for mask in cases:
        expected = mask_util.encode(np.asfortranarray(mask[:, :, None].astype(np.uint8)))[0]
        got = encode_local_mask(mask, 0, 0, *mask.shape)
        assert got == {"size": list(mask.shape), "counts": expected["counts"].decode()}, mask.astype(int)
