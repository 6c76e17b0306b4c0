"""``embedmask predict`` (and ``demo/demo.py``): run a model on images, a video or the webcam, draw the predictions
and optionally save them as COCO results.

    embedmask predict --weights output/x/model_final.pth --input photos/ --output drawn/ --json results.json
    python demo/demo.py --config-file configs/EmbedMask/MS_R_101_3x.yaml --input demo/images --output demo/outputs \\
        --opts MODEL.WEIGHTS models/EmbedMask_R_101_3x.pth

``--input`` takes image files, folders and glob patterns; ``--output`` a folder (or a file name for one input).
"""

from __future__ import annotations

import argparse
import glob
import logging
import os

import cv2
from tqdm import tqdm

from adet.api import Model, load_config
from adet.config import set_score_threshold
from adet.engine.distributed.launch import check_devices, launch, restart_count
from adet.engine.inference.remote import RemoteBackend, is_server_url
from adet.engine.inference.sliced import slice_overrides, sliced
from adet.errors import InputError, PreflightError
from adet.export import ONNXPredictor
from adet.utils import comm
from adet.utils.logger import setup_logger

from . import preflight as check
from .errors import report_error
from .options import CONFIG_KEY, ArgumentParser, add_config_arguments, add_launch_arguments
from .predict_images import predict_images
from .preflight import check_config_values, check_device, check_output_file, check_output_folder, check_weights
from .results import IMAGE_EXTENSIONS, JsonResults

logger = logging.getLogger(__name__)

def build_parser(prog: str | None = None) -> ArgumentParser:
    parser = ArgumentParser(prog=prog, description="Run EmbedMask on images, a video or the webcam")
    add_config_arguments(parser)
    parser.add_argument("--onnx", default="", metavar="FILE.onnx",
                        help="run an exported model (embedmask export) with ONNX Runtime instead")
    parser.add_argument("--input", nargs="+", default=[], help="image files, folders or glob patterns")
    parser.add_argument("--video-input", default="", help="a video file to annotate")
    parser.add_argument("--webcam", action="store_true", help="the first camera (shown, or recorded to --output)")
    parser.add_argument("--output", default="", help="folder for the drawn images (or a file name for one input)")
    parser.add_argument("--json", default="", metavar="FILE",
                        help="save the predictions as COCO results (dataset category ids, RLE masks) to FILE")
    parser.add_argument("--ground-truth", default="", metavar="JSON",
                        help="a COCO annotation file of the inputs: --json then uses its image and category ids")
    parser.add_argument("--confidence-threshold", type=float, default=0.5,
                        help="minimum score of a kept detection: the score shown in labels and in --json, "
                             "sqrt(class probability x centerness) (default 0.5)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--opts", dest="flag_opts", nargs="*", default=[], metavar="KEY VALUE",
                        help="config overrides (as in AdelaiDet's demo; applied before the trailing ones)")
    parser.add_argument("--batch-size", type=int, default=0, metavar="N",
                        help="images per model call (default: 8 on a GPU, 4 on the CPU); a batch holds images of "
                             "one padded size: 1 gives the one-image detections bit for bit, more the same up to "
                             "float rounding; with --slice: tiles per model call (default TEST.SLICE.BATCH_SIZE)")
    parser.add_argument("--workers", type=int, default=2, metavar="N",
                        help="loader processes reading and resizing images ahead of the model (default 2; 0: none)")
    parser.add_argument("--slice", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="sliced inference for large images: overlapping tiles of H x W pixels, each predicted "
                             "at its own resolution, the detections merged")
    parser.add_argument("--overlap", type=float, default=None,
                        help="with --slice: how much neighbouring tiles overlap, a fraction of a tile (default: "
                             "TEST.SLICE.OVERLAP, 0.5)")
    parser.add_argument("--no-full-image", action="store_true",
                        help="with --slice: no extra pass over the whole image (for objects larger than a tile)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run into the same --output/--json: the images already done "
                             "are skipped (refused unless the weights, by content, config and threshold are the "
                             "same); without it a run predicts every image afresh")
    add_launch_arguments(parser)
    parser.epilog += ("\n\nResults stream to predictions.rank<R>.jsonl in --output (or <--json>.parts), one line per "
                      "image, and --json is assembled from them at the end; --resume (or a restarted torchrun or "
                      "SLURM job) skips the images already done.")
    return parser


