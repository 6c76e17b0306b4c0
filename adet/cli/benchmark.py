"""``embedmask benchmark``: per-image inference latency and peak memory of EmbedMask vs torchvision's Mask R-CNN
R-50-FPN, measured in one run.

Each model runs in its own fresh process (so peak memory is its own) on the same images with the same thread count,
and the time per image is split into preprocess (resize, normalise), model, and postprocess (boxes and masks back to
the original image). Mask R-CNN runs with random weights, score threshold 0 and 100 detections per image; EmbedMask
with ``--weights`` (or random weights keeping every location). Both report their detection count, which sets the
mask work.

    embedmask benchmark --images demo/images --weights models/EmbedMask_R_50_1x.pth \
        --config-file EmbedMask/MS_R_50_1x.yaml
    embedmask benchmark --images demo/images --input-size 800x1333 --device cuda --precision fp16 --runs 20
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import cv2
import torch
import torchvision

from adet.api import load_config
from adet.engine import DefaultPredictor
from adet.errors import PreflightError
from adet.export import ONNXPredictor
from adet.modeling.embedmask.embedmask import image_sizes_tensor
from adet.modeling.embedmask.postprocess import postprocess

from .options import ArgumentParser, add_config_arguments

DEFAULT_CONFIG = "EmbedMask/MS_R_50_1x.yaml"


def load_images(folder: str, input_size: str = "") -> list:
    names = sorted(f for f in os.listdir(folder) if f.lower().endswith((".jpg", ".jpeg", ".png")))
    images = [cv2.imread(os.path.join(folder, n), cv2.IMREAD_COLOR) for n in names]
    if input_size:
        # An 800x1333 original passes both models' test-time resize (shortest edge 800, longest <= 1333) unchanged.
        height, width = (int(v) for v in input_size.lower().split("x"))
        images = [cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR) for image in images]
    return images


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def autocast(args):
    """float16 autocast for --precision fp16 (the coupling and mask pasting stay in float32 inside the model)."""
    device_type = "cuda" if args.device.startswith("cuda") else "cpu"
    return torch.autocast(device_type, dtype=torch.float16, enabled=args.precision == "fp16")


def embedmask_runner(args, dtype: str = "float32"):
    overrides = [*args.opts, "MODEL.DEVICE", args.device, "MODEL.INFERENCE_DTYPE", dtype]
    if not args.weights:  # random weights score every location below the default threshold: keep them all
        overrides += ["MODEL.FCOS.INFERENCE_TH_TEST", 0.0]
    cfg = load_config(args.weights, args.config_file or (None if args.weights else DEFAULT_CONFIG), overrides,
                      args.device)
    predictor = DefaultPredictor(cfg)
    model = predictor.model

    def run(image):
        t0 = time.perf_counter()
        inputs = [predictor.preprocess(image).as_model_input()]
        sync(args.device)
        t1 = time.perf_counter()
        with torch.inference_mode(), autocast(args):
            images = model.preprocess(inputs)
            detections = model.detect(images.tensor, image_sizes_tensor(images))
            sync(args.device)
            t2 = time.perf_counter()
            results = model.postprocess(detections, images, inputs)
            sync(args.device)
        t3 = time.perf_counter()
        return t1 - t0, t2 - t1, t3 - t2, len(results[0]["instances"])

    return run


def onnx_runner(args):
    providers = ["CUDAExecutionProvider"] if args.device.startswith("cuda") else ["CPUExecutionProvider"]
    path = args.int8_onnx if args.worker == "onnx_int8" else args.onnx
    predictor = ONNXPredictor(path, providers, threads=args.threads)
    embedmask = predictor.cfg.MODEL.EMBEDMASK

    def run(image):
        t0 = time.perf_counter()
        item = predictor.preprocess(image)
        padded, size = predictor.network_input(item)
        height, width = item.height, item.width
        t1 = time.perf_counter()
        detections = predictor.detections(padded, size)
        t2 = time.perf_counter()
        result = postprocess(detections, height, width, padded.shape[:2], embedmask.MASK_TH,
                             embedmask.MASK_OUT_STRIDE)
        return t1 - t0, t2 - t1, time.perf_counter() - t2, len(result)

    return run


def maskrcnn_runner(args):
    torch.manual_seed(0)
    model = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, box_score_thresh=0.0, box_detections_per_img=100).eval().to(args.device)

    def run(image):
        t0 = time.perf_counter()
        rgb = torch.from_numpy(image[:, :, ::-1].copy()).permute(2, 0, 1).to(args.device).float() / 255
        original_size = [tuple(rgb.shape[1:])]
        with torch.inference_mode(), autocast(args):
            images, _ = model.transform([rgb])
            sync(args.device)
            t1 = time.perf_counter()
            features = model.backbone(images.tensors)
            proposals, _ = model.rpn(images, features)
            detections, _ = model.roi_heads(features, proposals, images.image_sizes)
            sync(args.device)
            t2 = time.perf_counter()
            detections = model.transform.postprocess(detections, images.image_sizes, original_size)
            sync(args.device)
        t3 = time.perf_counter()
        return t1 - t0, t2 - t1, t3 - t2, len(detections[0]["boxes"])

    return run


def worker(args) -> None:
    """Time one model; print one JSON line."""
    torch.set_num_threads(args.threads)
    images = load_images(args.images, args.input_size)
    runners = {"embedmask": embedmask_runner, "maskrcnn": maskrcnn_runner, "onnx": onnx_runner,
               "onnx_int8": onnx_runner, "embedmask_bf16": lambda a: embedmask_runner(a, "bfloat16")}
    run = runners[args.worker](args)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    run(images[0])  # warm-up
    times, counts = [], []
    for i in range(args.runs):
        *stage_times, count = run(images[i % len(images)])
        times.append(stage_times)
        counts.append(count)
    mean = [sum(t[k] for t in times) / len(times) for k in range(3)]
    result = {"model": args.worker, "preprocess": mean[0], "model_s": mean[1], "postprocess": mean[2],
              "total": sum(mean), "detections": sum(counts) / len(counts),
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if args.device.startswith("cuda"):
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print("RESULT " + json.dumps(result), flush=True)


def compare(args) -> list[dict]:
    """Time both models, each in its own process; returns [ours, Mask R-CNN] result dicts."""
    rows = []
    names = ["embedmask"] + (["embedmask_bf16"] if args.bf16 else []) + (["onnx"] if args.onnx else []) + (
        ["onnx_int8"] if args.int8_onnx else []) + ["maskrcnn"]
    for name in names:
        command = [sys.executable, "-m", "adet.cli.benchmark", "--worker", name, "--images", args.images,
                   "--device", args.device, "--threads", str(args.threads), "--runs", str(args.runs),
                   "--weights", args.weights, "--input-size", args.input_size, "--precision", args.precision,
                   "--config-file", args.config_file, "--onnx", args.onnx, "--int8-onnx", args.int8_onnx,
                   *map(str, args.opts)]
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            raise RuntimeError(f"{name} failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(line[len("RESULT "):]))
    return rows


def cpu_description() -> str:
    """The CPU's model and the instruction sets that decide int8 and bfloat16 speed (Linux: /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return "unknown"
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    return f"{model}; " + " ".join(f"{flag}={'yes' if flag in flags else 'no'}" for flag in wanted)


