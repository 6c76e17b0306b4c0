"""The command-line pieces every parser is built from (the ``embedmask`` commands and detectron2's
:func:`default_argument_parser` alike): options and trailing ``KEY VALUE`` overrides in any order, the config options,
``--dataset`` and the launch options. Flags name config keys' values; the keys stay the truth."""

from __future__ import annotations

import argparse
import re

from adet.engine.distributed.launch import LAUNCHERS

CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")
OVERRIDES_HELP = ("KEY VALUE pairs (anywhere on the line) override config keys, e.g. SOLVER.IMS_PER_BATCH 2 "
                  "MODEL.WEIGHTS models/x.pth; a key given twice takes its last value, and --weights wins over "
                  "MODEL.WEIGHTS")


class ArgumentParser(argparse.ArgumentParser):
    """Options and trailing ``KEY VALUE`` overrides in any order (``... OUTPUT_DIR out --resume`` resumes)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        kwargs.setdefault("epilog", OVERRIDES_HELP)
        super().__init__(*args, **kwargs)

    def parse_args(self, args=None, namespace=None):  # noqa: D102 - argparse's
        return self.parse_intermixed_args(args, namespace)


def add_config_arguments(parser: argparse.ArgumentParser, weights: bool = True, required: bool = False) -> None:
    """``--config-file``, ``--weights`` (unless ``weights`` is False) and the trailing ``KEY VALUE`` overrides."""
    parser.add_argument("--config-file", default="", required=required, metavar="FILE",
                        help="a config file, or a packaged config such as EmbedMask/MS_R_50_1x.yaml" +
                             ("" if required else " (default: a checkpoint's own config, else the released model's)"))
    if weights:
        parser.add_argument("--weights", default="", metavar="CKPT",
                            help="the weights (MODEL.WEIGHTS; this wins over a MODEL.WEIGHTS override); a checkpoint "
                                 "of ours carries its config, so --config-file may be left out")
    parser.add_argument("opts", nargs="*", default=[], metavar="KEY VALUE", help="config overrides")


def add_dataset_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", action="append", default=[], metavar="NAME=ANNOTATIONS.json:IMAGES/",
                        help="register a dataset (repeatable; use NAME in DATASETS.TRAIN/TEST): COCO "
                             "NAME=ANNOTATIONS.json:IMAGES/ or NAME=ANNOTATIONS.json (images beside it), Ultralytics "
                             "NAME=data.yaml[:SPLIT], LabelMe NAME=FOLDER/")


def add_launch_arguments(parser: argparse.ArgumentParser) -> None:
    """detectron2's launch options: processes per machine, machines, this machine's rank, the rendezvous."""
    parser.add_argument("--num-gpus", type=int, default=1, help="processes per machine (one per GPU; CPU processes "
                                                                "with MODEL.DEVICE cpu)")
    parser.add_argument("--num-machines", type=int, default=1, help="total number of machines")
    parser.add_argument("--machine-rank", type=int, default=0, help="the rank of this machine (0 .. machines-1)")
    parser.add_argument("--dist-url", default="auto", help="tcp://HOST:PORT of machine 0; 'auto' on one machine")
    parser.add_argument("--launcher", default="auto", choices=LAUNCHERS,
                        help="spawn: start --num-gpus processes here; torchrun / slurm: join the group torchrun or "
                             "srun started (one process per GPU); auto (default): torchrun under torchrun, slurm "
                             "under srun with several tasks, else spawn")




def default_argument_parser(epilog: str | None = None) -> ArgumentParser:
    """detectron2's options: ``--config-file``, ``--resume``, ``--eval-only``, ``--num-gpus``, ``--num-machines``,
    ``--machine-rank``, ``--dist-url`` ("auto": a free local port), ``--launcher`` and the ``KEY VALUE`` overrides
    (``args.opts``; anywhere on the line, the last of a key wins)."""
    parser = ArgumentParser(epilog=epilog)
    add_config_arguments(parser, weights=False)
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in OUTPUT_DIR")
    parser.add_argument("--eval-only", action="store_true", help="evaluate MODEL.WEIGHTS (or, with --resume, the "
                                                                 "last checkpoint) on DATASETS.TEST")
    add_launch_arguments(parser)
    return parser
