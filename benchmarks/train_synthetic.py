#!/usr/bin/env python
"""Train configs/EmbedMask/Synthetic.yaml on the CPU and report speed, the loss curve and the final AP.

    python benchmarks/train_synthetic.py                 # the full schedule, 2 threads
    python benchmarks/train_synthetic.py --iters 300     # a shorter run (the schedule is scaled to fit)

Prints iterations/s, the loss at the start / middle / end of training, wall time, and bbox/segm AP on synthetic_val,
next to the same numbers for a peer: the untrained model (iteration 0) evaluated in the same run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", default=os.path.join(ROOT, "configs", "EmbedMask", "Synthetic.yaml"))
    parser.add_argument("--iters", type=int, default=0, help="train this many iterations (0: the config's)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=os.path.join(ROOT, "output", "benchmark_synthetic"))
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from adet.config import get_cfg
    from adet.engine import DefaultTrainer
    from adet.engine.evaluate import evaluate_datasets
    from adet.utils.logger import setup_logger
    from adet.utils.plots import read_metrics

    cfg = get_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.OUTPUT_DIR = args.output
    if args.iters:
        scale = args.iters / cfg.SOLVER.MAX_ITER
        cfg.SOLVER.MAX_ITER = args.iters
        cfg.SOLVER.STEPS = tuple(int(s * scale) for s in cfg.SOLVER.STEPS)
        cfg.SOLVER.WARMUP_ITERS = int(cfg.SOLVER.WARMUP_ITERS * scale)
    cfg.TEST.EVAL_PERIOD = 0
    if os.path.isdir(args.output):
        for name in os.listdir(args.output):
            if name.endswith(".pth") or name in ("last_checkpoint", "metrics.json"):
                os.remove(os.path.join(args.output, name))
    setup_logger(args.output)

    trainer = DefaultTrainer(cfg)
    trainer.resume_or_load(resume=False)
    untrained = evaluate_datasets(cfg, trainer.model)[cfg.DATASETS.TEST[0]]
    start = time.perf_counter()
    trainer.train(log_period=20)
    results = trainer.last_results[cfg.DATASETS.TEST[0]]
    wall = time.perf_counter() - start

    losses = [r for r in read_metrics(os.path.join(args.output, "metrics.json")) if "total_loss" in r]
    times = [r["time"] for r in losses[1:]]
    third = max(len(losses) // 3, 1)

    def mean_loss(part):
        return sum(r["total_loss"] for r in part) / len(part)

    print(f"\nEmbedMask on synthetic shapes, {cfg.SOLVER.MAX_ITER} iterations x {cfg.SOLVER.IMS_PER_BATCH} images, "
          f"{args.threads} threads, torch {torch.__version__}")
    print(f"{'':24}{'iter/s':>8}{'wall min':>10}{'loss first third':>18}{'last third':>12}"
          f"{'bbox AP':>9}{'segm AP':>9}{'segm AP50':>11}")
    print(f"{'untrained (iteration 0)':24}{'':>8}{'':>10}{'':>18}{'':>12}"
          f"{untrained['bbox']['AP']:>9.1f}{untrained['segm']['AP']:>9.1f}{untrained['segm']['AP50']:>11.1f}")
    print(f"{'trained':24}{1 / (sum(times) / len(times)):>8.2f}{wall / 60:>10.1f}{mean_loss(losses[:third]):>18.3f}"
          f"{mean_loss(losses[-third:]):>12.3f}{results['bbox']['AP']:>9.1f}{results['segm']['AP']:>9.1f}"
          f"{results['segm']['AP50']:>11.1f}")
    print(f"segm AP gain over the untrained model: {results['segm']['AP'] - untrained['segm']['AP']:+.1f} points")


if __name__ == "__main__":
    main()
