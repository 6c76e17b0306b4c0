#!/usr/bin/env python
"""Everything GPU-related in one command, with one table at the end:

1. the CUDA tests (``pytest -m gpu``: the fused kernel against the reference, gradcheck, its build);
2. the coupling op, fused kernel vs dense PyTorch, 100 and 500 proposals, forward and forward+backward, time and
   peak GPU memory;
3. end-to-end inference at batch 1, EmbedMask R-50 vs torchvision's Mask R-CNN R-50-FPN, fp32 and fp16 (autocast);
4. a short AMP training run on the synthetic dataset: iterations/s, peak memory, losses finite;
5. parity of the R-50 outputs on the reference images (deterministic official-format weights): CUDA vs CPU, and
   CUDA vs the official implementation's outputs.

    python benchmarks/gpu_check.py                 # on a CUDA machine, about 5 minutes
    python benchmarks/gpu_check.py --device cpu --quick --only coupling,training   # check the script on a CPU

Without CUDA (and no --device cpu) it says so and exits 0. Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE = os.path.join(ROOT, "tests", "fixtures", "reference")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

STEPS = ("tests", "coupling", "inference", "training", "parity")


class Table:
    def __init__(self):
        self.rows: list[tuple[str, str, bool]] = []

    def add(self, check: str, result: str, ok: bool = True) -> None:
        self.rows.append((check, result, ok))
        print(f"  {'ok  ' if ok else 'FAIL'} {check}: {result}", flush=True)

    def print(self, title: str) -> None:
        width = max(len(c) for c, _, _ in self.rows)
        print(f"\n{title}\n{'check':<{width}}  {'status':<6}  result\n{'-' * (width + 60)}")
        for check, result, ok in self.rows:
            print(f"{check:<{width}}  {'ok' if ok else 'FAIL':<6}  {result}")


def run_tests(table: Table) -> None:
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                           os.path.join(ROOT, "tests")], capture_output=True, text=True, cwd=ROOT)
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-300:]
    failed = re.search(r"(\d+) (failed|error)", summary)
    table.add("CUDA tests (pytest -m gpu)", summary.strip("= "), done.returncode in (0, 5) and not failed)


def run_coupling(table: Table, device: str, quick: bool) -> None:
    import coupling

    size = (50, 76) if quick else (200, 304)
    for row in coupling.run(device, repeat=2 if quick else 20, height=size[0], width=size[1]):
        memory = f", peak {row['peak_mib']:.0f} MiB ({row['memory_ratio']:.2f}x)" if row["peak_mib"] == row[
            "peak_mib"] else ""
        table.add(f"coupling P={row['proposals']} {row['pass']} {row['path']}",
                  f"{row['seconds'] * 1000:.2f} ms ({row['speedup']:.1f}x dense){memory}")


def run_inference(table: Table, device: str, quick: bool) -> None:
    import inference

    for precision in ("fp32", "fp16"):
        args = inference.get_parser().parse_args(["--device", device, "--precision", precision, "--runs",
                                                  "2" if quick else "20", "--tmp", tempfile.gettempdir()])
        try:
            ours, peer = inference.compare(args)
        except RuntimeError as e:
            table.add(f"inference batch 1 {precision}", str(e).splitlines()[0], ok=False)
            continue
        memory = "peak_gpu_mb" if device.startswith("cuda") else "peak_rss_mb"
        table.add(f"inference batch 1 {precision}",
                  f"EmbedMask R-50 {ours['total'] * 1000:.1f} ms/img vs Mask R-CNN {peer['total'] * 1000:.1f} "
                  f"({ours['total'] / peer['total']:.2f}x), peak {ours[memory]:.0f} vs {peer[memory]:.0f} MB, "
                  f"{ours['detections']:.0f} dets")


def run_training(table: Table, device: str, quick: bool) -> None:
    import torch

    from adet.config import get_cfg
    from adet.engine import DefaultTrainer
    from adet.errors import TrainingDivergedError
    from adet.utils.plots import read_metrics

    iterations = 10 if quick else 100
    with tempfile.TemporaryDirectory() as output_dir:
        cfg = get_cfg()
        cfg.merge_from_file(os.path.join(ROOT, "configs", "EmbedMask", "Synthetic.yaml"))
        cfg.merge_from_list(["MODEL.DEVICE", device, "SOLVER.AMP.ENABLED", True, "SOLVER.MAX_ITER", iterations,
                             "SOLVER.CHECKPOINT_PERIOD", 0, "DATASETS.TEST", (), "OUTPUT_DIR", output_dir,
                             "DATALOADER.NUM_WORKERS", 2])
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        trainer = DefaultTrainer(cfg)
        trainer.resume_or_load(resume=False)
        start = time.perf_counter()
        try:
            trainer.train(log_period=1)
        except TrainingDivergedError as e:
            table.add(f"AMP training, synthetic, {iterations} it", str(e), ok=False)
            return
        wall = time.perf_counter() - start
        records = [r for r in read_metrics(os.path.join(output_dir, "metrics.json")) if "total_loss" in r]
        seconds = [r["time"] for r in records[len(records) // 5:]]  # after the warm-up iterations
        finite = all(v == v and abs(v) != float("inf") for r in records for k, v in r.items() if k.startswith("loss"))
        peak = (f"peak {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB" if device.startswith("cuda") else
                f"wall {wall:.0f} s")
        table.add(f"AMP training, synthetic, {iterations} it",
                  f"{len(seconds) / sum(seconds):.2f} it/s at batch {cfg.SOLVER.IMS_PER_BATCH}, {peak}, losses "
                  f"{'finite' if finite else 'NOT finite'} (first {records[0]['total_loss']:.3f}, last "
                  f"{records[-1]['total_loss']:.3f})", ok=finite and len(records) == iterations)


def _match(boxes_a, classes_a, boxes_b, classes_b):
    """Greedy one-to-one matching in a's order: same class, best box IoU >= 0.98."""
    import numpy as np

    lt = np.maximum(boxes_a[:, None, :2], boxes_b[None, :, :2])
    rb = np.minimum(boxes_a[:, None, 2:], boxes_b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(2)
    area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])  # noqa: E731
    iou = inter / np.maximum(area(boxes_a)[:, None] + area(boxes_b)[None] - inter, 1e-9)
    iou[classes_a[:, None] != classes_b[None]] = 0
    pairs, used = [], set()
    for i in range(len(boxes_a)):
        for j in np.argsort(-iou[i]):
            if iou[i, j] < 0.98:
                break
            if int(j) not in used:
                used.add(int(j))
                pairs.append((i, int(j)))
                break
    return pairs


