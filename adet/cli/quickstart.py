"""``embedmask quickstart`` (and ``tools/quickstart.py``): EmbedMask end to end on a fresh machine, offline.

Trains on the bundled synthetic shapes (or reuses the model a previous run cached), evaluates it with the COCO
protocol and draws its predictions on held-out images. Everything is written under the current folder:
``output/embedmask_synthetic/`` (checkpoints, metrics, log, plots), ``models/EmbedMask_synthetic.pth`` and
``demo/outputs/synthetic_*.png``; the data under ``$DETECTRON2_DATASETS`` (default ``datasets/``).
"""

from __future__ import annotations

import os
import shutil
import time

import cv2
import numpy as np

from adet.checkpoint import DetectionCheckpointer, checkpoint_config
from adet.data.builtin import datasets_root
from adet.data.synthetic import IMAGE_SIZE, generate_image
from adet.engine.evaluate import evaluate_datasets
from adet.engine.training.trainer import train
from adet.model_zoo import get_config
from adet.modeling import build_model, prepare_for_inference
from adet.utils.logger import setup_logger

from . import predict
from .options import ArgumentParser

CONFIG = "EmbedMask/Synthetic.yaml"
CACHED_MODEL = os.path.join("models", "EmbedMask_synthetic.pth")
DEMO_OUTPUT = os.path.join("demo", "outputs")


def cached_model_matches(cfg, path: str) -> bool:
    """The cached model exists and was trained with the current model and solver settings and seed (another seed
    gives another model: see docs/quickstart.md)."""
    if not os.path.isfile(path):
        return False
    saved = checkpoint_config(path)
    return (saved is not None and saved.MODEL.dump() == cfg.MODEL.dump() and saved.SOLVER.dump() == cfg.SOLVER.dump()
            and saved.get("SEED") == cfg.SEED)


def write_held_out_images(folder: str, count: int = 6, seed: int = 12345) -> list[str]:
    """Synthetic images the model never saw (a seed used by no split), shown 2x larger as a person would look."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        image, _ = generate_image(rng, *IMAGE_SIZE)
        paths.append(os.path.join(folder, f"synthetic_{i}.png"))
        cv2.imwrite(paths[-1], cv2.resize(image, None, fx=2, fy=2, interpolation=cv2.INTER_LINEAR))
    return paths


def trained_model(cfg, retrain: bool = False) -> dict | None:
    """Trains ``cfg`` into CACHED_MODEL unless a model trained with these settings is there already (or
    ``retrain``). Returns the training's last evaluation, or None when the cached model is reused."""
    if not retrain and cached_model_matches(cfg, CACHED_MODEL):
        setup_logger(cfg.OUTPUT_DIR)
        print(f"Reusing {CACHED_MODEL} (pass --retrain to train again)")
        return None
    print(f"Training {CONFIG} on the synthetic shapes ({cfg.SOLVER.MAX_ITER} iterations)")
    # A fresh run in a folder of an earlier one: the trainer moves that run's metrics and last_checkpoint aside
    # and replaces its checkpoints; the folder may be the user's (``--output-dir .``) and is never emptied.
    setup_logger(cfg.OUTPUT_DIR)
    results = train(cfg)
    os.makedirs(os.path.dirname(CACHED_MODEL), exist_ok=True)
    shutil.copyfile(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"), CACHED_MODEL)
    return results


def quickstart_model() -> str:
    """The quickstart model's path (CACHED_MODEL), trained first if it is missing or out of date."""
    trained_model(get_config(CONFIG))
    return CACHED_MODEL


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    parser = ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--retrain", action="store_true", help="train even if a cached model exists")
    parser.add_argument("--output-dir", default="", metavar="DIR",
                        help="OUTPUT_DIR of the training run (default output/embedmask_synthetic); files of an "
                             "earlier run there are moved aside or replaced, nothing else is touched")
    parser.add_argument("opts", nargs="*", default=[], metavar="KEY VALUE",
                        help="overrides of EmbedMask/Synthetic.yaml, e.g. SOLVER.MAX_ITER 300")
    args = parser.parse_args(argv)
    start = time.perf_counter()

    cfg = get_config(CONFIG)
    cfg.merge_from_list(args.opts + (["OUTPUT_DIR", args.output_dir] if args.output_dir else []))
    results = trained_model(cfg, args.retrain)
    if results is None:  # the cached model: evaluate it as the training would have
        model = build_model(cfg)
        DetectionCheckpointer(model).load(CACHED_MODEL)
        results = evaluate_datasets(cfg, prepare_for_inference(model))

    held_out = os.path.join(datasets_root(), "synthetic", "held_out")
    write_held_out_images(held_out)
    command = ["--weights", CACHED_MODEL, "--input", held_out, "--output", DEMO_OUTPUT]
    print("Running: embedmask predict", " ".join(command))
    predict.main(command)

    metrics = results[cfg.DATASETS.TEST[0]]
    print("\nEmbedMask on synthetic_val (COCO protocol, %):")
    print(f"{'':6}{'AP':>7}{'AP50':>7}{'AP75':>7}")
    for task in ("bbox", "segm"):
        print(f"{task:6}{metrics[task]['AP']:>7.1f}{metrics[task]['AP50']:>7.1f}{metrics[task]['AP75']:>7.1f}")
    plots = os.path.join(cfg.OUTPUT_DIR, "plots")
    print(f"\nOverlays: {DEMO_OUTPUT}/synthetic_*.png")
    if os.path.isdir(plots):
        print(f"Plots:    {plots}/ ({', '.join(sorted(os.listdir(plots)))})")
    print(f"Model:    {CACHED_MODEL}   Done in {(time.perf_counter() - start) / 60:.1f} min")
    return results
