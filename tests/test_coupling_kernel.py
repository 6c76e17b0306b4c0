"""The fused CUDA coupling kernels, run on the CPU by their emulator (csrc/coupling_emulator.cpp replays the same block
programs over the same launch grids), against the PyTorch reference; and the autograd wrapper's fallbacks."""

import warnings

import pytest
import torch

import adet.layers.coupling_fused as fused
from adet.layers.coupling import mask_probability_reference
from adet.layers.coupling_fused import FusedCoupling, emulated_mask_probability, load_emulator


@pytest.fixture(scope="module", autouse=True)
def emulator():
    return load_emulator()  # compiled once (~30 s), cached by torch afterwards


def make_inputs(num_images, dim, height, width, num_proposals, dtype=torch.float32, seed=0, images=None):
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(num_images, dim, height, width, generator=g, dtype=torch.float64)
    embeddings = torch.randn(num_proposals, dim, generator=g, dtype=torch.float64)
    margins = torch.rand(num_proposals, dim, generator=g, dtype=torch.float64) * 0.5 + 0.05
    if images is None:
        images = torch.randint(0, num_images, (num_proposals,), generator=g)
    return pixels.to(dtype), embeddings.to(dtype), margins.to(dtype), images


def relative_error(actual, expected):
    return ((actual.double() - expected.double()).abs().max() / expected.double().abs().max().clamp(min=1e-30)).item()


