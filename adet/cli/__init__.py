"""``embedmask``: the command installed with the package. ``embedmask COMMAND --help`` describes each command.

    embedmask train --config-file EmbedMask/MS_R_50_1x.yaml --num-gpus 4 OUTPUT_DIR out/r50
    embedmask eval --weights out/r50/model_final.pth
    embedmask predict --weights out/r50/model_final.pth --input photos/ --output drawn/ --json results.json
    embedmask quickstart

Configs are files or packaged names (``embedmask configs`` lists them); ``KEY VALUE`` pairs override config keys
and may come anywhere on the line.
"""

from __future__ import annotations

import difflib
import importlib
import sys

from adet.version import __version__

from .errors import run_cli

# command -> (module, function, one-line help). A command's module is imported when it runs: each brings its own
# dependencies (ONNX, matplotlib...), which the others need not load.
COMMANDS = {
    "train": ("adet.cli.train", "main", "train a model (tools/train_net.py)"),
    "eval": ("adet.cli.train", "eval_main", "evaluate weights on DATASETS.TEST with the COCO protocol"),
    "predict": ("adet.cli.predict", "main", "predict on images, a video or the webcam (demo/demo.py)"),
    "export": ("adet.cli.export", "main", "export to ONNX, checked in ONNX Runtime (tools/export_model.py)"),
    "benchmark": ("adet.cli.benchmark", "main", "inference time and memory against torchvision's Mask R-CNN"),
    "visualize": ("adet.cli.visualize", "main", "draw ground truth (after augmentation) or a results json"),
    "analyze": ("adet.cli.analyze", "main", "parameters and FLOPs per module"),
    "quickstart": ("adet.cli.quickstart", "main", "train, evaluate and try EmbedMask on the bundled synthetic data"),
    "configs": ("adet.cli.configs", "main", "list the packaged configs"),
    "convert": ("adet.cli.convert", "main", "convert a dataset between COCO, Ultralytics YOLO-seg and LabelMe"),
    "serve": ("adet.cli.serve", "main", "serve a model over HTTP (POST /predict) with dynamic batching"),
    "label-studio": ("adet.cli.label_studio", "main", "a Label Studio ML backend pre-labelling tasks with EmbedMask"),
    "demo": ("adet.cli.demo", "main", "the model's web page: drop an image, see every mask (Gradio)"),
}


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [f"  {name:<{width}}  {help_text}" for name, (_, _, help_text) in COMMANDS.items()]
    return ("usage: embedmask COMMAND [options] [KEY VALUE ...]\n\nEmbedMask: embedding coupling for one-stage "
            "instance segmentation.\n\ncommands:\n" + "\n".join(lines) +
            "\n\n`embedmask COMMAND --help` for a command's options.")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        print(f"embedmask {__version__}")
        return 0
    name = argv[0]
    if name not in COMMANDS:
        hint = difflib.get_close_matches(name, list(COMMANDS), n=1)
        print(f"error: unknown command '{name}'" + (f" (did you mean '{hint[0]}'?)" if hint else "") +
              f"; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module_name, function, _ = COMMANDS[name]
    command = getattr(importlib.import_module(module_name), function)
    return run_cli(lambda rest: command(rest, prog=f"embedmask {name}"), argv[1:])


if __name__ == "__main__":
    sys.exit(main())
