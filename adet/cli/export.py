"""``embedmask export`` (and ``tools/export_model.py``): the whole model as one ONNX file, checked in ONNX Runtime.

    embedmask export --config-file EmbedMask/MS_R_50_1x.yaml --weights models/EmbedMask_R_50_1x.pth --output model.onnx
    embedmask export --weights output/x/model_final.pth --output model.onnx     # our checkpoints carry their config

The file runs with ``adet.export.ONNXPredictor(path)`` (DefaultPredictor's call and output), ``embedmask predict
--onnx FILE`` and ``embedmask benchmark --onnx FILE``. After writing it, the command runs it in ONNX Runtime on a
sample image and on a crop of it (another size and aspect ratio) and compares the detections with
PyTorch's; a mismatch is an error. Needs ``pip install 'embedmask[export]'`` (onnx, onnxscript, onnxruntime).
"""

from __future__ import annotations

import importlib.util
import os

import cv2
import numpy as np
import torch

from adet.api import load_config
from adet.checkpoint import DetectionCheckpointer
from adet.data import read_image
from adet.data.synthetic import generate_image
from adet.engine import DefaultPredictor
from adet.errors import PreflightError
from adet.export import ONNXPredictor, export_onnx
from adet.modeling import build_model, prepare_for_inference
from adet.structures import pairwise_iou
from adet.utils.logger import setup_logger

from .options import ArgumentParser, add_config_arguments
from .preflight import check_config_values, check_output_file, check_weights


def build_parser(prog: str | None = None) -> ArgumentParser:
    parser = ArgumentParser(prog=prog, description="Export EmbedMask to ONNX and check it in ONNX Runtime")
    add_config_arguments(parser)
    parser.add_argument("--output", required=True, metavar="FILE.onnx", help="where the ONNX file goes")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset version (default 18)")
    parser.add_argument("--sample", default="", metavar="IMAGE",
                        help="an image to trace and check with (default: a generated one)")
    parser.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime comparison")
    return parser


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
    cfg = load_config(args.weights, args.config_file or None, args.opts, device="cpu")
    check_config_values(cfg)
    check_weights(cfg.MODEL.WEIGHTS, required=True, what="--weights" if args.weights else "MODEL.WEIGHTS")
    image = read_image(args.sample) if args.sample else sample_image()

    model = build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    prepare_for_inference(model, channels_last=False)  # channels-last strides would be baked into the graph
    reference = DefaultPredictor(cfg)
    resized = reference.aug.get_transform(image).apply_image(np.ascontiguousarray(image))
    report = export_onnx(model, cfg, args.output, resized, args.opset)
    print(f"Exported to {args.output}: {report['bytes'] / 2**20:.1f} MiB in {report['seconds']:.1f} s")
    if args.no_check:
        return report
    onnx_predictor = ONNXPredictor(args.output)
    report["checks"] = []
    crop = np.ascontiguousarray(image[:, : max(image.shape[1] * 3 // 5, 64)])  # another size and aspect ratio
    for name, picture in (("sample", image), ("sample's left 60%", crop)):
        with torch.inference_mode():
            expected = reference(picture)["instances"]
        check = compare(expected, onnx_predictor(picture)["instances"])
        report["checks"].append(check)
        print(f"ONNX Runtime vs PyTorch on the {name} ({picture.shape[1]}x{picture.shape[0]}): "
              f"{check['matched']}/{check['detections']} detections matched ({check['onnx_detections']} found), "
              f"max |d score| {check['score']:.1e}, max |d box| {check['box']:.3f} px, "
              f"min mask IoU {check['mask_iou']:.4f}")
        if check["matched"] < 0.97 * check["detections"] or check["score"] > 1e-3 or check["box"] > 0.5:
            os.replace(args.output, args.output + ".mismatch")
            raise PreflightError(f"--output {args.output}: the exported model's detections differ from PyTorch's "
                                 f"(kept as {args.output}.mismatch for inspection)")
    return report
