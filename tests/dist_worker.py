"""Run in each process by test_train.py's multi-process test (spawned workers import it by name)."""

import os

import torch

from adet.cli.options import register_datasets_from_args
from adet.config import get_cfg
from adet.engine import DefaultTrainer
from adet.engine.defaults import default_setup
from adet.utils import comm


def train_and_save_weights(config_text: str, dataset: str) -> None:
    register_datasets_from_args([dataset])
    cfg = get_cfg()
    cfg.merge_from_other_cfg(cfg.load_cfg(config_text))
    default_setup(cfg, None)
    trainer = DefaultTrainer(cfg)
    trainer.resume_or_load(resume=False)
    initial = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    trainer.train(log_period=1)
    final = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    torch.save({"initial": initial, "final": final}, os.path.join(cfg.OUTPUT_DIR, f"weights_rank{comm.get_rank()}.pt"))
