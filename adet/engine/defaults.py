"""``default_argument_parser`` and ``default_setup``: what detectron2-style scripts (``tools/train_net.py``) call
first, with detectron2's names and options."""

from __future__ import annotations

import argparse
import os
import sys

import torch

from adet.utils import comm
from adet.utils.logger import setup_logger

from .run_claim import refuse_if_busy


def default_setup(cfg, args: argparse.Namespace | None = None) -> None:
    """Create OUTPUT_DIR, set up logging (log.txt), save the config there (config.yaml), and apply CUDNN_BENCHMARK
    and FLOAT32_PRECISION. The RNG is the trainer's to seed (``adet.engine.trainer.seed_rng``)."""
    rank = comm.get_rank()
    if rank == 0 and cfg.OUTPUT_DIR:
        refuse_if_busy(cfg.OUTPUT_DIR)  # before writing over a live run's config.yaml and log.txt
        os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    logger = setup_logger(cfg.OUTPUT_DIR, rank)
    logger.info("Rank %d of %d; command line: %s", rank, comm.get_world_size(), " ".join(sys.argv))
    logger.info("torch %s, CUDA available: %s", torch.__version__, torch.cuda.is_available())
    if rank == 0 and cfg.OUTPUT_DIR:
        path = os.path.join(cfg.OUTPUT_DIR, "config.yaml")
        with open(path, "w") as f:
            f.write(cfg.dump())
        logger.info("Full config saved to %s", path)
    torch.backends.cudnn.benchmark = bool(cfg.CUDNN_BENCHMARK) and not cfg.DETERMINISTIC
    if cfg.FLOAT32_PRECISION:
        torch.set_float32_matmul_precision(cfg.FLOAT32_PRECISION)


def default_argument_parser(epilog: str | None = None) -> argparse.ArgumentParser:
    """detectron2's options: ``--config-file``, ``--resume``, ``--eval-only``, ``--num-gpus``, ``--num-machines``,
    ``--machine-rank``, ``--dist-url`` ("auto": a free local port) and the trailing ``KEY VALUE`` overrides
    (``args.opts``; the last of a key wins)."""
    parser = argparse.ArgumentParser(epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default="", metavar="FILE", help="path to config file")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in OUTPUT_DIR")
    parser.add_argument("--eval-only", action="store_true", help="perform evaluation only")
    parser.add_argument("--num-gpus", type=int, default=1, help="number of processes per machine")
    parser.add_argument("--num-machines", type=int, default=1, help="total number of machines")
    parser.add_argument("--machine-rank", type=int, default=0, help="the rank of this machine")
    parser.add_argument("--dist-url", default="auto", help="tcp://HOST:PORT of machine 0; 'auto' on one machine")
    parser.add_argument("opts", default=None, nargs=argparse.REMAINDER,
                        help="KEY VALUE pairs that modify the config, at the end of the command")
    return parser
