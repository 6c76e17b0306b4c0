"""The fused CUDA coupling kernel on a GPU against the PyTorch reference (skipped without one), and its build with
nvcc (skipped without nvcc). The same kernel code runs on every machine through its CPU emulator:
tests/test_coupling_kernel.py."""

import os
import shutil

import pytest
import torch

from adet.layers.coupling import mask_probability_reference
from adet.layers.coupling_fused import FusedCoupling, fused_kernel_available, load_cuda_extension

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _inputs(num_images, dim, height, width, num_proposals, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(num_images, dim, height, width, generator=g)
    top_feats = torch.randn(num_proposals, 2 * dim, generator=g)
    top_feats[:, dim:] = torch.rand(num_proposals, dim, generator=g) * 0.5 + 0.05
    images = torch.randint(0, num_images, (num_proposals,), generator=g)
    return pixels.cuda().to(dtype), top_feats.cuda().to(dtype), images.cuda()


def _relative_error(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp(min=1e-12)).item()


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(1, 16, 25, 38, 7), (2, 16, 100, 152, 100), (3, 8, 17, 29, 40), (2, 40, 9, 13, 5),
                                   (2, 2, 2, 3, 65_600), (1, 3, 520, 512, 3)])  # grid-strided proposals, pixels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_fused_forward_and_backward_match_the_reference(shape, dtype):
    assert fused_kernel_available()
    num_images, dim, height, width, num_proposals = shape
    pixels, top_feats, images = _inputs(num_images, dim, height, width, num_proposals, dtype)
    # Non-contiguous views, as the model passes them: channels-last pixels, slices of the proposal features.
    pixels_nc = pixels.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2).requires_grad_()
    feats = top_feats.clone().requires_grad_()
    out = FusedCoupling.apply(load_cuda_extension(), pixels_nc, feats[:, :dim], feats[:, dim:], images)
    grad_out = torch.rand_like(out)
    (out * grad_out).sum().backward()

    ref_pixels = pixels.float().clone().requires_grad_()
    ref_feats = top_feats.float().clone().requires_grad_()
    expected = mask_probability_reference(ref_pixels, ref_feats[:, :dim], ref_feats[:, dim:], images)
    (expected * grad_out).sum().backward()
    assert out.dtype == torch.float32 and out.shape == (num_proposals, height, width)
    assert _relative_error(out, expected) < 1e-5
    assert pixels_nc.grad.dtype == dtype and feats.grad.dtype == dtype
    tolerance = 1e-5 if dtype == torch.float32 else 2e-3  # half gradients are rounded to half on output
    assert _relative_error(pixels_nc.grad, ref_pixels.grad) < tolerance
    assert _relative_error(feats.grad, ref_feats.grad) < tolerance


@needs_gpu
@pytest.mark.gpu
def test_fused_gradcheck_in_double_and_empty_proposals():
    pixels, top_feats, images = _inputs(2, 4, 3, 5, 6, torch.float64)
    inputs = (pixels.requires_grad_(), top_feats[:, :4].detach().requires_grad_(),
              top_feats[:, 4:].detach().requires_grad_())
    module = load_cuda_extension()
    assert torch.autograd.gradcheck(lambda p, e, m: FusedCoupling.apply(module, p, e, m, images), inputs)
    from adet.layers import mask_probability

    assert mask_probability(pixels, top_feats[:0, :4], top_feats[:0, 4:], images[:0]).shape == (0, 3, 5)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_kernel_compiles_with_nvcc(monkeypatch):
    """The kernel builds wherever nvcc is, even without a GPU (then for Hopper, the lent GPUs' architecture)."""
    if not torch.cuda.is_available():
        monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", os.environ.get("TORCH_CUDA_ARCH_LIST", "9.0"))
    module = load_cuda_extension()
    assert callable(module.forward) and callable(module.backward)
