#!/usr/bin/env python
"""Run EmbedMask on images and save the predictions drawn on them.

    python demo/demo.py --config-file configs/EmbedMask/MS_R_101_3x.yaml --input demo/images --output demo/outputs \
        --opts MODEL.WEIGHTS models/EmbedMask_R_101_3x.pth

``--input`` takes image files, folders and glob patterns; ``--output`` a folder (or a file name for one input).
``--video-input FILE`` writes an annotated video, ``--webcam`` records (or shows) the camera stream, ``--json FILE``
saves the predictions as COCO-style results with RLE masks.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cv2  # noqa: E402

from adet.config import get_cfg  # noqa: E402
from adet.data import ImageReadError, MetadataCatalog, read_image  # noqa: E402
from adet.engine import DefaultPredictor  # noqa: E402
from adet.engine.defaults import run_cli, setup_logger  # noqa: E402
from adet.evaluation import instances_to_coco_json  # noqa: E402
from adet.utils.visualizer import draw_instance_predictions  # noqa: E402

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="EmbedMask demo")
    parser.add_argument("--config-file", default="configs/EmbedMask/MS_R_50_1x.yaml", metavar="FILE")
    parser.add_argument("--input", nargs="+", default=[], help="image files, folders or glob patterns")
    parser.add_argument("--video-input", default="", help="a video file to annotate")
    parser.add_argument("--webcam", action="store_true", help="the first camera (shown, or recorded to --output)")
    parser.add_argument("--json", default="", help="save predictions as COCO-style results (RLE masks) to FILE")
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


class JsonResults:
    """Collects predictions as COCO-style results: category ids of the dataset (COCO ids for COCO models),
    XYWH boxes, scores, RLE masks, plus the file name and class name of each detection."""

    def __init__(self, path: str, class_names: list[str] | None, id_map: dict[int, int] | None):
        self.path, self.class_names, self.records = path, class_names, []
        self.to_dataset_id = {v: k for k, v in (id_map or {}).items()}

    def add(self, image_index: int, source: str, instances) -> None:
        if not self.path:
            return
        for record in instances_to_coco_json(instances, image_index):
            contiguous = record["category_id"]
            record["category_id"] = self.to_dataset_id.get(contiguous, contiguous)
            if self.class_names and contiguous < len(self.class_names):
                record["category_name"] = self.class_names[contiguous]
            record["file_name"] = source
            self.records.append(record)

    def save(self) -> None:
        if self.path:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            with open(self.path, "w") as f:
                json.dump(self.records, f)
            print(f"{len(self.records)} detections saved to {self.path}")


def run_on_images(predictor: DefaultPredictor, paths: list[str], output: str, class_names: list[str] | None,
                  results: JsonResults) -> int:
    """Predict and save each image; unreadable ones are reported and skipped. Returns how many were skipped."""
    from tqdm import tqdm

    skipped = 0
    bar = tqdm(paths, unit="img", dynamic_ncols=True, disable=None)
    for index, path in enumerate(bar):
        try:
            image = read_image(path, format="BGR")
        except ImageReadError as e:
            skipped += 1
            tqdm.write(f"skipped {e}")
            continue
        start = time.perf_counter()
        instances = predictor(image)["instances"].to("cpu")
        seconds = time.perf_counter() - start
        results.add(index, path, instances)
        if bar.disable:
            noun = "instance" if len(instances) == 1 else "instances"
            print(f"{path}: {len(instances)} {noun} in {seconds:.2f}s", flush=True)
        else:
            bar.set_description(os.path.basename(path))
            bar.set_postfix_str(f"{seconds:.2f}s/img")
        if output:
            drawn = draw_instance_predictions(image, instances, class_names)
            cv2.imwrite(output_path(output, path, len(paths)), drawn)
    return skipped


def run_on_video(predictor: DefaultPredictor, capture, output_file: str, class_names: list[str] | None,
                 results: JsonResults, source: str, show: bool = False) -> int:
    """Annotate every frame of an opened cv2.VideoCapture into ``output_file`` (mp4) and/or a window."""
    from tqdm import tqdm

    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    writer = None
    count = 0
    with tqdm(total=frames, unit="frame", dynamic_ncols=True, disable=None) as bar:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            instances = predictor(frame)["instances"].to("cpu")
            results.add(count, f"{source}#{count}", instances)
            drawn = draw_instance_predictions(frame, instances, class_names)
            if output_file:
                if writer is None:
                    os.makedirs(os.path.dirname(os.path.abspath(output_file)), exist_ok=True)
                    writer = cv2.VideoWriter(output_file, cv2.VideoWriter_fourcc(*"mp4v"), fps,
                                             (drawn.shape[1], drawn.shape[0]))
                writer.write(drawn)
            if show:
                cv2.imshow("EmbedMask", drawn)
                if cv2.waitKey(1) == 27:  # Esc
                    break
            count += 1
            bar.update(1)
    if writer is not None:
        writer.release()
    return count


def video_output_path(output: str, source: str) -> str:
    if not output:
        return ""
    if os.path.splitext(output)[1]:
        return output
    return os.path.join(output, os.path.splitext(os.path.basename(source))[0] + ".mp4")


def opencv_has_gui() -> bool:
    """False for opencv-python-headless, whose build information reads "GUI: NONE"."""
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GUI:"):
            return "NONE" not in line
    return True


def open_webcam(output: str):
    """Camera 0, and whether to show it in a window (without --output, which needs a GUI-enabled OpenCV)."""
    show = not output
    if show and not opencv_has_gui():
        raise FileNotFoundError("--webcam: this OpenCV build cannot open windows (opencv-python-headless); pass "
                                "--output FILE.mp4 to record the annotated stream instead")
    capture = cv2.VideoCapture(0)
    if not capture.isOpened():
        raise FileNotFoundError("--webcam: no camera found (could not open camera 0)")
    return capture, show


def main(argv: list[str] | None = None) -> None:
    args = get_parser().parse_args(argv)
    setup_logger()
    sources = sum(bool(x) for x in (args.input, args.video_input, args.webcam))
    if sources != 1:
        raise FileNotFoundError("pass exactly one of --input (images), --video-input (a video) or --webcam")
    cfg = setup_cfg(args)
    paths = expand_inputs(args.input) if args.input else []
    if args.video_input and not os.path.isfile(args.video_input):
        raise FileNotFoundError(f"--video-input {args.video_input}: no such file")
    predictor = DefaultPredictor(cfg)
    class_names = class_names_for(cfg, predictor)
    id_map = MetadataCatalog.get(cfg.DATASETS.TEST[0]).get("thing_dataset_id_to_contiguous_id") if (
        cfg.DATASETS.TEST and not predictor.class_names) else None
    results = JsonResults(args.json, class_names, id_map)
    if paths:
        skipped = run_on_images(predictor, paths, args.output, class_names, results)
        print(f"{len(paths) - skipped} image(s) processed" + (f", {skipped} skipped" if skipped else "")
              + (f"; results in {args.output}" if args.output else ""))
    elif args.video_input:
        capture = cv2.VideoCapture(args.video_input)
        if not capture.isOpened():
            raise FileNotFoundError(f"--video-input {args.video_input}: not a readable video")
        target = video_output_path(args.output, args.video_input)
        frames = run_on_video(predictor, capture, target, class_names, results, args.video_input)
        capture.release()
        print(f"{frames} frame(s) processed" + (f"; annotated video in {target}" if target else ""))
    else:
        capture, show = open_webcam(args.output)
        target = video_output_path(args.output, "webcam")
        frames = run_on_video(predictor, capture, target, class_names, results, "webcam", show=show)
        capture.release()
        print(f"{frames} frame(s) processed")
    results.save()


if __name__ == "__main__":
    sys.exit(run_cli(main))