def compare_outputs(a: dict, b: dict) -> tuple[str, bool]:
    """a, b: {"boxes", "scores", "classes", "masks"} numpy arrays of one image; a is the reference."""
    import numpy as np

    pairs = _match(a["boxes"], a["classes"], b["boxes"], b["classes"])
    if not pairs:
        return f"0/{len(a['scores'])} matched", False
    i, j = (np.array(x) for x in zip(*pairs))
    score = np.abs(a["scores"][i] - b["scores"][j]).max()
    box = np.abs(a["boxes"][i] - b["boxes"][j]).max()
    inter = (a["masks"][i] & b["masks"][j]).reshape(len(i), -1).sum(1)
    union = (a["masks"][i] | b["masks"][j]).reshape(len(i), -1).sum(1)
    mask_iou = inter / np.maximum(union, 1)
    matched = len(pairs) / max(len(a["scores"]), 1)
    ok = matched >= 0.97 and score <= 1e-4 and box <= 0.05 and np.median(mask_iou) >= 0.995 and mask_iou.min() >= 0.98
    return (f"{len(pairs)}/{len(a['scores'])} matched, max |d score| {score:.1e}, max |d box| {box:.3f} px, "
            f"mask IoU median {np.median(mask_iou):.4f} min {mask_iou.min():.4f}"), ok


