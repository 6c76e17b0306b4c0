"""Install with ``pip install -e .``. No compiler is needed: the fused CUDA coupling kernel compiles on first use on a
CUDA machine. To compile it at install time instead, set ``EMBEDMASK_BUILD_CUDA=1`` and install with
``pip install -e . --no-build-isolation`` (the build then needs torch and nvcc)."""

import os

from setuptools import setup


def cuda_extensions():
    if os.environ.get("EMBEDMASK_BUILD_CUDA", "0") != "1":
        return {}
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    sources = ["adet/layers/csrc/coupling.cpp", "adet/layers/csrc/coupling_kernel.cu"]
    extension = CUDAExtension("adet._coupling_cuda", sources, extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3"]})
    return {"ext_modules": [extension], "cmdclass": {"build_ext": BuildExtension}}


setup(**cuda_extensions())
