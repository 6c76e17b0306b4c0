#!/usr/bin/env python
"""Embedding coupling: the fused CUDA kernel vs the dense PyTorch path, forward and forward+backward.

Shapes: D = 16, stride-4 embedding maps of an 800x1216 image (200 x 304), 100 and 500 proposals (inference and
training sizes). On a CUDA machine both paths are timed and their peak GPU memory reported, with the ratio; on a CPU
only the PyTorch path runs (the CPU route).

    python benchmarks/coupling.py
    python benchmarks/coupling.py --device cuda --repeat 50
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from adet.layers.coupling import mask_probability_reference  # noqa: E402
from adet.layers.coupling_fused import FusedCoupling, fused_kernel_available, load_cuda_extension  # noqa: E402


def make_inputs(num_proposals: int, device: str, height: int = 200, width: int = 304, dim: int = 16):
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(2, dim, height, width, generator=generator).to(device)
    embeddings = torch.randn(num_proposals, dim, generator=generator).to(device)
    margins = (torch.rand(num_proposals, dim, generator=generator) * 0.5 + 0.05).to(device)
    images = torch.randint(0, 2, (num_proposals,), generator=generator).to(device)
    return pixels, embeddings, margins, images


def measure(fn, inputs, backward: bool, repeat: int, device: str) -> tuple[float, float]:
    """Median seconds per call and peak memory (MiB; GPU only) of fn(*inputs) (+ backward of its sum)."""
    pixels, embeddings, margins, images = inputs
    leaves = [t.detach().requires_grad_(backward) for t in (pixels, embeddings, margins)]

    def step():
        out = fn(*leaves, images)
        if backward:
            out.sum().backward()
        return out

    step()  # warm-up (and kernel build)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    times = []
    for _ in range(repeat):
        for leaf in leaves:
            leaf.grad = None
        start = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated() - baseline) / 2**20 if device == "cuda" else float("nan")
    return sorted(times)[len(times) // 2], peak


def run(device: str, repeat: int, proposals: tuple[int, ...] = (100, 500), height: int = 200, width: int = 304
        ) -> list[dict]:
    """One row per (proposals, pass, path): seconds, peak MiB (GPU only) and the ratios against the dense path."""
    paths = {"dense PyTorch": mask_probability_reference}
    if device == "cuda":
        if not fused_kernel_available():
            raise RuntimeError("the fused kernel could not be built on this machine")
        module = load_cuda_extension()
        paths["fused CUDA"] = lambda *inputs: FusedCoupling.apply(module, *inputs)
    rows = []
    for num_proposals in proposals:
        inputs = make_inputs(num_proposals, device, height, width)
        for backward in (False, True):
            measured = {k: measure(fn, inputs, backward, repeat, device) for k, fn in paths.items()}
            dense_time, dense_mem = measured["dense PyTorch"]
            for path, (seconds, peak) in measured.items():
                rows.append({"proposals": num_proposals, "pass": "fwd+bwd" if backward else "forward", "path": path,
                             "seconds": seconds, "peak_mib": peak, "speedup": dense_time / seconds,
                             "memory_ratio": peak / dense_mem if dense_mem == dense_mem and dense_mem > 0
                             else float("nan")})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    try:
        rows = run(args.device, args.repeat)
    except RuntimeError as e:
        sys.exit(str(e))
    name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {args.threads} threads"
    print(f"device: {name}; D=16, 2 images of 200x304 (stride 4 of 800x1216); median of {args.repeat}")
    print(f"{'proposals':>9}  {'pass':<16}{'path':<15}{'time ms':>10}{'peak MiB':>10}{'speed-up':>10}{'mem ratio':>10}")
    for r in rows:
        print(f"{r['proposals']:>9}  {r['pass']:<16}{r['path']:<15}{r['seconds'] * 1000:>10.2f}{r['peak_mib']:>10.0f}"
              f"{r['speedup']:>9.1f}x{r['memory_ratio']:>9.2f}x")


if __name__ == "__main__":
    main()
