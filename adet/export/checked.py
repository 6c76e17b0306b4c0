"""The whole export as a library function: the model of a config to one ONNX file, checked in ONNX Runtime against
PyTorch on a sample image and a crop of it (another size and aspect ratio), and optionally quantized to int8 behind
an accuracy gate. ``embedmask export`` and ``Model.export`` call :func:`export_model`."""

from __future__ import annotations

import logging
import os

import cv2
import numpy as np
import torch

from adet.checkpoint import DetectionCheckpointer
from adet.config import CfgNode
from adet.data import DatasetCatalog, read_image
from adet.data.synthetic import generate_image
from adet.engine import DefaultPredictor
from adet.errors import ExportCheckError, PreflightError
from adet.evaluation import COCOEvaluator
from adet.modeling import build_model, prepare_for_inference
from adet.structures import pairwise_iou

from .onnx_model import export_onnx
from .predictor import ONNXPredictor
from .quantize import quantize_int8

logger = logging.getLogger(__name__)


def export_model(cfg: CfgNode, output: str, opset: int = 18, sample: np.ndarray | None = None, check: bool = True,
                 int8: bool = False, calibration: str = "", calibration_images: int = 200, validation: str = "",
                 max_ap_drop: float = 1.0) -> dict:
    """Export ``cfg``'s model (MODEL.WEIGHTS loaded) to ``output``; ``sample`` (BGR) is traced and checked with
    (default: a generated picture). With ``int8`` the float graph goes to NAME.fp32.onnx and the int8 one to
    ``output`` (:func:`quantize_with_gate`), validated on ``validation`` (default: the config's first
    DATASETS.TEST). Returns the export's report (size, time, checks, int8)."""
    if int8:
        validation = validation_dataset(cfg, calibration, validation)
    image = sample if sample is not None else sample_image()
    float_path = int8_paths(output)[0] if int8 else output
    model, reference = traced_model(cfg)
    resized = reference.aug.get_transform(image).apply_image(np.ascontiguousarray(image))
    report = export_onnx(model, cfg, float_path, resized, opset)
    print(f"Exported to {float_path}: {report['bytes'] / 2**20:.1f} MiB in {report['seconds']:.1f} s")
    if check:
        report["checks"] = check_against_pytorch(float_path, reference, image)
        if all(c["detections"] == 0 for c in report["checks"]):
            report["checks"] = check_at_threshold_zero(cfg, float_path, image, resized, opset)
    if int8:
        report["int8"] = quantize_with_gate(float_path, output, calibration, calibration_images, validation,
                                            max_ap_drop)
    return report


def traced_model(cfg: CfgNode) -> tuple[torch.nn.Module, DefaultPredictor]:
    """``cfg``'s model with its weights, ready to trace, and the PyTorch predictor the export is compared with."""
    model = build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    prepare_for_inference(model, channels_last=False)  # channels-last strides would be baked into the graph
    return model, DefaultPredictor(cfg)


def check_at_threshold_zero(cfg: CfgNode, path: str, image: np.ndarray, resized: np.ndarray, opset: int
                            ) -> list[dict]:
    """The check for a model that detects nothing on the sample at its threshold (an untrained or barely trained
    one): an empty comparison proves nothing, so the same graph exported with MODEL.FCOS.INFERENCE_TH_TEST 0 is
    compared with PyTorch at threshold 0 (the graphs differ in that one constant), then deleted."""
    zero = cfg.clone()
    zero.defrost()
    zero.MODEL.FCOS.INFERENCE_TH_TEST = 0.0
    zero.freeze()
    print(f"The model detects nothing on the sample at MODEL.FCOS.INFERENCE_TH_TEST {cfg.MODEL.FCOS.INFERENCE_TH_TEST}"
          "; checking the graph at threshold 0 instead")
    model, reference = traced_model(zero)
    twin = path + ".threshold0.onnx"
    try:
        export_onnx(model, zero, twin, resized, opset)
        return check_against_pytorch(twin, reference, image, kept_as=path)
    finally:
        for leftover in (twin, twin + ".mismatch"):
            if os.path.exists(leftover):
                os.remove(leftover)


