"""``embedmask export`` (and ``tools/export_model.py``): the whole model as one ONNX file, checked in ONNX Runtime.

    embedmask export --config-file EmbedMask/MS_R_50_1x.yaml --weights models/EmbedMask_R_50_1x.pth --output model.onnx
    embedmask export --weights output/x/model_final.pth --output model.onnx     # our checkpoints carry their config

    embedmask export --weights model_final.pth --output model.onnx --int8 --calibration coco_2017_val \
        --dataset coco_2017_val=annotations.json:images/                  # int8, with the float graph kept

The file runs with ``adet.export.ONNXPredictor(path)`` (DefaultPredictor's call and output), ``embedmask predict
--onnx FILE`` and ``embedmask benchmark --onnx FILE``. After writing it, the command runs it in ONNX Runtime on a
sample image and on a crop of it (another size and aspect ratio) and compares the detections with
PyTorch's; a mismatch is an error. Needs ``pip install 'embedmask[export]'`` (onnx, onnxscript, onnxruntime).

With ``--int8`` the float graph is written to ``NAME.fp32.onnx``, quantized (``adet/export/quantize.py``) on the
first ``--calibration-images`` images of ``--calibration``, and both graphs are evaluated on ``--validation``: an
int8 graph losing more than ``--max-ap-drop`` points of bbox or segm AP is refused (kept as ``NAME.rejected.onnx``).
"""

from __future__ import annotations

import importlib.util
import os

import cv2
import numpy as np
import torch

from adet.checkpoint import DetectionCheckpointer
from adet.data import DatasetCatalog, read_image
from adet.data.synthetic import generate_image
from adet.engine import DefaultPredictor
from adet.errors import PreflightError
from adet.evaluation import COCOEvaluator
from adet.export import ONNXPredictor, export_onnx
from adet.export.quantize import quantize_int8
from adet.modeling import build_model, prepare_for_inference
from adet.structures import pairwise_iou
from adet.utils.logger import setup_logger

from . import options
from .options import ArgumentParser, add_config_arguments, add_dataset_argument, register_datasets_from_args
from .preflight import check_config_values, check_output_file, check_weights


def build_parser(prog: str | None = None) -> ArgumentParser:
    parser = ArgumentParser(prog=prog, description="Export EmbedMask to ONNX and check it in ONNX Runtime")
    add_config_arguments(parser)
    parser.add_argument("--output", required=True, metavar="FILE.onnx", help="where the ONNX file goes")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset version (default 18)")
    parser.add_argument("--sample", default="", metavar="IMAGE",
                        help="an image to trace and check with (default: a generated one)")
    parser.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime comparison")
    int8 = parser.add_argument_group("int8 (static QDQ quantization for CPUs with VNNI)")
    int8.add_argument("--int8", action="store_true", help="write an int8 graph to --output (the float one to "
                                                          "NAME.fp32.onnx)")
    int8.add_argument("--calibration", default="", metavar="DATASET", help="registered dataset to calibrate on")
    int8.add_argument("--calibration-images", type=int, default=200, metavar="N",
                      help="its first N images (default 200)")
    int8.add_argument("--validation", default="", metavar="DATASET",
                      help="dataset for the accuracy gate (default: --calibration; a held-out one is a fairer gate)")
    int8.add_argument("--max-ap-drop", type=float, default=1.0, metavar="POINTS",
                      help="refuse an int8 graph losing more bbox or segm AP than this (default 1.0)")
    add_dataset_argument(parser)
    return parser


def dataset_inputs(predictor: ONNXPredictor, dataset: str, limit: int):
    """(padded network input, size) of the first ``limit`` images of ``dataset``, read one at a time."""
    for record in DatasetCatalog.get(dataset)[:limit]:
        yield predictor.preprocess(read_image(record["file_name"]))[:2]


def onnx_ap(path: str, dataset: str) -> dict[str, float]:
    """bbox and segm AP of an exported graph on ``dataset`` (COCO protocol)."""
    predictor, evaluator = ONNXPredictor(path), COCOEvaluator(dataset, distributed=False)
    for record in DatasetCatalog.get(dataset):
        evaluator.process([record], [predictor(read_image(record["file_name"]))])
    results = evaluator.evaluate()
    return {task: results[task]["AP"] for task in ("bbox", "segm") if task in results}


def int8_paths(output: str) -> tuple[str, str]:
    stem = output[:-5] if output.endswith(".onnx") else output
    return stem + ".fp32.onnx", stem + ".rejected.onnx"


def quantize(args, float_path: str) -> dict:
    """The int8 graph of ``float_path`` at ``args.output``, if it keeps AP within ``--max-ap-drop``."""
    validation = args.validation or args.calibration
    predictor = ONNXPredictor(float_path)
    report = quantize_int8(float_path, args.output, dataset_inputs(predictor, args.calibration,
                                                                   args.calibration_images))
    print(f"Quantized to int8 on {report['images']} images of {args.calibration} in {report['seconds']:.0f} s: "
          f"{report['bytes'] / 2**20:.1f} MiB ({report['float_nodes']} embedding/margin convolutions kept float32)")
    before, after = onnx_ap(float_path, validation), onnx_ap(args.output, validation)
    report["ap"] = {"float32": before, "int8": after}
    for task in before:
        print(f"{validation} {task} AP: float32 {before[task]:.2f}, int8 {after[task]:.2f} "
              f"({after[task] - before[task]:+.2f})")
    drop = max(before[task] - after[task] for task in before)
    if drop > args.max_ap_drop:
        rejected = int8_paths(args.output)[1]
        os.replace(args.output, rejected)
        raise PreflightError(f"--max-ap-drop {args.max_ap_drop}: the int8 graph loses {drop:.2f} AP on "
                             f"{validation} (kept as {rejected}; calibrate on more images, or keep the float graph "
                             f"{float_path})")
    return report


