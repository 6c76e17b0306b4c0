"""``embedmask train`` / ``embedmask eval`` (and ``tools/train_net.py``): training and COCO evaluation, on one
process, several GPUs or CPU processes (``--num-gpus``), several machines, or under ``torchrun``.

The config is resolved and checked once, in the launching process, before any worker starts: a mistake costs
seconds and is reported once. Workers receive the resolved config.
"""

from __future__ import annotations

import argparse
import logging

from adet.engine.defaults import default_argument_parser, default_setup, register_datasets_from_args, setup_cfg
from adet.engine.launch import check_devices, launch

logger = logging.getLogger(__name__)


def build_parser(prog: str | None = None, eval_only: bool = False) -> argparse.ArgumentParser:
    description = ("Evaluate EmbedMask weights on DATASETS.TEST with the COCO protocol" if eval_only else
                   "Train (or with --eval-only evaluate) EmbedMask")
    parser = default_argument_parser(description, prog)
    parser.add_argument("--weights", default="", metavar="CKPT",
                        help="MODEL.WEIGHTS; a checkpoint of ours carries its config, so --config-file may be left out")
    if eval_only:
        parser.set_defaults(eval_only=True)
    return parser


def resolve_config(args: argparse.Namespace):
    """The frozen config of a command line: --config-file (or the checkpoint's own config), overrides, --weights."""
    register_datasets_from_args(args.dataset)
    if not args.config_file and args.weights:
        from adet.api import load_config

        cfg = load_config(args.weights, None, args.opts, device=None)
    else:
        cfg = setup_cfg(args, freeze=False)
        if args.weights:
            cfg.MODEL.WEIGHTS = args.weights
    cfg.freeze()
    return cfg


def worker(cfg, args: argparse.Namespace):
    """One process's share: evaluation of MODEL.WEIGHTS, or training."""
    from adet.checkpoint import DetectionCheckpointer
    from adet.modeling import build_model, prepare_for_inference

    register_datasets_from_args(args.dataset, quiet=True)
    default_setup(cfg, args)
    if args.eval_only:
        from adet.engine.evaluate import evaluate_datasets

        model = build_model(cfg)
        checkpointer = DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
        if args.resume and checkpointer.has_checkpoint():
            checkpointer.load(checkpointer.get_checkpoint_file(), checkpointables=[])
        else:
            checkpointer.load(cfg.MODEL.WEIGHTS)
        return evaluate_datasets(cfg, prepare_for_inference(model))
    from adet.engine.trainer import train

    return train(cfg, resume=args.resume, log_period=args.log_period)


def preflight(cfg, args: argparse.Namespace) -> None:
    """Everything that can be checked before work starts (engine/preflight.py), once, in this process."""
    import os

    from adet.engine import preflight as check
    from adet.engine.launch import launched_by_torchrun

    check.check_device(cfg.MODEL.DEVICE)
    check_devices(args.num_gpus, cfg.MODEL.DEVICE)
    world_size = int(os.environ["WORLD_SIZE"]) if launched_by_torchrun() else args.num_gpus * args.num_machines
    check.check_config_values(cfg, world_size)
    check.check_output_folder(cfg.OUTPUT_DIR, "OUTPUT_DIR")
    if args.eval_only:
        if not (args.resume and check.check_resume(cfg.OUTPUT_DIR)):
            check.check_weights(cfg.MODEL.WEIGHTS, required=True)
        if not cfg.DATASETS.TEST:
            raise check.PreflightError("DATASETS.TEST is empty: nothing to evaluate")
        check.check_datasets(cfg, cfg.DATASETS.TEST, "DATASETS.TEST", need_annotations=False)
        return
    if not cfg.DATASETS.TRAIN:
        raise check.PreflightError("DATASETS.TRAIN is empty: nothing to train on")
    check.check_datasets(cfg, cfg.DATASETS.TRAIN, "DATASETS.TRAIN", need_annotations=True)
    check.check_datasets(cfg, cfg.DATASETS.TEST, "DATASETS.TEST", need_annotations=False)
    check.check_num_classes(cfg)
    resume_from = check.check_resume(cfg.OUTPUT_DIR) if args.resume else None
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
    from adet.engine.defaults import setup_logger
    from adet.engine.preflight import check_launch

    args = build_parser(prog, eval_only).parse_args(argv)
    setup_logger()  # config notices are shown now and written to log.txt once OUTPUT_DIR is known
    check_launch(args.num_gpus, args.num_machines, args.machine_rank, args.dist_url)
    cfg = resolve_config(args)
    preflight(cfg, args)
    return launch(worker, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
                  dist_url=args.dist_url, args=(cfg, args), use_cuda=cfg.MODEL.DEVICE.startswith("cuda"))


def eval_main(argv: list[str] | None = None, prog: str | None = None):
    return main(argv, prog, eval_only=True)
