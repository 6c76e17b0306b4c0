"""``embedmask export`` (and ``tools/export_model.py``): the whole model as one ONNX file, checked in ONNX Runtime.

    embedmask export --config-file EmbedMask/MS_R_50_1x.yaml --weights models/EmbedMask_R_50_1x.pth --output model.onnx
    embedmask export --weights output/x/model_final.pth --output model.onnx     # our checkpoints carry their config

    embedmask export --weights model_final.pth --output model.onnx --int8 --calibration coco_2017_val \\
        --dataset coco_2017_val=annotations.json:images/                  # int8, with the float graph kept

The file runs with ``adet.export.ONNXPredictor(path)`` (DefaultPredictor's call and output), ``embedmask predict
--onnx FILE`` and ``embedmask benchmark --onnx FILE``. After writing it, the command runs it in ONNX Runtime on a
sample image and on a crop of it (another size and aspect ratio) and compares the detections with
PyTorch's; a mismatch is an error. Needs ``pip install 'embedmask[export]'`` (onnx, onnxscript, onnxruntime).

With ``--int8`` the float graph is written to ``NAME.fp32.onnx``, quantized (``adet/export/quantize.py``) on the
first ``--calibration-images`` images of ``--calibration``, and both graphs are evaluated on ``--validation``: an
int8 graph losing more than ``--max-ap-drop`` points of bbox or segm AP is refused (kept as ``NAME.rejected.onnx``).
The work itself is :func:`adet.export.export_model`; this command checks its inputs first.
"""

from __future__ import annotations

import importlib.util

from adet.data import DatasetCatalog, read_image, register_datasets_from_args
from adet.errors import PreflightError
from adet.export.checked import compare, export_model
from adet.model_zoo import resolve_config
from adet.utils.logger import setup_logger

from .options import ArgumentParser, add_config_arguments, add_dataset_argument
from .preflight import check_config_values, check_output_file, check_weights

__all__ = ["build_parser", "compare", "main"]


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
    cfg = resolve_config(args.config_file, args.weights, args.opts, "cpu")
    check_config_values(cfg)
    check_weights(cfg.MODEL.WEIGHTS, required=True, what="--weights" if args.weights else "MODEL.WEIGHTS")
    return export_model(cfg, args.output, args.opset, read_image(args.sample) if args.sample else None,
                        not args.no_check, args.int8, args.calibration, args.calibration_images, args.validation,
                        args.max_ap_drop)