def validation_dataset(cfg: CfgNode, calibration: str, validation: str) -> str:
    """The dataset the int8 gate scores on: ``validation``, else the config's first DATASETS.TEST. It must have
    annotations (a test-dev style file cannot score), and should not be the calibration set (the gate would see
    the very images the ranges were fitted on)."""
    validation = validation or (cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "")
    if not validation:
        raise PreflightError("--int8: no dataset to validate the int8 graph on; pass --validation DATASET (held-out "
                             "images with annotations; the config's DATASETS.TEST is empty)")
    if not any(record.get("annotations") for record in DatasetCatalog.get(validation)):
        raise PreflightError(f"--validation {validation}: no annotations to score the int8 graph against (an "
                             "image-info file); name a dataset with ground truth")
    if validation == calibration:
        logger.warning("--validation %s is the calibration set: the accuracy gate sees the images the int8 ranges "
                       "were fitted on, and may pass a graph that loses accuracy elsewhere", validation)
    return validation


def dataset_inputs(predictor: ONNXPredictor, dataset: str, limit: int):
    """(padded network input, size) of the first ``limit`` images of ``dataset``, read one at a time."""
    for record in DatasetCatalog.get(dataset)[:limit]:
        yield predictor.network_input(predictor.preprocess(read_image(record["file_name"])))


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


def quantize_with_gate(float_path: str, output: str, calibration: str, calibration_images: int, validation: str,
                       max_ap_drop: float = 1.0) -> dict:
    """The int8 graph of ``float_path`` at ``output``, calibrated on the first ``calibration_images`` images of
    ``calibration``, if it keeps bbox and segm AP on ``validation`` within ``max_ap_drop`` points; else it is set
    aside as NAME.rejected.onnx and ExportCheckError says so."""
    predictor = ONNXPredictor(float_path)
    report = quantize_int8(float_path, output, dataset_inputs(predictor, calibration, calibration_images))
    print(f"Quantized to int8 on {report['images']} images of {calibration} in {report['seconds']:.0f} s: "
          f"{report['bytes'] / 2**20:.1f} MiB ({report['float_nodes']} embedding/margin convolutions kept float32)")
    before, after = onnx_ap(float_path, validation), onnx_ap(output, validation)
    report["ap"] = {"float32": before, "int8": after}
    for task in before:
        print(f"{validation} {task} AP: float32 {before[task]:.2f}, int8 {after[task]:.2f} "
              f"({after[task] - before[task]:+.2f})")
    drop = max(before[task] - after[task] for task in before)
    if drop > max_ap_drop:
        rejected = int8_paths(output)[1]
        os.replace(output, rejected)
        raise ExportCheckError(f"--max-ap-drop {max_ap_drop}: the int8 graph loses {drop:.2f} AP on "
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


def check_against_pytorch(path: str, reference: DefaultPredictor, image: np.ndarray, kept_as: str = "") -> list[dict]:
    """ONNX Runtime's detections equal PyTorch's on ``image`` and a crop of it, or the file (``kept_as``, default
    ``path``) is set aside as NAME.mismatch. A comparison of no detections on both images fails: it shows nothing."""
    kept_as = kept_as or path
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
        found = max(check["detections"], check["onnx_detections"])
        if check["matched"] < 0.97 * found or check["score"] > 1e-3 or check["box"] > 0.5:
            os.replace(kept_as, kept_as + ".mismatch")
            raise ExportCheckError(f"--output {kept_as}: the exported model's detections differ from PyTorch's "
                                   f"(kept as {kept_as}.mismatch for inspection)")
    if sum(c["detections"] for c in checks) == 0 and kept_as != path:
        os.replace(kept_as, kept_as + ".mismatch")
        raise ExportCheckError(f"--output {kept_as}: no detections to compare, even at threshold 0 (kept as "
                               f"{kept_as}.mismatch)")
    return checks
