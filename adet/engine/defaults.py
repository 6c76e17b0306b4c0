"""``default_argument_parser`` and ``default_setup``: what detectron2-style scripts (``tools/train_net.py``) call
first, with detectron2's names and options."""

from __future__ import annotations

import argparse
import os
import sys

import torch

from adet.engine.arguments import default_argument_parser
from adet.engine.distributed.run_claim import refuse_if_busy
from adet.utils import comm
from adet.utils.logger import setup_logger

__all__ = ["default_argument_parser", "default_setup"]  # detectron2.engine.defaults' names


def default_setup(cfg, args: argparse.Namespace | None = None) -> None:
    """Create OUTPUT_DIR, set up logging (log.txt), save the config there (config.yaml), and apply CUDNN_BENCHMARK
    and FLOAT32_PRECISION. The RNG is the trainer's to seed (``adet.engine.training.trainer.seed_rng``)."""
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