def split_overrides(args: argparse.Namespace) -> list[str]:
    """All KEY VALUE overrides; pairs that --input's list swallowed (``--input a.jpg MODEL.WEIGHTS w.pth``) are
    taken back out of it."""
    overrides = list(args.flag_opts) + list(args.opts)
    inputs, k = [], 0
    while k < len(args.input):
        token = args.input[k]
        if CONFIG_KEY.match(token) and not os.path.exists(token) and k + 1 < len(args.input):
            overrides += [token, args.input[k + 1]]
            k += 2
        else:
            inputs.append(token)
            k += 1
    args.input = inputs
    return overrides


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
            raise InputError(f"--input {pattern}: no such file, folder or matching images")
        paths.extend(found)
    return paths


def run_on_video(predictor, capture, output_file: str, results: JsonResults, source: str, show: bool = False) -> int:
    """Annotate every frame of an opened cv2.VideoCapture into ``output_file`` (mp4) and/or a window."""
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    writer = None
    count = 0
    with tqdm(total=frames, unit="frame", dynamic_ncols=True, disable=None) as bar:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            prediction = predictor.predict(frame, "BGR")
            results.add(prediction, f"{source}#{count}")
            drawn = prediction.draw()
            if output_file:
                if writer is None:
                    writer = cv2.VideoWriter(output_file, cv2.VideoWriter_fourcc(*"mp4v"), fps,
                                             (drawn.shape[1], drawn.shape[0]))
                    if not writer.isOpened():
                        raise OSError(f"--output {output_file}: cannot write a video there")
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
        raise InputError("--webcam: this OpenCV build cannot open windows (opencv-python-headless); pass "
                                "--output FILE.mp4 to record the annotated stream instead")
    capture = cv2.VideoCapture(0)
    if not capture.isOpened():
        raise InputError("--webcam: no camera found (could not open camera 0)")
    return capture, show


def slicing(args: argparse.Namespace) -> list:
    """The config overrides of --slice, --overlap, --no-full-image (and --batch-size: tiles per call)."""
    if args.slice is None:
        return []
    return slice_overrides(args.slice, args.overlap, False if args.no_full_image else None, args.batch_size or None)


def onnx_predictor(args: argparse.Namespace, overrides: list[str]):
    """A Model running ``--onnx`` in ONNX Runtime (sliced with --slice); the score threshold applies to its
    output."""
    if args.weights or args.config_file or overrides:
        raise PreflightError("--onnx: the exported file holds the model and its config; --weights, --config-file "
                             "and KEY VALUE overrides do not apply to it")
    if not os.path.isfile(args.onnx):
        raise InputError(f"--onnx {args.onnx}: no such file")
    providers = ["CPUExecutionProvider"] if args.device == "cpu" else None
    return Model(sliced(ONNXPredictor(args.onnx, providers), slicing(args)), min_score=args.confidence_threshold)


def remote_predictor(args: argparse.Namespace, overrides: list[str]) -> Model:
    """A Model whose predictions an EmbedMask server at ``--weights http://host:port`` computes (sliced here with
    --slice); --confidence-threshold becomes each request's threshold."""
    if args.config_file or overrides or args.device not in (None, "cpu"):
        raise PreflightError(f"--weights {args.weights}: a served model runs as its server configured it; "
                             "--config-file, --device and KEY VALUE overrides do not apply to it")
    return Model(sliced(RemoteBackend(args.weights, args.confidence_threshold), slicing(args)))


def predict_config(args: argparse.Namespace, overrides: list[str]):
    """The checked config of the PyTorch model, whose threshold is --confidence-threshold
    (:func:`adet.config.set_score_threshold`; what it leaves to filter is ``args.min_score``)."""
    cfg = load_config(args.weights, args.config_file or None, overrides, args.device)
    cfg.defrost()
    args.min_score = set_score_threshold(cfg, args.confidence_threshold, "--confidence-threshold")
    check_device(cfg.MODEL.DEVICE)
    check_config_values(cfg)
    check_weights(cfg.MODEL.WEIGHTS, required=True, what="--weights" if args.weights else "MODEL.WEIGHTS")
    if cfg.MODEL.WEIGHTS.endswith(".pkl"):
        raise PreflightError(f"MODEL.WEIGHTS {cfg.MODEL.WEIGHTS}: ImageNet backbone weights; prediction needs a "
                             "trained EmbedMask checkpoint (.pth)")
    return cfg