def run_parity(table: Table, device: str) -> None:
    import cv2
    import numpy as np
    import pycocotools.mask as mask_util
    import torch

    sys.path.insert(0, REFERENCE)
    import detweights

    from adet.config import get_cfg
    from adet.engine import DefaultPredictor

    with open(os.path.join(REFERENCE, "embedmask_R_50_state_dict.json")) as f:
        entries = json.load(f)
    official = np.load(os.path.join(REFERENCE, "outputs_R_50.npz"))
    with open(os.path.join(REFERENCE, "outputs_R_50_masks_rle.json")) as f:
        official_rles = json.load(f)
    with tempfile.TemporaryDirectory() as folder:
        weights = os.path.join(folder, "detweights_R_50.pth")
        torch.save({"model": detweights.make_state_dict(entries)}, weights)
        predictors = {}
        for target in ("cpu", device):
            cfg = get_cfg()
            cfg.merge_from_file(os.path.join(ROOT, "configs", "EmbedMask", "MS_R_50_1x.yaml"))
            cfg.merge_from_list(["MODEL.WEIGHTS", weights, "MODEL.DEVICE", target])
            predictors[target] = DefaultPredictor(cfg)
        for name in ("astronaut", "coffee"):
            image = cv2.imread(os.path.join(REFERENCE, "images", f"{name}.png"), cv2.IMREAD_COLOR)
            outputs = {}
            for target, predictor in predictors.items():
                instances = predictor(image)["instances"].to("cpu")
                outputs[target] = {"boxes": instances.pred_boxes.tensor.numpy(), "scores": instances.scores.numpy(),
                                   "classes": instances.pred_classes.numpy(), "masks": instances.pred_masks.numpy()}
            count = int(official[f"{name}__num"])
            rles = [{"size": r["size"], "counts": r["counts"].encode()} for r in official_rles[name]]
            reference = {"boxes": official[f"{name}__boxes"][:count], "scores": official[f"{name}__scores"][:count],
                         "classes": official[f"{name}__classes"][:count],
                         "masks": mask_util.decode(rles).transpose(2, 0, 1).astype(bool)}
            result, ok = compare_outputs(outputs["cpu"], outputs[device])
            table.add(f"parity {name}: {device} vs CPU", result, ok)
            result, ok = compare_outputs(reference, outputs[device])
            table.add(f"parity {name}: {device} vs official", result, ok)


def main() -> int:
    parser = argparse.ArgumentParser(description="EmbedMask's GPU checks and benchmarks, one table")
    parser.add_argument("--device", default="cuda", help="cuda (default); cpu runs the same steps to check the script")
    parser.add_argument("--only", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)}")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and smaller sizes")
    args = parser.parse_args()
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU on this machine (torch.cuda.is_available() is False): nothing to check. "
              "Run it on a CUDA machine, or pass --device cpu to try the steps on the CPU.")
        return 0
    steps = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        parser.error(f"--only: unknown steps {unknown}; choose from {', '.join(STEPS)}")
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    title = (f"EmbedMask GPU check on {name}: torch {torch.__version__}, CUDA {torch.version.cuda}, "
             f"{time.strftime('%Y-%m-%d')}")
    print(title)
    table = Table()
    for step in steps:
        print(f"[{step}]", flush=True)
        if step == "tests":
            run_tests(table)
        elif step == "coupling":
            run_coupling(table, args.device, args.quick)
        elif step == "inference":
            run_inference(table, args.device, args.quick)
        elif step == "training":
            run_training(table, args.device, args.quick)
        elif step == "parity":
            run_parity(table, args.device)
    table.print(title)
    return 0 if all(ok for _, _, ok in table.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
