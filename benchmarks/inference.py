#!/usr/bin/env python
"""Per-image inference latency of EmbedMask R-50 vs torchvision's Mask R-CNN R-50-FPN, measured in one run
(``embedmask benchmark``), by default with the official R-50 architecture and the deterministic weights of
tests/fixtures/reference/detweights.py, which give 100 detections per image as trained weights do.

    python benchmarks/inference.py                       # CPU, 2 threads, demo/images
    python benchmarks/inference.py --input-size 800x1333 # the same images resized to exactly 800x1333 first
    python benchmarks/inference.py --device cuda --runs 20
    python benchmarks/inference.py --device cuda --precision fp16   # both models under float16 autocast
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE = os.path.join(ROOT, "tests", "fixtures", "reference")
sys.path.insert(0, ROOT)

from adet.cli import benchmark  # noqa: E402


def reference_weights(folder: str) -> str:
    """An official-format R-50 checkpoint of the deterministic reference weights."""
    import torch

    sys.path.insert(0, REFERENCE)
    import detweights

    with open(os.path.join(REFERENCE, "embedmask_R_50_state_dict.json")) as f:
        entries = json.load(f)
    path = os.path.join(folder, "detweights_R_50.pth")
    torch.save({"model": detweights.make_state_dict(entries)}, path)
    return path


def compare(args) -> list[dict]:
    """benchmark.compare with the reference weights when no --weights is given."""
    if not args.weights:
        args.weights = reference_weights(args.tmp)
        args.config_file = args.config_file or benchmark.DEFAULT_CONFIG
    return benchmark.compare(args)


def get_parser():
    return benchmark.get_parser(default_images=os.path.join(ROOT, "demo", "images"))


def main() -> None:
    argv = sys.argv[1:]
    with tempfile.TemporaryDirectory() as folder:
        if "--weights" not in argv:
            argv += ["--weights", reference_weights(folder), "--config-file", benchmark.DEFAULT_CONFIG]
        if "--images" not in argv:
            argv += ["--images", os.path.join(ROOT, "demo", "images")]
        benchmark.main(argv)


if __name__ == "__main__":
    main()
