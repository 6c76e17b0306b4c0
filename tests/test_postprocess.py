import pytest
import torch
import torch.nn.functional as F

from adet.layers import aligned_bilinear
from adet.modeling.embedmask.postprocess import mask_factors, mask_operators, paste_masks, resize_operator


def paste(probs, crop, out_size, threshold):
    """The masks of (P, 13, 19) stride-8 probabilities of a 104 x 152 padded input whose image is ``crop``."""
    rows, cols = mask_operators(probs.shape[-2:], (104, 152), crop, out_size, 4, probs.device)
    return paste_masks(probs, rows, cols, threshold).to_tensor()


def official_chain(probs, crop, out_size):
    """The official postprocess, step by step at full resolution (spec section 6)."""
    x = aligned_bilinear(probs[:, None], 2)
    x = aligned_bilinear(x, 4)[:, :, : crop[0], : crop[1]]
    return F.interpolate(x, size=out_size, mode="bilinear", align_corners=False)[:, 0]


@pytest.mark.parametrize("out_size", [(67, 99), (211, 300), (100, 150)])
def test_separable_masks_equal_the_official_chain(out_size):
    torch.manual_seed(0)
    probs = torch.rand(20, 13, 19) ** 3  # stride-8 map of a 104 x 152 padded input, resized image 100 x 150
    expected_values = official_chain(probs, (100, 150), out_size)
    masks = paste(probs, (100, 150), out_size, 0.5)
    assert masks.shape == (20, *out_size) and masks.dtype == torch.bool
    disagree = masks != (expected_values > 0.5)
    # Only float rounding separates the two: disagreements sit within 1e-5 of the threshold.
    assert ((expected_values[disagree] - 0.5).abs() < 1e-5).all()
    assert disagree.sum() <= 2


def test_resize_operator_reproduces_each_step():
    signal = torch.randn(7)
    op = resize_operator(7, [2, 4], 50, 31, torch.device("cpu"))
    column = signal.view(1, 1, 7, 1)
    expected = official_chain(column[:, 0].expand(1, 7, 3).contiguous(), (50, 12), (31, 12))[0, :, 0]
    assert torch.allclose(op @ signal, expected, atol=1e-5)


def test_mask_factors():
    assert mask_factors((100, 152), (800, 1216)) == [2, 4]
    assert mask_factors((100, 152), (800, 1216), mask_out_stride=8) == [8]
    assert mask_factors((50, 76), (800, 1216), mask_out_stride=4) == [4, 4]
    with pytest.raises(ValueError, match="uniform"):
        mask_factors((100, 150), (800, 1216))


def test_resize_operator_interpolates():
    # paste_masks skips output pixels whose inputs are all below the threshold: sound only for convex combinations.
    op = resize_operator(13, [2, 4], 100, 211, torch.device("cpu"))
    assert (op >= 0).all()
    assert torch.allclose(op.sum(1), torch.ones(211), atol=1e-6)


def test_localized_masks_equal_the_official_chain():
    # Object-like masks: blobs in a small part of the map, one mask entirely below the threshold, one touching a
    # corner, so the per-mask output rectangle is what the result depends on.
    torch.manual_seed(1)
    yy, xx = torch.meshgrid(torch.arange(13.0), torch.arange(19.0), indexing="ij")
    centers = torch.tensor([[3.0, 4.0], [9.5, 15.0], [0.0, 0.0], [12.0, 18.0], [6.0, 9.0]])
    radii = torch.tensor([1.5, 2.5, 1.0, 3.0, 0.7])
    squared_distance = (yy - centers[:, :1, None]) ** 2 + (xx - centers[:, 1:, None]) ** 2
    probs = torch.exp(-squared_distance / radii[:, None, None] ** 2)
    probs[4] *= 0.45  # never above 0.5: an empty mask
    out_size = (211, 300)
    expected = official_chain(probs, (100, 150), out_size) > 0.5
    masks = paste(probs, (100, 150), out_size, 0.5)
    assert (masks == expected).all()
    assert not masks[4].any()
    assert masks[2, 0, 0] and masks[3, -1, -1]
    assert masks[0].sum() < 0.05 * 211 * 300  # localized indeed


def test_non_positive_threshold_keeps_every_pixel_reachable():
    probs = torch.zeros(2, 13, 19)
    assert paste(probs, (100, 150), (50, 60), -0.1).all()
    assert not paste(probs, (100, 150), (50, 60), 0.0).any()
