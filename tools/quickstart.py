#!/usr/bin/env python
"""EmbedMask end to end on a fresh machine, offline: train on the bundled synthetic shapes (or reuse the model a
previous run cached in models/), evaluate it with the COCO protocol, and draw its predictions on held-out images.

    python tools/quickstart.py             # reuses models/EmbedMask_synthetic.pth when present
    python tools/quickstart.py --retrain   # trains again

Writes: output/embedmask_synthetic/ (checkpoints, metrics.json, log, plots/), models/EmbedMask_synthetic.pth and
demo/outputs/synthetic_*.png.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CONFIG = os.path.join(ROOT, "configs", "EmbedMask", "Synthetic.yaml")
CACHED_MODEL = os.path.join(ROOT, "models", "EmbedMask_synthetic.pth")
HELD_OUT = os.path.join(ROOT, "datasets", "synthetic", "held_out")
DEMO_OUTPUT = os.path.join(ROOT, "demo", "outputs")


def cached_model_matches(cfg) -> bool:
    """The cached model exists and was trained with the current model and solver settings."""
    if not os.path.isfile(CACHED_MODEL):
        return False
    import torch

    from adet.config import get_cfg

    saved = get_cfg()
    saved.merge_from_other_cfg(saved.load_cfg(torch.load(CACHED_MODEL, weights_only=True).get("config", "{}")))
    return saved.MODEL.dump() == cfg.MODEL.dump() and saved.SOLVER.dump() == cfg.SOLVER.dump()


def write_held_out_images(count: int = 6, seed: int = 12345) -> None:
    """Synthetic images the model never saw (a seed used by no split)."""
    import cv2
    import numpy as np

    from adet.data.synthetic import IMAGE_SIZE, generate_image

    os.makedirs(HELD_OUT, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        image, _ = generate_image(rng, *IMAGE_SIZE)
        # Shown 2x larger, as a person would look at them.
        cv2.imwrite(os.path.join(HELD_OUT, f"synthetic_{i}.png"),
                    cv2.resize(image, None, fx=2, fy=2, interpolation=cv2.INTER_LINEAR))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--retrain", action="store_true", help="train even if a cached model exists")
    parser.add_argument("--output-dir", default=os.path.join(ROOT, "output", "embedmask_synthetic"))
    args = parser.parse_args(argv)
    start = time.perf_counter()

    from adet.config import get_cfg
    from adet.engine.defaults import setup_logger
    from adet.engine.evaluate import evaluate_datasets
    from adet.engine.trainer import train

    cfg = get_cfg()
    cfg.merge_from_file(CONFIG)
    cfg.OUTPUT_DIR = args.output_dir
    setup_logger(cfg.OUTPUT_DIR)

    if not args.retrain and cached_model_matches(cfg):
        print(f"Reusing {os.path.relpath(CACHED_MODEL, ROOT)} (pass --retrain to train again)")
        from adet.checkpoint import DetectionCheckpointer
        from adet.modeling import build_model, prepare_for_inference

        model = build_model(cfg)
        DetectionCheckpointer(model).load(CACHED_MODEL)
        results = evaluate_datasets(cfg, prepare_for_inference(model))
    else:
        print(f"Training {os.path.relpath(CONFIG, ROOT)} on the synthetic shapes ({cfg.SOLVER.MAX_ITER} iterations)")
        # A fresh run: an old run's checkpoints in the folder would otherwise be taken for a resume point.
        shutil.rmtree(cfg.OUTPUT_DIR, ignore_errors=True)
        setup_logger(cfg.OUTPUT_DIR)
        results = train(cfg)
        os.makedirs(os.path.dirname(CACHED_MODEL), exist_ok=True)
        shutil.copyfile(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"), CACHED_MODEL)

    write_held_out_images()
    command = [sys.executable, os.path.join(ROOT, "demo", "demo.py"), "--config-file", CONFIG, "--input", HELD_OUT,
               "--output", DEMO_OUTPUT, "--opts", "MODEL.WEIGHTS", CACHED_MODEL]
    print("Running:", " ".join(os.path.relpath(c, ROOT) if c.startswith(ROOT) else c for c in command))
    subprocess.run(command, check=True)

    metrics = results[cfg.DATASETS.TEST[0]]
    print("\nEmbedMask on synthetic_val (COCO protocol, %):")
    print(f"{'':6}{'AP':>7}{'AP50':>7}{'AP75':>7}")
    for task in ("bbox", "segm"):
        print(f"{task:6}{metrics[task]['AP']:>7.1f}{metrics[task]['AP50']:>7.1f}{metrics[task]['AP75']:>7.1f}")
    plots = os.path.join(cfg.OUTPUT_DIR, "plots")
    print(f"\nOverlays: {os.path.relpath(DEMO_OUTPUT, ROOT)}/synthetic_*.png")
    if os.path.isdir(plots):
        print(f"Plots:    {os.path.relpath(plots, ROOT)}/ ({', '.join(sorted(os.listdir(plots)))})")
    print(f"Model:    {os.path.relpath(CACHED_MODEL, ROOT)}   Done in {(time.perf_counter() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
