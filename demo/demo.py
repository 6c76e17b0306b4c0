#!/usr/bin/env python
"""Run EmbedMask on images and save the predictions drawn on them.

    python demo/demo.py --config-file configs/EmbedMask/MS_R_101_3x.yaml --input demo/images --output demo/outputs \
        --opts MODEL.WEIGHTS models/EmbedMask_R_101_3x.pth

``--input`` takes image files, folders and glob patterns; ``--output`` a folder (or a file name for one input).
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cv2  # noqa: E402

from adet.config import get_cfg  # noqa: E402
from adet.data import ImageReadError, MetadataCatalog, read_image  # noqa: E402
from adet.engine import DefaultPredictor  # noqa: E402
from adet.engine.defaults import run_cli, setup_logger  # noqa: E402
from adet.utils.visualizer import draw_instance_predictions  # noqa: E402

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="EmbedMask demo")
    parser.add_argument("--config-file", default="configs/EmbedMask/MS_R_50_1x.yaml", metavar="FILE")
    parser.add_argument("--input", nargs="+", default=[], help="image files, folders or glob patterns")
    parser.add_argument("--output", default="", help="folder for the drawn images (or a file name for one input)")
    parser.add_argument("--confidence-threshold", type=float, default=0.3,
                        help="minimum cls x centerness probability of a shown detection (score > sqrt of it)")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE config overrides")
    return parser


def setup_cfg(args):
    cfg = get_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.MODEL.FCOS.INFERENCE_TH_TEST = args.confidence_threshold
    cfg.freeze()
    return cfg


def expand_inputs(patterns: list[str]) -> list[str]:
    """Files, every image in a folder (sorted), or glob matches; a pattern matching nothing is an error."""
    paths = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            found = sorted(os.path.join(pattern, f) for f in os.listdir(pattern)
                           if f.lower().endswith(IMAGE_EXTENSIONS))
        elif os.path.isfile(pattern):
            found = [pattern]
        else:
            found = sorted(glob.glob(os.path.expanduser(pattern)))
        if not found:
            raise FileNotFoundError(f"--input {pattern}: no such file, folder or matching images")
        paths.extend(found)
    return paths


def output_path(output: str, input_path: str, num_inputs: int) -> str:
    if num_inputs == 1 and os.path.splitext(output)[1].lower() in IMAGE_EXTENSIONS:
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        return output
    os.makedirs(output, exist_ok=True)
    return os.path.join(output, os.path.basename(input_path))


def class_names_for(cfg, predictor: DefaultPredictor) -> list[str] | None:
    """Names saved in the checkpoint, else those of the first test dataset (COCO for the official configs)."""
    if predictor.class_names:
        return predictor.class_names
    if cfg.DATASETS.TEST:
        return MetadataCatalog.get(cfg.DATASETS.TEST[0]).get("thing_classes")
    return None


def run_on_images(predictor: DefaultPredictor, paths: list[str], output: str, class_names: list[str] | None) -> int:
    """Predict and save each image; unreadable ones are reported and skipped. Returns how many were skipped."""
    from tqdm import tqdm

    skipped = 0
    bar = tqdm(paths, unit="img", dynamic_ncols=True, disable=None)
    for path in bar:
        try:
            image = read_image(path, format="BGR")
        except ImageReadError as e:
            skipped += 1
            tqdm.write(f"skipped {e}")
            continue
        start = time.perf_counter()
        instances = predictor(image)["instances"].to("cpu")
        seconds = time.perf_counter() - start
        message = f"{path}: {len(instances)} instances in {seconds:.2f}s"
        bar.set_postfix_str(f"{seconds:.2f}s/img")
        if not bar.disable:
            bar.set_description(os.path.basename(path))
        else:
            print(message, flush=True)
        if output:
            drawn = draw_instance_predictions(image, instances, class_names)
            cv2.imwrite(output_path(output, path, len(paths)), drawn)
    return skipped


def main(argv: list[str] | None = None) -> None:
    args = get_parser().parse_args(argv)
    setup_logger()
    if not args.input:
        raise FileNotFoundError("no --input given: pass image files, folders or glob patterns")
    cfg = setup_cfg(args)
    paths = expand_inputs(args.input)
    predictor = DefaultPredictor(cfg)
    skipped = run_on_images(predictor, paths, args.output, class_names_for(cfg, predictor))
    done = len(paths) - skipped
    print(f"{done} image(s) processed" + (f", {skipped} skipped" if skipped else "")
          + (f"; results in {args.output}" if args.output else ""))


if __name__ == "__main__":
    sys.exit(run_cli(main))