def run_both(pixels, embeddings, margins, images, seed=1):
    """Probabilities and gradients of a random linear loss, from the emulated kernels and the reference."""
    results = []
    grad_out = None
    for fn in (emulated_mask_probability, mask_probability_reference):
        leaves = [t.detach().clone().requires_grad_() for t in (pixels, embeddings, margins)]
        out = fn(*leaves, images)
        if grad_out is None:
            grad_out = torch.rand(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
        (out * grad_out).sum().backward()
        results.append((out, *[leaf.grad for leaf in leaves]))
    return results


@pytest.mark.parametrize("shape", [
    (1, 16, 25, 38, 7),     # the model's D, one image
    (3, 8, 17, 29, 40),     # several images, some proposals per image
    (2, 40, 9, 13, 5),      # D > 16: the 64-wide instantiation
    (4, 16, 6, 7, 3),       # images without any proposal
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_and_backward_match_the_reference(shape, dtype):
    emulated, reference = run_both(*make_inputs(*shape, dtype=dtype))
    out, expected = emulated[0], reference[0]
    assert out.dtype == dtype and out.shape == expected.shape == (shape[4], shape[2], shape[3])
    tolerance = 1e-6 if dtype == torch.float32 else 1e-13
    assert relative_error(out, expected) < tolerance
    for grad, expected_grad in zip(emulated[1:], reference[1:]):
        assert grad.dtype == dtype and not grad.isnan().any()
        assert relative_error(grad, expected_grad) < 10 * tolerance


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_pixels_are_read_in_their_precision_and_summed_in_float32(dtype):
    pixels, embeddings, margins, images = make_inputs(2, 16, 11, 13, 9)
    # float32 proposals with half pixels: the proposals must not be rounded to half (the reference keeps them).
    emulated, reference = run_both(pixels.to(dtype), embeddings, margins, images)
    assert emulated[0].dtype == torch.float32 and relative_error(emulated[0], reference[0]) < 1e-6
    grad_pixels, grad_embeddings, grad_margins = emulated[1:]
    assert grad_pixels.dtype == dtype and grad_embeddings.dtype == grad_margins.dtype == torch.float32
    assert relative_error(grad_pixels, reference[1]) < 1e-2  # rounded to half on output, like the reference's
    assert relative_error(grad_embeddings, reference[2]) < 1e-5
    assert relative_error(grad_margins, reference[3]) < 1e-5


def test_mixed_dtypes_promote_like_the_reference():
    pixels, embeddings, margins, images = make_inputs(2, 4, 5, 6, 5)
    emulated, reference = run_both(pixels.float(), embeddings.half(), margins.double(), images)
    assert emulated[0].dtype == reference[0].dtype == torch.float64
    assert relative_error(emulated[0], reference[0]) < 1e-12
    assert [g.dtype for g in emulated[1:]] == [torch.float32, torch.float16, torch.float64]


def test_gradcheck_and_gradgradcheck_in_double():
    pixels, embeddings, margins, images = make_inputs(3, 4, 3, 5, 7, dtype=torch.float64)
    inputs = tuple(t.requires_grad_() for t in (pixels, embeddings, margins))
    assert torch.autograd.gradcheck(lambda p, e, m: emulated_mask_probability(p, e, m, images), inputs)
    assert torch.autograd.gradgradcheck(lambda p, e, m: emulated_mask_probability(p, e, m, images), inputs)


def test_no_proposals():
    pixels, embeddings, margins, images = make_inputs(2, 16, 5, 6, 0)
    pixels.requires_grad_()
    out = emulated_mask_probability(pixels, embeddings, margins, images)
    assert out.shape == (0, 5, 6)
    out.sum().backward()
    assert torch.equal(pixels.grad, torch.zeros_like(pixels))


def test_more_proposals_than_one_grid_column():
    """P > 65,535 (CUDA's gridDim.y limit): the forward's rows grid-stride over proposals."""
    num_proposals = 65_535 + 70
    emulated, reference = run_both(*make_inputs(2, 2, 2, 3, num_proposals))
    for actual, expected in zip(emulated, reference):
        assert relative_error(actual, expected) < 1e-5


def test_more_pixels_than_one_grid_row():
    """H*W > 1024 blocks * 256 threads: the pixel loops grid-stride."""
    emulated, reference = run_both(*make_inputs(2, 3, 520, 512, 4))
    for actual, expected in zip(emulated, reference):
        assert relative_error(actual, expected) < 1e-5


def test_non_contiguous_inputs():
    pixels, embeddings, margins, images = make_inputs(3, 16, 9, 11, 12)
    channels_last = pixels.contiguous(memory_format=torch.channels_last)
    features = torch.cat([embeddings, margins], dim=1)  # the model slices one (P, 2D) tensor
    emulated, reference = run_both(channels_last, features[:, :16], features[:, 16:], images[::1])
    strided_images = torch.stack([images, images], 1)[:, 0]
    emulated_strided = emulated_mask_probability(pixels, embeddings.t().contiguous().t(), margins, strided_images)
    assert not channels_last.is_contiguous() and not features[:, :16].is_contiguous()
    assert not strided_images.is_contiguous()
    for actual, expected in zip(emulated, reference):
        assert relative_error(actual, expected) < 1e-6
    assert relative_error(emulated_strided, reference[0]) < 1e-6


def test_only_the_needed_gradients_are_computed(emulator):
    pixels, embeddings, margins, images = make_inputs(2, 16, 5, 6, 4)
    probabilities = emulator.forward(pixels, embeddings, margins, images)
    grad_out = torch.ones_like(probabilities)
    grads = emulator.backward(grad_out, probabilities, pixels, embeddings, margins, images, False, True, False)
    assert grads[0] is None and grads[2] is None and grads[1].shape == embeddings.shape
    # Through autograd: frozen pixels get no gradient and the result does not change.
    embeddings.requires_grad_()
    emulated_mask_probability(pixels, embeddings, margins, images).sum().backward()
    assert pixels.grad is None and torch.allclose(embeddings.grad, grads[1])


@pytest.mark.parametrize("bad_index", [2, -1])
def test_out_of_range_image_index_is_an_error(bad_index):
    pixels, embeddings, margins, images = make_inputs(2, 16, 5, 6, 3)
    images[1] = bad_index
    with pytest.raises(RuntimeError, match="image_indices out of range"):
        emulated_mask_probability(pixels, embeddings, margins, images)
    if bad_index >= 2:  # the reference refuses it too (Python indexing wraps -1 around)
        with pytest.raises(IndexError):
            mask_probability_reference(pixels, embeddings, margins, images)


def test_kernel_checks_its_arguments(emulator):
    pixels, embeddings, margins, images = make_inputs(2, 16, 5, 6, 3)
    with pytest.raises(RuntimeError, match="proposal embeddings and margins must be Float"):
        emulator.forward(pixels, embeddings.half(), margins, images)
    with pytest.raises(RuntimeError, match="image_indices must be int64"):
        emulator.forward(pixels, embeddings, margins, images.int())
    with pytest.raises(RuntimeError, match="pixel_embeddings must be contiguous"):
        emulator.forward(pixels.transpose(2, 3), embeddings, margins, images)
    with pytest.raises(RuntimeError, match="dimensions 1 to 64"):
        emulator.forward(torch.zeros(1, 65, 2, 2), torch.zeros(1, 65), torch.zeros(1, 65), torch.zeros(1).long())


class _BrokenCuda:
    """A CUDA build that fails at run time (as one compiled without this GPU's architecture does)."""

    def __init__(self, fail_forward: bool):
        self.fail_forward = fail_forward

    def forward(self, *args):
        if self.fail_forward:
            raise RuntimeError("CUDA error: no kernel image is available for execution on the device")
        return load_emulator().forward(*args)

    def backward(self, *args):
        raise RuntimeError("CUDA error: no kernel image is available for execution on the device")


@pytest.fixture
def broken_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(fused, "_failed", set())
    monkeypatch.setattr(fused, "_modules", dict(fused._modules))

    def install(fail_forward):
        fused._modules["cuda"] = _BrokenCuda(fail_forward)

    return install


def test_a_failing_cuda_forward_falls_back_with_one_warning(broken_cuda):
    broken_cuda(fail_forward=True)
    inputs = make_inputs(2, 16, 5, 6, 3)
    with pytest.warns(RuntimeWarning, match="no kernel image.*PyTorch implementation"):
        assert fused.fused_mask_probability(*inputs) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once given up, silently the PyTorch path
        assert fused.fused_mask_probability(*inputs) is None


def test_a_failing_cuda_backward_falls_back_to_reference_gradients(broken_cuda):
    broken_cuda(fail_forward=False)
    pixels, embeddings, margins, images = make_inputs(2, 16, 5, 6, 3)
    leaves = [t.clone().requires_grad_() for t in (pixels, embeddings, margins)]
    out = FusedCoupling.apply(fused._modules["cuda"], *leaves, images)
    with pytest.warns(RuntimeWarning, match="PyTorch implementation"):
        out.sum().backward()
    reference = [t.clone().requires_grad_() for t in (pixels, embeddings, margins)]
    mask_probability_reference(*reference, images).sum().backward()
    for leaf, expected in zip(leaves, reference):
        assert relative_error(leaf.grad, expected.grad) < 1e-6
    assert "cuda" in fused._failed


@pytest.mark.parametrize("ninja, nvcc, expected", [
    (False, True, "ninja is not installed"), (True, False, "nvcc, CUDA's compiler, is not found"),
    (False, False, "ninja is not installed (pip install ninja); nvcc")])
def test_a_gpu_machine_without_build_tools_gets_one_warning_naming_them_and_the_pytorch_path(
        monkeypatch, tmp_path, ninja, nvcc, expected):
    import torch.utils.cpp_extension as cpp_extension

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(fused, "_failed", set())
    monkeypatch.setattr(fused, "_modules", {})
    monkeypatch.setattr(fused, "_fix_cuda_home", lambda: None)
    monkeypatch.setattr(fused, "_compile", lambda *a, **k: pytest.fail("a build was attempted without its tools"))
    monkeypatch.setattr(cpp_extension, "is_ninja_available", lambda: ninja)
    home = tmp_path / "cuda"
    (home / "bin").mkdir(parents=True)
    if nvcc:
        (home / "bin" / "nvcc").write_text("")
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", str(home))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv("EMBEDMASK_DISABLE_CUDA_KERNEL", raising=False)
    with pytest.warns(RuntimeWarning, match="fused CUDA coupling kernel failed") as record:
        assert fused.fused_kernel_available() is False
    assert len(record) == 1 and expected in str(record[0].message), [str(r.message) for r in record]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once given up, silently the PyTorch path
        assert fused.fused_kernel_available() is False
        assert fused.fused_mask_probability(*make_inputs(2, 16, 5, 6, 3)) is None
