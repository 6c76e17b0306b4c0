#!/usr/bin/env python
"""How long a preempted run takes to stop: SIGTERM -> exit, and the stop checkpoint's write, on the CPU.

    python benchmarks/preemption.py                  # the synthetic model and R-50 (official architecture)
    python benchmarks/preemption.py --models synthetic --runs 3

Each model trains on the bundled synthetic shapes in a fresh process (R-50 at a small input size, so that an
iteration takes about a second on a CPU: the stop waits for the iteration in flight). After a few iterations the
process gets SIGTERM; the table gives the time until it exited, the part of it spent writing the resumable
checkpoint (as the run logs it), the checkpoint's size, and, as the peer measured in the same run, the time of one
training iteration (what a stop can at most add before the checkpoint starts) and SLURM's default KillWait (30 s).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MODELS = {
    "synthetic": ["--config-file", "EmbedMask/Synthetic.yaml", "DATALOADER.NUM_WORKERS", "1"],
    "R-50": ["--config-file", "EmbedMask/MS_R_50_1x.yaml", "MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu",
             "MODEL.FCOS.NUM_CLASSES", "4", "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "160",
             "SOLVER.IMS_PER_BATCH", "2", "DATASETS.TRAIN", "('synthetic_train',)", "DATASETS.TEST", "()",
             "DATALOADER.NUM_WORKERS", "1"],
}


def iterations_logged(output_dir: str) -> list[dict]:
    try:
        with open(os.path.join(output_dir, "metrics.json")) as f:
            return [r for r in map(json.loads, f) if "total_loss" in r]
    except (OSError, ValueError):
        return []


def measure(name: str, folder: str, warmup_iterations: int) -> dict:
    output_dir = os.path.join(folder, name)
    command = [sys.executable, os.path.join(ROOT, "tools", "train_net.py"), *MODELS[name], "SOLVER.MAX_ITER",
               "100000", "SOLVER.CHECKPOINT_PERIOD", "0", "TEST.EVAL_PERIOD", "0", "SEED", "0", "OUTPUT_DIR",
               output_dir, "--log-period", "1"]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    while len(iterations_logged(output_dir)) < warmup_iterations:
        if process.poll() is not None:
            raise RuntimeError(f"{name} stopped early:\n{process.stdout.read()[-3000:]}")
        time.sleep(0.05)
    records = iterations_logged(output_dir)
    sent = time.perf_counter()
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=600)
    seconds = time.perf_counter() - sent
    if process.returncode != 128 + signal.SIGTERM:
        raise RuntimeError(f"{name}: exit {process.returncode}\n{output[-3000:]}")
    log = open(os.path.join(output_dir, "log.txt")).read()
    write = float(re.search(r"Stop checkpoint written in ([0-9.]+) s", log).group(1))
    saved = open(os.path.join(output_dir, "last_checkpoint")).read().strip()
    return {"model": name, "exit_s": seconds, "write_s": write, "iteration_s": records[-1]["time"],
            "checkpoint_mb": os.path.getsize(os.path.join(output_dir, saved)) / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="synthetic,R-50")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--warmup-iterations", type=int, default=5)
    args = parser.parse_args()
    import torch

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models.split(","):
            for run in range(args.runs):
                rows.append(measure(name, os.path.join(folder, str(run)), args.warmup_iterations))
    print(f"SIGTERM -> exit on the CPU ({os.environ.get('OMP_NUM_THREADS', '2')} threads, torch {torch.__version__}), "
          f"{args.runs} run(s) per model")
    print(f"{'model':<12}{'exit s':>9}{'write s':>9}{'ckpt MiB':>10}{'iteration s':>13}{'exit / KillWait':>17}")
    for row in rows:
        print(f"{row['model']:<12}{row['exit_s']:>9.2f}{row['write_s']:>9.2f}{row['checkpoint_mb']:>10.0f}"
              f"{row['iteration_s']:>13.2f}{row['exit_s'] / 30:>17.2f}")


if __name__ == "__main__":
    main()
