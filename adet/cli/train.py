"""``embedmask train`` / ``embedmask eval`` (and ``tools/train_net.py``): training and COCO evaluation, on one
process, several GPUs or CPU processes (``--num-gpus``), several machines, or under ``torchrun``.

The config is resolved and checked once, in the launching process, before any worker starts: a mistake costs
seconds and is reported once. Workers receive the resolved config.
"""

from __future__ import annotations

import argparse
import logging
import os

from adet.checkpoint import DetectionCheckpointer, resume_checkpoint
from adet.data.build import check_num_classes, required_datasets
from adet.engine.defaults import default_setup
from adet.engine.evaluate import evaluate_datasets
from adet.engine.launch import check_devices, launch, launched_by_torchrun
from adet.engine.trainer import train
from adet.modeling import build_model, prepare_for_inference
from adet.utils.logger import setup_logger

from . import preflight as check
from .errors import report_error
from .options import (
    ArgumentParser,
    add_config_arguments,
    add_dataset_argument,
    add_launch_arguments,
    register_datasets_from_args,
    resolve_config,
)

logger = logging.getLogger(__name__)


def build_parser(prog: str | None = None, eval_only: bool = False) -> ArgumentParser:
    description = ("Evaluate EmbedMask weights on DATASETS.TEST with the COCO protocol" if eval_only else
                   "Train (or with --eval-only evaluate) EmbedMask")
    parser = ArgumentParser(prog=prog, description=description)
    add_config_arguments(parser)
    parser.add_argument("--resume", action="store_true",
                        help="continue from the last checkpoint in OUTPUT_DIR (model, optimizer, schedule, data order)")
    parser.add_argument("--eval-only", action="store_true", default=eval_only,
                        help="only evaluate MODEL.WEIGHTS on DATASETS.TEST")
    add_launch_arguments(parser)
    add_dataset_argument(parser)
    parser.add_argument("--log-period", type=int, default=20, metavar="N",
                        help="write losses to the console and metrics.json every N iterations")
    return parser


def config_from_args(args: argparse.Namespace):
    """The frozen config of a command line (``--dataset`` registered first: the config may name them)."""
    names = register_datasets_from_args(args.dataset)
    cfg = resolve_config(args.config_file, args.weights, args.opts, datasets=names)
    cfg.freeze()
    return cfg


def worker(cfg, args: argparse.Namespace):
    """One process's share: evaluation of MODEL.WEIGHTS, or training."""
    register_datasets_from_args(args.dataset, quiet=True)
    default_setup(cfg, args)
    if not args.eval_only:
        return train(cfg, resume=args.resume, log_period=args.log_period)
    model = build_model(cfg)
    checkpointer = DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
    if args.resume and checkpointer.has_checkpoint():
        checkpointer.load(checkpointer.get_checkpoint_file(), checkpointables=[])
    else:
        checkpointer.load(cfg.MODEL.WEIGHTS)
    return evaluate_datasets(cfg, prepare_for_inference(model))


def preflight(cfg, args: argparse.Namespace) -> None:
    """Everything that can be checked before work starts (``preflight.py``), once, in this process."""
    check.check_device(cfg.MODEL.DEVICE)
    check_devices(args.num_gpus, cfg.MODEL.DEVICE)
    world_size = int(os.environ["WORLD_SIZE"]) if launched_by_torchrun() else args.num_gpus * args.num_machines
    check.check_config_values(cfg, world_size)
    check.check_output_folder(cfg.OUTPUT_DIR, "OUTPUT_DIR")
    if args.eval_only:
        if not (args.resume and resume_checkpoint(cfg.OUTPUT_DIR)):
            check.check_weights(cfg.MODEL.WEIGHTS, required=True)
        check.check_datasets(cfg, required_datasets(cfg.DATASETS.TEST, "DATASETS.TEST", "evaluate"),
                             "DATASETS.TEST", need_annotations=False)
        return
    check.check_datasets(cfg, required_datasets(cfg.DATASETS.TRAIN, "DATASETS.TRAIN", "train on"),
                         "DATASETS.TRAIN", need_annotations=True)
    check.check_datasets(cfg, cfg.DATASETS.TEST, "DATASETS.TEST", need_annotations=False)
    check_num_classes(cfg)
    resume_from = resume_checkpoint(cfg.OUTPUT_DIR) if args.resume else None
    if args.resume and resume_from is None:
        logger.info("--resume: nothing was saved in %s yet; starting from MODEL.WEIGHTS", cfg.OUTPUT_DIR)
    if resume_from is None:
        check.check_weights(cfg.MODEL.WEIGHTS, required=False)
    if not args.resume and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")):
        logger.warning("%s already holds a training run; this one starts afresh: checkpoints of the same names are "
                       "replaced as it saves its own and metrics.json is appended to. Pass --resume to continue "
                       "that run instead, or choose another OUTPUT_DIR.", cfg.OUTPUT_DIR)


def main(argv: list[str] | None = None, prog: str | None = None, eval_only: bool = False):
    """Parse, resolve and check the config once, then run :func:`worker` in every process. Returns the
    evaluation results (of this process; {} on ranks other than 0)."""
    args = build_parser(prog, eval_only).parse_args(argv)
    setup_logger()  # config notices are shown now and written to log.txt once OUTPUT_DIR is known
    check.check_launch(args.num_gpus, args.num_machines, args.machine_rank, args.dist_url)
    cfg = config_from_args(args)
    preflight(cfg, args)
    return launch(worker, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
                  dist_url=args.dist_url, args=(cfg, args), use_cuda=cfg.MODEL.DEVICE.startswith("cuda"),
                  report_error=report_error)


def eval_main(argv: list[str] | None = None, prog: str | None = None):
    return main(argv, prog, eval_only=True)
