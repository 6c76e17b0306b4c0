#!/usr/bin/env python
"""Prediction over a folder of images: the one-image loop ``embedmask predict`` had (results kept in memory,
written at the end) vs the batched, prefetched, streaming pipeline vs two processes, over 100 and 1,000 images,
in one run. Each configuration runs in its own process (peak RSS is the largest process's, from the kernel).

    python benchmarks/predict_scale.py                   # the synthetic model (R-18, 128x160 images), CPU
    python benchmarks/predict_scale.py --counts 100 1000 10000

The model is EmbedMask/Synthetic.yaml with random weights and --confidence-threshold 0, so every image has 100
detections to paste and encode, as in pseudo-labelling with a low threshold.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

LOOP = """
import json, sys, torch
torch.set_num_threads(int(sys.argv[4]))
import adet
from adet.cli.predict import expand_inputs
model = adet.load(sys.argv[1], device="cpu", confidence=0.0)
records = []
for path in expand_inputs([sys.argv[2]]):  # what predict did before: one image per call, every result kept
    for record in model(path).to_json():
        record["file_name"] = path
        records.append(record)
json.dump(records, open(sys.argv[3], "w"))
"""


def make_inputs(folder: str, count: int) -> str:
    import cv2
    import numpy as np

    from adet.data.synthetic import IMAGE_SIZE, generate_image

    images = os.path.join(folder, f"images_{count}")
    os.makedirs(images, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        cv2.imwrite(os.path.join(images, f"{i:06d}.jpg"), generate_image(rng, *IMAGE_SIZE)[0])
    return images


def make_weights(folder: str) -> str:
    import torch

    from adet.model_zoo import get_config
    from adet.modeling import build_model

    cfg = get_config("EmbedMask/Synthetic.yaml")
    torch.manual_seed(0)
    path = os.path.join(folder, "synthetic_random.pth")
    torch.save({"model": build_model(cfg).state_dict(), "config": cfg.dump()}, path)
    return path


def timed(command: list[str], env: dict) -> tuple[float, float]:
    """(seconds, peak RSS in MB of the largest process) of a command run alone."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=log)
        _, status, usage = os.wait4(process.pid, 0)  # this command's own peak (its workers' included)
        process.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
        if process.returncode:
            log.seek(0)
            raise SystemExit(f"{' '.join(command)} failed:\n{log.read()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--memory-count", type=int, default=5000,
                        help="also the loop and the default pipeline over this many images (memory growth)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each configuration, interleaved; the best")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of a single process")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        weights = make_weights(folder)
        env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS=str(args.threads))
        split_env = dict(env, OMP_NUM_THREADS=str(max(args.threads // 2, 1)))  # two processes share the cores
        predict = [sys.executable, "-m", "adet", "predict", "--weights", weights, "--confidence-threshold", "0"]
        rows = []
        plan = [(count, None) for count in args.counts] + ([(args.memory_count, ("loop", "default"))]
                                                            if args.memory_count else [])
        for count, only in plan:
            images = make_inputs(folder, count)

            def out(name: str, images: str = images, count: int = count) -> list[str]:
                return ["--input", images, "--json", os.path.join(folder, f"{name}_{count}.json")]

            configs = [
                ("loop", "one-image loop (before)", [sys.executable, "-c", LOOP, weights, images,
                                                     os.path.join(folder, f"loop_{count}.json"), str(args.threads)],
                 env),
                ("default", "batched: default (batch 4, 2 workers)", predict + out("b4"), env),
                ("exact", "batched: batch 1, no workers", predict + out("b1") + ["--batch-size", "1", "--workers",
                                                                                 "0"], env),
                ("two", "2 processes x 1 thread, batch 4, 1 worker", predict + out("p2") + [
                    "--num-gpus", "2", "--workers", "1", "MODEL.DEVICE", "cpu"], split_env),
            ]
            configs = [c for c in configs if only is None or c[0] in only]
            best: dict[str, tuple[float, float]] = {}
            for _ in range(args.repeats if only is None else 1):
                for key, _, command, run_env in configs:
                    if "--json" in command:  # a rerun would skip the images already done
                        result = command[command.index("--json") + 1]
                        subprocess.run(["rm", "-rf", result, result + ".parts"], check=True)
                    seconds, rss = timed(command, run_env)
                    best[key] = min(best.get(key, (seconds, rss)), (seconds, rss))
            for key, name, _, _ in configs:
                seconds, rss = best[key]
                rows.append((count, name, count / seconds, rss, key))
                print(f"{count:>6} {name:<44} {count / seconds:7.1f} img/s  peak RSS {rss:6.0f} MB", flush=True)
            loop = json.load(open(os.path.join(folder, f"loop_{count}.json")))
            if only is None:
                exact = json.load(open(os.path.join(folder, f"b1_{count}.json"))) == loop
                print(f"{count:>6} batch 1 identical to the loop's results: {exact}")
        print("\n| images | configuration | images/s | vs loop | peak RSS MB |\n|---|---|---|---|---|")
        for count, name, rate, rss, _ in rows:
            base = next(r for c, _, r, _, k in rows if c == count and k == "loop")
            print(f"| {count} | {name} | {rate:.1f} | {rate / base:.2f}x | {rss:.0f} |")


if __name__ == "__main__":
    main()
