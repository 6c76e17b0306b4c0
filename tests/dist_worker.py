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


def check_default_group_rules(out_dir: str) -> None:
    """What each process of a launch finds: a CPU tensor on the default group (NCCL refuses it), and the same
    collectives through adet.utils.comm, which routes them by device."""
    import json

    import torch.distributed as dist

    found = {"backend": str(dist.get_backend())}
    try:
        dist.all_reduce(torch.ones(1))
        found["cpu_tensor_on_default_group"] = "accepted"
    except RuntimeError as e:
        found["cpu_tensor_on_default_group"] = str(e).splitlines()[0]
    found["routed_sum"] = comm.all_reduce(torch.full((1,), comm.get_rank() + 1.0)).item()
    found["broadcast"] = comm.broadcast(torch.tensor([comm.get_rank() + 10])).item()
    found["gathered"] = comm.all_gather(comm.get_rank())
    comm.synchronize()
    with open(os.path.join(out_dir, f"rank{comm.get_rank()}.json"), "w") as f:
        json.dump(found, f)