def get_parser(prog: str | None = None, default_images: str | None = None) -> ArgumentParser:
    """Without --weights EmbedMask runs with random weights keeping every location (the reported detection counts
    tell how much mask work was timed)."""
    parser = ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    add_config_arguments(parser)
    parser.add_argument("--images", required=default_images is None, default=default_images,
                        help="a folder of .jpg/.png images to time on")
    parser.add_argument("--input-size", default="", metavar="HxW",
                        help="resize every image to HxW before timing (e.g. 800x1333); default: as stored")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=["fp32", "fp16"], default="fp32",
                        help="fp16: both models under float16 autocast")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=4, help="timed images per model (after one warm-up)")
    parser.add_argument("--bf16", action="store_true",
                        help="also time EmbedMask with MODEL.INFERENCE_DTYPE bfloat16 (decoding stays float32)")
    parser.add_argument("--onnx", default="", metavar="FILE.onnx",
                        help="also time this export of the same model in ONNX Runtime (embedmask export)")
    parser.add_argument("--int8-onnx", default="", metavar="FILE.onnx",
                        help="also time this int8 export of the same model (embedmask export --int8)")
    parser.add_argument("--worker", choices=["embedmask", "embedmask_bf16", "onnx", "onnx_int8", "maskrcnn"],
                        help=argparse.SUPPRESS)
    parser.add_argument("--tmp", default="/tmp", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> list[dict]:
    args = get_parser(prog).parse_args(argv)
    if args.worker:
        worker(args)
        return []
    if not os.path.isdir(args.images):
        raise PreflightError(f"--images {args.images}: no such folder")
    try:
        rows = compare(args)
    except RuntimeError as e:
        raise PreflightError(f"benchmark: {e}") from None
    size = f" resized to {args.input_size}" if args.input_size else ""
    print(f"device: {args.device}, {args.precision}, threads: {args.threads}, torch {torch.__version__}, "
          f"images: {args.images}{size}, {args.runs} timed runs each")
    if args.device == "cpu":
        print(f"CPU: {cpu_description()}")
    memory = "peak_gpu_mb" if args.device.startswith("cuda") else "peak_rss_mb"
    header = f"{'model':<28}{'preprocess':>12}{'model':>10}{'postproc':>10}{'total s/img':>13}{'dets':>7}" \
             f"{memory:>13}"
    print(header)
    print("-" * len(header))
    labels = {"embedmask": "EmbedMask (ours)", "embedmask_bf16": "EmbedMask, bfloat16",
              "onnx": "EmbedMask, ONNX Runtime", "onnx_int8": "EmbedMask, ONNX int8",
              "maskrcnn": "torchvision Mask R-CNN R-50"}
    for r in rows:
        print(f"{labels[r['model']]:<28}{r['preprocess']:>12.3f}{r['model_s']:>10.3f}{r['postprocess']:>10.3f}"
              f"{r['total']:>13.3f}{r['detections']:>7.0f}{r[memory]:>13.0f}")
    ours, peer = rows[0], rows[-1]
    print(f"ratio (ours / Mask R-CNN): time {ours['total'] / peer['total']:.2f}x, memory "
          f"{ours[memory] / peer[memory]:.2f}x")
    for row in rows[1:-1]:
        print(f"ratio ({labels[row['model']]} / EmbedMask): time {row['total'] / ours['total']:.2f}x, memory "
              f"{row[memory] / ours[memory]:.2f}x")
    return rows


if __name__ == "__main__":
    main()
