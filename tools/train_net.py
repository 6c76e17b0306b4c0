#!/usr/bin/env python
"""Train and evaluate EmbedMask, detectron2/AdelaiDet style.

    python tools/train_net.py --config-file configs/EmbedMask/MS_R_50_1x.yaml --num-gpus 4 OUTPUT_DIR out
    python tools/train_net.py --config-file configs/EmbedMask/MS_R_50_1x.yaml --eval-only MODEL.WEIGHTS x.pth
    torchrun --nproc_per_node 4 tools/train_net.py --config-file ...   # also works
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from adet.checkpoint import DetectionCheckpointer  # noqa: E402
from adet.engine.defaults import (  # noqa: E402
    default_argument_parser,
    default_setup,
    register_datasets_from_args,
    run_cli,
    setup_cfg,
)
from adet.engine.evaluate import evaluate_datasets  # noqa: E402
from adet.engine.launch import check_devices, launch  # noqa: E402
from adet.modeling import build_model, prepare_for_inference  # noqa: E402


def main(args):
    register_datasets_from_args(args.dataset)
    cfg = setup_cfg(args)
    default_setup(cfg, args)
    if args.eval_only:
        model = build_model(cfg)
        checkpointer = DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
        if args.resume and checkpointer.has_checkpoint():
            checkpointer.load(checkpointer.get_checkpoint_file(), checkpointables=[])
        else:
            checkpointer.load(cfg.MODEL.WEIGHTS)
        return evaluate_datasets(cfg, prepare_for_inference(model))
    from adet.engine.trainer import train

    return train(cfg, resume=args.resume, log_period=args.log_period)


def cli(argv: list[str] | None = None):
    args = default_argument_parser().parse_args(argv)
    # Check the config and datasets in this process first, so mistakes fail before workers start.
    register_datasets_from_args(args.dataset)
    cfg = setup_cfg(args)
    check_devices(args.num_gpus, cfg.MODEL.DEVICE)
    return launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
                  dist_url=args.dist_url, args=(args,), use_cuda=cfg.MODEL.DEVICE.startswith("cuda"))


if __name__ == "__main__":
    sys.exit(run_cli(cli))
