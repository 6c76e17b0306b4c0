import math

import torch
import torch.nn.functional as F

from adet.layers import (
    FrozenBatchNorm2d,
    aligned_bilinear,
    compute_location_map,
    compute_locations,
    mask_probability,
)
from adet.layers.mask_losses import dice_loss_on_probabilities, lovasz_hinge, lovasz_loss_on_probabilities


def test_aligned_bilinear_matches_the_spec_formula():
    t = torch.tensor([[[[0.0, 4.0, 8.0], [2.0, 6.0, 10.0]]]])
    up2 = aligned_bilinear(t, 2)
    # rows: [T0, T0, (T0+T1)/2, T1]; columns: [c0, c0, (c0+c1)/2, c1, (c1+c2)/2, c2]
    assert up2.shape == (1, 1, 4, 6)
    assert up2[0, 0, 0].tolist() == [0.0, 0.0, 2.0, 4.0, 6.0, 8.0]
    assert up2[0, 0, 2].tolist() == [1.0, 1.0, 3.0, 5.0, 7.0, 9.0]
    assert up2[0, 0, 3].tolist() == [2.0, 2.0, 4.0, 6.0, 8.0, 10.0]
    up4 = aligned_bilinear(t, 4)
    # out[y] = T((y - 2) / 4) for y >= 2, T(0) before; the last row/column is held constant
    assert up4[0, 0, 0, :8].tolist() == [0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert up4[0, 0, -1, -1] == 10.0
    assert torch.equal(aligned_bilinear(t, 1), t)


def test_frozen_batch_norm_formula_and_eps():
    bn = FrozenBatchNorm2d(2)
    bn.weight.copy_(torch.tensor([2.0, 0.5]))
    bn.bias.copy_(torch.tensor([1.0, -1.0]))
    bn.running_mean.copy_(torch.tensor([0.5, 0.0]))
    bn.running_var.copy_(torch.tensor([1.0, 4.0]))
    x = torch.randn(1, 2, 3, 3)
    expected = torch.stack([(x[0, 0] - 0.5) / math.sqrt(1 + 1e-5) * 2 + 1, x[0, 1] / math.sqrt(4 + 1e-5) * 0.5 - 1])
    assert torch.allclose(bn(x)[0], expected, atol=1e-6)
    scale, shift = bn.scale_and_shift()
    assert torch.allclose(x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1), bn(x), atol=1e-6)
    assert list(dict(bn.named_parameters())) == []  # nothing trains


def test_locations_are_cell_centres_row_major():
    locations = compute_locations(2, 3, 8, "cpu")
    assert locations.tolist() == [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12]]
    location_map = compute_location_map(2, 3, 8, "cpu")
    assert location_map.shape == (2, 2, 3) and location_map[0, 1, 2] == 20 and location_map[1, 1, 2] == 12


def test_mask_probability_against_float64_hand_computation():
    torch.manual_seed(0)
    pixels = torch.randn(2, 4, 3, 5)
    embeddings = torch.randn(3, 4)
    margins = torch.rand(3, 4) + 0.1
    images = torch.tensor([1, 0, 1])
    probs = mask_probability(pixels, embeddings, margins, images)
    assert probs.shape == (3, 3, 5)
    for k in range(3):
        for i in range(3):
            for j in range(5):
                distance = sum(margins[k, d].double() * (pixels[images[k], d, i, j].double() - embeddings[k, d]) ** 2
                               for d in range(4))
                assert abs(probs[k, i, j].item() - math.exp(-distance)) < 1e-6
    # A pixel equal to the proposal embedding has probability exactly 1.
    pixels[0, :, 1, 1] = embeddings[1]
    assert mask_probability(pixels, embeddings, margins, images)[1, 1, 1] == 1.0
    empty = mask_probability(pixels, embeddings[:0], margins[:0], images[:0])
    assert empty.shape == (0, 3, 5)


