"""The fused coupling kernel (``csrc/``): building it, and the autograd Function both of its builds run through.

Two builds of the same kernel code (``csrc/coupling_kernels.h``):

- the CUDA extension, used by :func:`adet.layers.mask_probability` on CUDA tensors: installed with
  ``EMBEDMASK_BUILD_CUDA=1 pip install``, else compiled on first use (cached by torch). If it cannot be built, or a
  call fails at run time (e.g. the build has no code for this GPU's architecture), one warning is given and the
  PyTorch path is used from then on;
- the CPU emulator, which replays the CUDA kernels thread by thread on the CPU (host compiler only). It exists so
  the kernels are tested on every machine: :func:`emulated_mask_probability`.
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import warnings
from types import ModuleType

import torch

from .coupling_reference import check_coupling_inputs, compute_dtype, mask_probability_reference

logger = logging.getLogger(__name__)

_CSRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc")
MAX_FUSED_DIM = 64

_modules: dict[str, ModuleType] = {}
_failed: set[str] = set()


def _compile(name: str, sources: list[str], verbose: bool) -> ModuleType:
    # Imported on first build only: it loads setuptools, which inference and training never need.
    import torch.utils.cpp_extension as cpp_extension

    try:
        build_dir = cpp_extension._get_build_directory(name, verbose=False)
    except Exception:  # noqa: BLE001 - a private helper: if it moves, just always say it
        build_dir = "torch's extension cache"
    if not os.path.exists(os.path.join(build_dir, f"{name}.so")):
        # A long wait with no output looks like a hang; say what is happening (at warning level: shown by default).
        logger.warning("Compiling %s (first use only, a minute or two; cached in %s)", name, build_dir)
    flags = ["-O3"]
    return cpp_extension.load(name=name, sources=[os.path.join(_CSRC, s) for s in sources], verbose=verbose,
                              extra_cflags=flags, extra_cuda_cflags=flags if any(s.endswith(".cu") for s in sources)
                              else None, extra_include_paths=[_CSRC])


def load_cuda_extension(verbose: bool = False) -> ModuleType:
    """The compiled CUDA module (``forward``, ``backward``). Raises if it cannot be built."""
    if "cuda" not in _modules:
        try:
            # Present only when built at install time (EMBEDMASK_BUILD_CUDA=1).
            module = importlib.import_module("adet._coupling_cuda")
        except ImportError:
            _fix_cuda_home()
            missing = missing_build_tools()
            if missing:
                raise RuntimeError(f"cannot compile it: {missing}") from None
            module = _compile("embedmask_coupling_cuda", ["coupling.cpp", "coupling_kernel.cu"], verbose)
        _modules["cuda"] = module
    return _modules["cuda"]


def load_emulator(verbose: bool = False) -> ModuleType:
    """The CPU emulation of the CUDA kernels (same ``forward``/``backward``), built with the host compiler."""
    if "emulator" not in _modules:
        _modules["emulator"] = _compile("embedmask_coupling_emulator", ["coupling_emulator.cpp"], verbose)
    return _modules["emulator"]


def missing_build_tools() -> str | None:
    """What the kernel's build on first use lacks (ninja, nvcc), said before trying, or None. Without them torch's
    builder fails deep inside setuptools with a long log."""
    import torch.utils.cpp_extension as cpp_extension  # as in _compile: only when building

    missing = []
    if not cpp_extension.is_ninja_available():
        missing.append("ninja is not installed (pip install ninja)")
    home = cpp_extension.CUDA_HOME
    if not (home and os.path.exists(os.path.join(home, "bin", "nvcc"))) and shutil.which("nvcc") is None:
        missing.append("nvcc, CUDA's compiler, is not found (install the CUDA toolkit or set CUDA_HOME)")
    return "; ".join(missing) or None


def _fix_cuda_home() -> None:
    """torch guesses CUDA_HOME as the parent of the nvcc on PATH; when that holds no CUDA runtime library (nvcc in
    /usr/local/bin), fall back to /usr/local/cuda."""
    import torch.utils.cpp_extension as cpp_extension  # as in _compile: only when building

    home = cpp_extension.CUDA_HOME
    has_runtime = home and any(os.path.exists(os.path.join(home, lib, "libcudart.so")) for lib in ("lib64", "lib"))
    if not has_runtime and os.path.isdir("/usr/local/cuda") and "CUDA_HOME" not in os.environ:
        cpp_extension.CUDA_HOME = os.environ["CUDA_HOME"] = "/usr/local/cuda"


def _give_up_on_cuda_kernel(error: BaseException) -> None:
    _failed.add("cuda")
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    warnings.warn(f"the fused CUDA coupling kernel failed ({message}); using the PyTorch implementation from now on",
                  RuntimeWarning, stacklevel=3)


def fused_kernel_available() -> bool:
    """Whether the CUDA kernel can be used: a GPU is present, EMBEDMASK_DISABLE_CUDA_KERNEL is not 1, and the kernel
    builds (a failed build warns once)."""
    if "cuda" in _failed or not torch.cuda.is_available() or os.environ.get("EMBEDMASK_DISABLE_CUDA_KERNEL") == "1":
        return False
    try:
        load_cuda_extension()
        return True
    except Exception as e:  # noqa: BLE001 - any build failure means: use the PyTorch path
        _give_up_on_cuda_kernel(e)
        return False


def _kernel_inputs(pixel_embeddings, proposal_embeddings, proposal_margins, image_indices) -> tuple:
    """Promoted as the reference promotes: embeddings and margins in float32 (float64 when any input is float64);
    pixels in their own precision (float64 when the computation is)."""
    acc = compute_dtype(pixel_embeddings, proposal_embeddings, proposal_margins)
    pixels = (pixel_embeddings.to(acc) if acc == torch.float64 else pixel_embeddings).contiguous()
    images = image_indices.to(device=pixels.device, dtype=torch.long).contiguous()
    return pixels, proposal_embeddings.to(acc).contiguous(), proposal_margins.to(acc).contiguous(), images


class FusedCoupling(torch.autograd.Function):
    """``apply(module, pixels, embeddings, margins, image_indices)`` with ``module`` the CUDA build or the emulator;
    dtypes as in :func:`mask_probability_reference`. Only the gradients autograd asks for are computed. Double
    backward (``create_graph=True``) differentiates the PyTorch reference's gradient instead of the kernel's."""

    @staticmethod
    def forward(ctx, module, pixel_embeddings, proposal_embeddings, proposal_margins, image_indices):
        probabilities = module.forward(*_kernel_inputs(pixel_embeddings, proposal_embeddings, proposal_margins,
                                                       image_indices))
        ctx.module = module
        ctx.save_for_backward(pixel_embeddings, proposal_embeddings, proposal_margins, image_indices, probabilities)
        return probabilities

    @staticmethod
    def backward(ctx, grad_output):
        *inputs, probabilities = ctx.saved_tensors
        needed = ctx.needs_input_grad[1:4]
        if torch.is_grad_enabled():  # create_graph: the gradient itself must be differentiable
            grads = _reference_gradients(grad_output, *inputs, needed, create_graph=True)
        else:
            kernel_inputs = _kernel_inputs(*inputs)
            grad_output = grad_output.to(probabilities.dtype).contiguous()
            try:
                grads = ctx.module.backward(grad_output, probabilities, *kernel_inputs, *needed)
            except RuntimeError as e:
                if ctx.module is not _modules.get("cuda"):
                    raise
                _give_up_on_cuda_kernel(e)
                grads = _reference_gradients(grad_output, *inputs, needed)
        grads = [g.to(t.dtype) if need else None for g, need, t in zip(grads, needed, inputs)]
        return (None, *grads, None)


def _reference_gradients(grad_output, pixels, embeddings, margins, images, needed, create_graph=False) -> list:
    if not create_graph:
        pixels, embeddings, margins = (t.detach().requires_grad_(need)
                                       for t, need in zip((pixels, embeddings, margins), needed))
    with torch.enable_grad():
        probabilities = mask_probability_reference(pixels, embeddings, margins, images)
        wanted = [t for t, need in zip((pixels, embeddings, margins), needed) if need]
        grads = iter(torch.autograd.grad(probabilities, wanted, grad_output, create_graph=create_graph))
    return [next(grads) if need else None for need in needed]


def fused_mask_probability(pixel_embeddings: torch.Tensor, proposal_embeddings: torch.Tensor,
                           proposal_margins: torch.Tensor, image_indices: torch.Tensor) -> torch.Tensor | None:
    """The CUDA kernel's (P, H, W) probabilities, or None when it cannot be used here (then warned once)."""
    if pixel_embeddings.shape[1] > MAX_FUSED_DIM or not fused_kernel_available():
        return None
    try:
        return FusedCoupling.apply(_modules["cuda"], pixel_embeddings, proposal_embeddings, proposal_margins,
                                   image_indices)
    except RuntimeError as e:
        _give_up_on_cuda_kernel(e)
        return None


def emulated_mask_probability(pixel_embeddings: torch.Tensor, proposal_embeddings: torch.Tensor,
                              proposal_margins: torch.Tensor, image_indices: torch.Tensor) -> torch.Tensor:
    """:func:`adet.layers.mask_probability` computed by the CUDA kernels' code replayed on the CPU (CPU tensors,
    D <= 64). Differentiable like the CUDA kernel. Slow: for tests of the kernels."""
    check_coupling_inputs(pixel_embeddings, proposal_embeddings, proposal_margins, image_indices)
    return FusedCoupling.apply(load_emulator(), pixel_embeddings, proposal_embeddings, proposal_margins,
                               image_indices)
