"""``embedmask train`` / ``embedmask eval`` (and ``tools/train_net.py``): training and COCO evaluation, on one
process, several GPUs or CPU processes (``--num-gpus``), several machines, or under ``torchrun``.

The config is resolved and checked once, in the launching process, before any worker starts: a mistake costs
seconds and is reported once. Workers receive the resolved config.
"""

from __future__ import annotations

import argparse
import logging
import os

import torch

from adet.checkpoint import DetectionCheckpointer, resume_checkpoint
from adet.data.build import check_num_classes, required_datasets
from adet.engine.defaults import default_setup
from adet.engine.distributed.launch import (
    check_devices,
    dist_timeout,
    launch,
    leader_rank,
    restart_count,
    world_size_of,
)
from adet.engine.distributed.run_claim import RunClaim
from adet.engine.evaluate import evaluate_datasets
from adet.engine.training.trainer import DefaultTrainer
from adet.errors import PreflightError
from adet.modeling import prepare_for_inference
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
    parser.add_argument("--data", default="", metavar="PATH",
                        help="a dataset by path: a COCO .json (images beside it), an Ultralytics data.yaml or a "
                             "LabelMe folder; trains on its train split and evaluates on its val split (with "
                             "--eval-only: evaluates on it)")
    parser.add_argument("--log-period", type=int, default=20, metavar="N",
                        help="write losses to the console and metrics.json every N iterations")
    return parser


def config_from_args(args: argparse.Namespace):
    """The frozen config of a command line (``--dataset`` registered first: the config may name them)."""
    names = register_datasets_from_args(args.dataset)
    opts = list(args.opts)
    if args.data and not os.path.exists(args.data):
        raise PreflightError(f"--data {args.data}: no such file or folder (a COCO .json, a data.yaml or a LabelMe "
                             "folder)")
    if args.data:  # a path: resolve_config registers it, by split (data.yaml:train and data.yaml:val)
        opts += ["DATASETS.TEST", (args.data,)] + ([] if args.eval_only else ["DATASETS.TRAIN", (args.data,)])
    cfg = resolve_config(args.config_file, args.weights, opts, datasets=names)
    cfg.freeze()
    return cfg


def worker(cfg, args: argparse.Namespace):
    """One process's share: evaluation of MODEL.WEIGHTS, or training, with ``args.trainer_class`` (a
    DefaultTrainer subclass: its build_* methods) or DefaultTrainer itself."""
    register_datasets_from_args(args.dataset, quiet=True)
    default_setup(cfg, args)
    trainer_class = getattr(args, "trainer_class", None) or DefaultTrainer
    if not args.eval_only:
        trainer = trainer_class(cfg)
        trainer.resume_or_load(resume=args.resume)
        trainer.train(log_period=args.log_period)
        return trainer.last_results
    model = trainer_class.build_model(cfg)
    checkpointer = DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
    if args.resume and checkpointer.has_checkpoint():
        checkpointer.load(checkpointer.get_checkpoint_file(), checkpointables=[])
    else:
        checkpointer.load(cfg.MODEL.WEIGHTS)
    return evaluate_datasets(cfg, prepare_for_inference(model), build_test_loader=trainer_class.build_test_loader,
                             build_evaluator=trainer_class.build_evaluator)


def preflight(cfg, args: argparse.Namespace) -> None:
    """Everything that can be checked before work starts (``preflight.py``), once, in this process."""
    check.check_device(cfg.MODEL.DEVICE)
    check_devices(args.num_gpus, cfg.MODEL.DEVICE)
    check.check_config_values(cfg, world_size_of(args.launcher, args.num_gpus, args.num_machines))
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


def main(argv: list[str] | None = None, prog: str | None = None, eval_only: bool = False,
         trainer_class: type | None = None):
    """Parse, resolve and check the config once, then run :func:`worker` in every process. Returns the
    evaluation results (of this process; {} on ranks other than 0). ``trainer_class``: a DefaultTrainer subclass
    (importable by name, for spawned processes), as ``tools/train_net.py``'s ``Trainer``."""
    args = build_parser(prog, eval_only).parse_args(argv)
    args.trainer_class = trainer_class
    check.check_launch(args.num_gpus, args.num_machines, args.machine_rank, args.dist_url)
    leader = leader_rank(args.launcher, args.machine_rank) == 0
    setup_logger(rank=0 if leader else 1)  # config notices now; into log.txt once OUTPUT_DIR is known
    cfg = config_from_args(args)
    if not args.eval_only and restart_count() and not args.resume:
        args.resume = True  # a restarted job continues its run, checked as a resume
        logger.info("Restart %d of this job: resuming from the last checkpoint in %s", restart_count(),
                    cfg.OUTPUT_DIR)
    preflight(cfg, args)
    use_cuda = cfg.MODEL.DEVICE.startswith("cuda")
    timeout = dist_timeout(cfg.DIST_TIMEOUT, use_cuda and torch.cuda.is_available())
    run = (worker, args.num_gpus)
    options = {"num_machines": args.num_machines, "machine_rank": args.machine_rank, "dist_url": args.dist_url,
               "args": (cfg, args), "use_cuda": use_cuda, "timeout": timeout, "report_error": report_error,
               "launcher": args.launcher}
    if args.eval_only or not leader:
        return launch(*run, **options)
    with RunClaim(cfg.OUTPUT_DIR) as claim, claim.covering_workers():  # refused here, before any worker starts
        return launch(*run, **options)


def eval_main(argv: list[str] | None = None, prog: str | None = None):
    return main(argv, prog, eval_only=True)
