#!/usr/bin/env python
"""Per-image inference latency of EmbedMask R-50 vs torchvision's Mask R-CNN R-50-FPN, measured in one run
(``embedmask benchmark``), by default with the official R-50 architecture and the deterministic weights of
tests/fixtures/reference/detweights.py, which give 100 detections per image as trained weights do.

    python benchmarks/inference.py                       # CPU, 2 threads, demo/images
    python benchmarks/inference.py --input-size 800x1333 # the same images resized to exactly 800x1333 first
    python benchmarks/inference.py --device cuda --runs 20
    python benchmarks/inference.py --device cuda --precision fp16   # both models under float16 autocast
    python benchmarks/inference.py --input-size 800x1333 --bf16 --with-onnx   # + bf16, ONNX fp32 and ONNX int8

``--with-onnx`` exports the same weights to ONNX and to int8 (calibrated on the timed images at the timed size) and
times both graphs in the same run.
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
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


def export_graphs(weights: str, config_file: str, images: str, input_size: str, folder: str) -> list[str]:
    """["--onnx", float32 graph, "--int8-onnx", int8 graph] of ``weights``, the latter calibrated on ``images``."""
    from adet.cli import export
    from adet.export import ONNXPredictor
    from adet.export.quantize import quantize_int8

    float_path, int8_path = os.path.join(folder, "model.onnx"), os.path.join(folder, "model.int8.onnx")
    export.main(["--weights", weights, "--config-file", config_file, "--output", float_path, "--no-check"])
    predictor = ONNXPredictor(float_path)
    inputs = [predictor.network_input(predictor.preprocess(image))
              for image in benchmark.load_images(images, input_size)]
    report = quantize_int8(float_path, int8_path, inputs)
    print(f"int8 graph calibrated on {report['images']} images in {report['seconds']:.0f} s")
    return ["--onnx", float_path, "--int8-onnx", int8_path]


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
    with_onnx = "--with-onnx" in argv
    argv = [a for a in argv if a != "--with-onnx"]
    with tempfile.TemporaryDirectory() as folder:
        if "--weights" not in argv:
            argv += ["--weights", reference_weights(folder), "--config-file", benchmark.DEFAULT_CONFIG]
        if "--images" not in argv:
            argv += ["--images", os.path.join(ROOT, "demo", "images")]
        if with_onnx:
            args = benchmark.get_parser().parse_args(argv)
            # In a process of its own: Linux passes a process's peak RSS on to the programs it starts, and the
            # export's would stand in every timed model's memory column.
            spawn = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as pool:
                argv += pool.submit(export_graphs, args.weights, args.config_file, args.images, args.input_size,
                                    folder).result()
        benchmark.main(argv)


if __name__ == "__main__":
    main()