def image_worker(model_source, args: argparse.Namespace, paths: list[str], onnx_model: Model | None = None) -> dict:
    """One process's share of the images (``model_source``: the config, or the ONNX file, whose session
    ``onnx_model`` already holds: a worker in this process uses it, a spawned one opens the file once)."""
    setup_logger(rank=comm.get_rank())
    predictor = onnx_model if onnx_model is not None else Model(model_source, min_score=args.min_score)
    return predict_images(predictor, args, paths, model_source)


def check_arguments(args: argparse.Namespace) -> list[str]:
    """The inputs (image paths) of a valid command line, whose outputs are checked before any model is loaded."""
    if not 0 <= args.confidence_threshold <= 1:
        raise PreflightError(f"--confidence-threshold {args.confidence_threshold}: a score threshold is between 0 "
                             "and 1")
    if args.device is not None:
        check_device(args.device, "--device")
    if sum(bool(x) for x in (args.input, args.video_input, args.webcam)) != 1:
        raise InputError("pass exactly one of --input (images), --video-input (a video) or --webcam")
    paths = expand_inputs(args.input) if args.input else []
    if args.video_input and not os.path.isfile(args.video_input):
        raise InputError(f"--video-input {args.video_input}: no such file")
    if args.output:
        single_file = (len(paths) == 1 and os.path.splitext(args.output)[1].lower() in IMAGE_EXTENSIONS) or (
            not paths and os.path.splitext(args.output)[1])
        (check_output_file if single_file else check_output_folder)(args.output, "--output")
    if args.json:
        check_output_file(args.json, "--json")
    return paths


def main(argv: list[str] | None = None, prog: str | None = None) -> dict | None:
    args = build_parser(prog).parse_args(argv)
    overrides = split_overrides(args)
    setup_logger()
    paths = check_arguments(args)
    if restart_count() and not args.resume:
        args.resume = True  # a restarted job continues its run, as training does
        logger.info("Restart %d of this job: skipping the images the earlier attempt finished", restart_count())
    check.check_launch(args.num_gpus, args.num_machines, args.machine_rank, args.dist_url)
    if args.batch_size < 0 or args.workers < 0:
        raise PreflightError("--batch-size and --workers must not be negative")
    if args.slice is not None and (min(args.slice) <= 0 or not 0 <= (args.overlap or 0) < 1):
        raise PreflightError(f"--slice {args.slice[0]} {args.slice[1]} --overlap {args.overlap}: tiles need a "
                             "positive height and width, and the overlap is a fraction in [0, 1)")
    if args.slice is None and (args.overlap is not None or args.no_full_image):
        raise PreflightError("--overlap and --no-full-image set up --slice H W: pass it too")
    if is_server_url(args.weights):  # a model served by embedmask serve: it stands where an ONNX session does
        checked_onnx = remote_predictor(args, overrides)
        source = checked_onnx.predictor
    else:
        checked_onnx = onnx_predictor(args, overrides) if args.onnx else None  # checks the file and options now
        source = args.onnx or predict_config(args, overrides + slicing(args))
    if paths:
        use_cuda = checked_onnx is None and source.MODEL.DEVICE.startswith("cuda")
        if use_cuda:
            check_devices(args.num_gpus, source.MODEL.DEVICE)
        counts = launch(image_worker, args.num_gpus, args.num_machines, args.machine_rank, args.dist_url,
                        (source, args, paths, checked_onnx), use_cuda=use_cuda, report_error=report_error,
                        launcher=args.launcher)
        if counts is not None:  # this process predicted (one process, or rank 0 under torchrun/SLURM)
            print(f"{counts['images'] - counts['skipped']} image(s) processed" + (
                f", {counts['skipped']} skipped" if counts["skipped"] else "") + (
                f"; results in {args.output}" if args.output else ""))
        return counts
    predictor = checked_onnx or Model(source, min_score=args.min_score)
    results = JsonResults(args.ground_truth, args.json)
    if args.video_input:
        capture = cv2.VideoCapture(args.video_input)
        if not capture.isOpened():
            raise InputError(f"--video-input {args.video_input}: not a readable video")
        target = video_output_path(args.output, args.video_input)
        frames = run_on_video(predictor, capture, target, results, args.video_input)
        capture.release()
        print(f"{frames} frame(s) processed" + (f"; annotated video in {target}" if target else ""))
    else:
        capture, show = open_webcam(args.output)
        target = video_output_path(args.output, "webcam")
        frames = run_on_video(predictor, capture, target, results, "webcam", show=show)
        capture.release()
        print(f"{frames} frame(s) processed")
    results.save()
    return None
