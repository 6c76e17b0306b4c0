"""The run's randomness: every draw of a training run follows from its seed, so that a run with SEED >= 0 is
repeatable and a resumed run produces the same losses as one that never stopped."""

from __future__ import annotations

import logging
import os
import random

import torch

from adet.utils import comm

logger = logging.getLogger(__name__)


def seed_rng(seed: int, iteration: int | None = None) -> None:
    """The one place torch's RNG is seeded: from the run's seed before the model is built (``iteration`` None:
    the initial weights), and from (seed, iteration, rank) before each step (proposal sampling), so that a resumed
    run draws what an uninterrupted one would."""
    if iteration is None:
        torch.manual_seed(seed)
    else:
        torch.manual_seed((seed * 1000003 + iteration * 1009 + comm.get_rank()) % (2**63))


def shared_seed(cfg_seed: int) -> int:
    """cfg.SEED, or (when negative) a random seed drawn on rank 0 and shared with every process."""
    if cfg_seed >= 0:
        return cfg_seed
    seed = torch.tensor([random.SystemRandom().randrange(2**31)])
    return int(comm.broadcast(seed, src=0).item())


def configure_determinism(cfg) -> None:
    """DETERMINISTIC: torch's deterministic algorithms (warning for an op that has none), deterministic cuDNN
    without autotuning, and a fixed cuBLAS workspace (read when cuBLAS starts, so set before any CUDA work)."""
    if not cfg.DETERMINISTIC:
        return
    if cfg.CUDNN_BENCHMARK:
        logger.warning("CUDNN_BENCHMARK True is overridden by DETERMINISTIC True")
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