def test_mask_probability_gradcheck():
    torch.manual_seed(1)
    pixels = torch.randn(2, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    embeddings = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    margins = (torch.rand(4, 3, dtype=torch.float64) + 0.2).requires_grad_()
    images = torch.tensor([0, 1, 1, 0])
    assert torch.autograd.gradcheck(lambda p, e, m: mask_probability(p, e, m, images), (pixels, embeddings, margins))


def _official_lovasz_hinge(logits, labels):
    """The official per-instance loop (lovasz_hinge + lovasz_grad), written plainly."""
    signs = 2.0 * labels - 1.0
    errors = 1.0 - logits * signs
    errors_sorted, perm = torch.sort(errors, descending=True)
    gt_sorted = labels[perm]
    gts = gt_sorted.sum()
    jaccard = 1.0 - (gts - gt_sorted.cumsum(0)) / (gts + (1 - gt_sorted).cumsum(0))
    jaccard[1:] = jaccard[1:] - jaccard[:-1]
    return torch.dot(F.relu(errors_sorted), jaccard)


def test_lovasz_hinge_matches_the_official_loop_and_a_hand_case():
    torch.manual_seed(0)
    logits = torch.randn(5, 50) * 3
    labels = (torch.rand(5, 50) > 0.6).float()
    labels[4] = 0  # empty target
    batched = lovasz_hinge(logits, labels)
    for k in range(5):
        assert torch.allclose(batched[k], _official_lovasz_hinge(logits[k], labels[k]), atol=1e-5)
    assert torch.allclose(batched[4], F.relu(1 + logits[4]).max())  # empty target: ReLU(max error)
    # hand case: labels [1, 0], logits [2, -2] are perfectly separated with margin 1 -> loss 0
    assert lovasz_hinge(torch.tensor([[2.0, -2.0]]), torch.tensor([[1.0, 0.0]])).item() == 0.0
    # logits [0, 0]: errors 1, 1; sorted labels [1, 0] -> J = [1 - 0/1, 1 - 0/2] = [1, 1]; grads [1, 0] -> loss 1
    assert lovasz_hinge(torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 0.0]])).item() == 1.0


def test_mask_losses_on_probabilities():
    probs = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    target = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    # clamped at 1e-6: logits +-13.8155 with correct signs -> all errors negative -> loss 0
    assert lovasz_loss_on_probabilities(probs, target).item() == 0.0
    assert torch.allclose(dice_loss_on_probabilities(probs, target), torch.tensor([1 - 4 / (2 + 2 + 1e-5)]))


def test_folding_frozen_batchnorm_keeps_the_outputs(tiny_model):
    from adet.layers import Conv2d, fold_frozen_batchnorm
    from adet.modeling.backbone import ResNet

    torch.manual_seed(0)
    resnet = ResNet(depth=18, out_features=("res3", "res5"))
    for module in resnet.modules():  # non-trivial statistics
        if isinstance(module, FrozenBatchNorm2d):
            module.weight.uniform_(0.5, 1.5)
            module.bias.uniform_(-0.2, 0.2)
            module.running_mean.uniform_(-0.3, 0.3)
            module.running_var.uniform_(0.5, 2.0)
    x = torch.randn(1, 3, 64, 64)
    expected = resnet(x)
    assert fold_frozen_batchnorm(resnet) == sum(isinstance(m, Conv2d) for m in resnet.modules())
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in resnet.modules())
    folded = resnet(x)
    for key in expected:
        assert torch.allclose(folded[key], expected[key], rtol=1e-4, atol=1e-5)


def test_no_grad_coupling_matches_the_reference():
    from adet.layers.coupling import mask_probability_no_grad, mask_probability_reference

    torch.manual_seed(0)
    pixels = torch.randn(3, 16, 20, 30) * 4  # spatial-like magnitudes: cancellation would show in float32
    embeddings = torch.randn(25, 16) * 4
    margins = torch.rand(25, 16) * 2 + 0.05
    images = torch.randint(0, 3, (25,))
    expected = mask_probability_reference(pixels, embeddings, margins, images)
    got = mask_probability_no_grad(pixels, embeddings, margins, images)
    assert got.dtype == torch.float32 and torch.allclose(got, expected, rtol=1e-5, atol=1e-7)
    with torch.no_grad():  # the public entry point takes this route when no gradient is needed
        assert torch.allclose(mask_probability(pixels, embeddings, margins, images), expected, rtol=1e-5, atol=1e-7)
    pixels.requires_grad_()
    assert mask_probability(pixels, embeddings, margins, images).requires_grad