def sample_image(seed: int = 0) -> np.ndarray:
    """A 480x640 BGR picture of coloured shapes on a textured background (no file needed)."""
    image, _ = generate_image(np.random.default_rng(seed), 120, 160)
    return cv2.resize(image, (640, 480), interpolation=cv2.INTER_LINEAR)


def compare(expected, actual) -> dict:
    """Detections of PyTorch (``expected``) and ONNX Runtime matched one to one in ``expected``'s score order: same
    class, box IoU >= 0.98 and, among those, the closest score (a model can give several near-identical boxes).
    Returns the counts, the largest score and box differences, the smallest mask IoU."""
    count = len(expected)
    result = {"detections": count, "onnx_detections": len(actual), "matched": 0, "score": 0.0, "box": 0.0,
              "mask_iou": 1.0}
    if count == 0 or len(actual) == 0:
        result["matched"] = int(count == len(actual))
        return result
    iou = pairwise_iou(expected.pred_boxes, actual.pred_boxes)
    iou[expected.pred_classes[:, None] != actual.pred_classes[None, :]] = 0
    used: set[int] = set()
    for i in range(count):
        candidates = [j for j in (iou[i] >= 0.98).nonzero().flatten().tolist() if j not in used]
        if not candidates:
            continue
        j = min(candidates, key=lambda k: abs(float(expected.scores[i] - actual.scores[k])))
        used.add(j)
        result["matched"] += 1
        result["score"] = max(result["score"], abs(float(expected.scores[i] - actual.scores[j])))
        result["box"] = max(result["box"], float((expected.pred_boxes.tensor[i] -
                                                  actual.pred_boxes.tensor[j]).abs().max()))
        a, b = expected.pred_masks[i], actual.pred_masks[j]
        union = int((a | b).sum())
        result["mask_iou"] = min(result["mask_iou"], int((a & b).sum()) / union if union else 1.0)
    return result


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    args = build_parser(prog).parse_args(argv)
    setup_logger()
    for module in ("onnx", "onnxscript", "onnxruntime"):
        if importlib.util.find_spec(module) is None:
            raise PreflightError(f"export needs {module}: pip install 'embedmask[export]'")
    check_output_file(args.output, "--output")
    names = register_datasets_from_args(args.dataset)
    if args.int8 and not args.calibration:
        raise PreflightError("--int8 needs --calibration DATASET (a registered dataset, e.g. with --dataset)")
    for option, name in (("--calibration", args.calibration), ("--validation", args.validation)):
        if name and name not in names and name not in DatasetCatalog.list():
            raise PreflightError(f"{option} {name}: no such dataset; register it with --dataset "
                                 f"{name}=ANNOTATIONS.json:IMAGES/")
    cfg = options.resolve_config(args.config_file, args.weights, args.opts, "cpu")
    check_config_values(cfg)
    check_weights(cfg.MODEL.WEIGHTS, required=True, what="--weights" if args.weights else "MODEL.WEIGHTS")
    image = read_image(args.sample) if args.sample else sample_image()

    model = build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    prepare_for_inference(model, channels_last=False)  # channels-last strides would be baked into the graph
    reference = DefaultPredictor(cfg)
    resized = reference.aug.get_transform(image).apply_image(np.ascontiguousarray(image))
    float_path = int8_paths(args.output)[0] if args.int8 else args.output
    report = export_onnx(model, cfg, float_path, resized, args.opset)
    print(f"Exported to {float_path}: {report['bytes'] / 2**20:.1f} MiB in {report['seconds']:.1f} s")
    if not args.no_check:
        report["checks"] = check_against_pytorch(float_path, reference, image)
    if args.int8:
        report["int8"] = quantize(args, float_path)
    return report


def check_against_pytorch(path: str, reference: DefaultPredictor, image: np.ndarray) -> list[dict]:
    """ONNX Runtime's detections equal PyTorch's on ``image`` and a crop of it, or the file is set aside."""
    onnx_predictor = ONNXPredictor(path)
    checks = []
    crop = np.ascontiguousarray(image[:, : max(image.shape[1] * 3 // 5, 64)])  # another size and aspect ratio
    for name, picture in (("sample", image), ("sample's left 60%", crop)):
        with torch.inference_mode():
            expected = reference(picture)["instances"]
        check = compare(expected, onnx_predictor(picture)["instances"])
        checks.append(check)
        print(f"ONNX Runtime vs PyTorch on the {name} ({picture.shape[1]}x{picture.shape[0]}): "
              f"{check['matched']}/{check['detections']} detections matched ({check['onnx_detections']} found), "
              f"max |d score| {check['score']:.1e}, max |d box| {check['box']:.3f} px, "
              f"min mask IoU {check['mask_iou']:.4f}")
        if check["matched"] < 0.97 * check["detections"] or check["score"] > 1e-3 or check["box"] > 0.5:
            os.replace(path, path + ".mismatch")
            raise PreflightError(f"--output {path}: the exported model's detections differ from PyTorch's "
                                 f"(kept as {path}.mismatch for inspection)")
    return checks
