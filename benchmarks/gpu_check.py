#!/usr/bin/env python
"""The GPU acceptance run: everything that only a GPU executes, in one command, one table and one JSON report.

Steps (each PASS or FAIL with its reason; a failing step does not stop the others):

- ``kernel``: the fused CUDA coupling kernel against the PyTorch reference at training sizes (values and gradients,
  float32 and float16), then its speed and peak memory against the dense path (benchmarks/coupling.py);
- ``training``: EmbedMask R-50 (configs/EmbedMask/MS_R_50_1x.yaml) at COCO image sizes (short side 640-800, long
  side at most 1333) on generated images, AMP (bfloat16 where the GPU computes it) and the fused kernel: losses
  finite and falling, s/iter, peak memory; then a few iterations in float16 with the gradient scaler;
- ``ddp``: ``tools/train_net.py --num-gpus 2`` on the one GPU with the default group on gloo for CUDA tensors
  (EMBEDMASK_DIST_BACKEND=cuda:gloo: NCCL refuses two processes on one GPU), SEED -1 and an evaluation during
  training: the CUDA side of the collectives' routing, ``set_device`` and DDP's ``device_ids`` for real;
- ``eval``: ``tools/train_net.py --eval-only`` of the trained model on a small generated set (COCO protocol);
- ``predict``: batched prediction (``embedmask predict``'s engine) against one image at a time: same detections,
  images/s of each;
- ``inference``: per-image latency at 800x1333 of EmbedMask R-50 in float32, float16 and bfloat16 against
  torchvision's Mask R-CNN R-50-FPN in the same run;
- ``parity``: the official-format R-50 outputs on the GPU against the CPU and against the official implementation's;
- ``tests``: ``pytest -m gpu`` (the kernel's tests, its build).

    python benchmarks/gpu_check.py --report gpu_check.json     # on a CUDA machine: sized for 5 minutes on an H100
    python benchmarks/gpu_check.py --device cpu --quick --only kernel,training   # the script itself, on a CPU

A bare GPU machine gets the dependencies the check needs from wheels: benchmarks/gpu_setup.sh. Without CUDA (and
no --device cpu) it says so and exits 0. Exit status 1 when a step fails.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE = os.path.join(ROOT, "tests", "fixtures", "reference")
TRAIN_NET = os.path.join(ROOT, "tools", "train_net.py")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

STEPS = ("kernel", "training", "ddp", "eval", "predict", "inference", "parity", "tests")
COCO_SIZE = (480, 640)  # generated images, COCO's most common size; the configs resize them to 640-800 x <=1333


class Report:
    """The table's rows as they come (printed at once), and the JSON report."""

    def __init__(self, title: str, device: str):
        self.title, self.device = title, device
        self.rows: list[dict] = []

    def add(self, step: str, check: str, result: str, ok: bool = True, **values) -> None:
        self.rows.append({"step": step, "check": check, "status": "PASS" if ok else "FAIL", "result": result,
                          **values})
        print(f"  {'PASS' if ok else 'FAIL'} {check}: {result}", flush=True)

    def print(self) -> None:
        width = max(len(r["check"]) for r in self.rows)
        print(f"\n{self.title}\n{'check':<{width}}  status  result\n{'-' * (width + 70)}")
        for r in self.rows:
            print(f"{r['check']:<{width}}  {r['status']:<6}  {r['result']}")

    @property
    def passed(self) -> bool:
        return bool(self.rows) and all(r["status"] == "PASS" for r in self.rows)

    def write(self, path: str, seconds: dict) -> None:
        with open(path, "w") as f:
            json.dump({"title": self.title, "device": self.device, "passed": self.passed, "step_seconds": seconds,
                       "rows": self.rows}, f, indent=1)


class Workspace:
    """Generated datasets (registered for this process, and as --dataset arguments for the scripts) and the
    artefacts the steps hand each other (the trained checkpoint)."""

    def __init__(self, folder: str, quick: bool):
        from adet.data import DatasetCatalog, register_coco_instances
        from adet.data.synthetic import IMAGE_SIZE, write_split

        self.folder, self.quick = folder, quick
        size = IMAGE_SIZE if quick else COCO_SIZE
        self.datasets = {}
        counts = (16, 8) if quick else (64, 24)
        for name, count, seed in (("gpu_check_train", counts[0], 1), ("gpu_check_val", counts[1], 2)):
            json_file = write_split(folder, name, count, seed=seed, size=size)
            if name not in DatasetCatalog.list():
                register_coco_instances(name, {}, json_file, os.path.join(folder, name))
            self.datasets[name] = f"{name}={json_file}:{os.path.join(folder, name)}"
        self.checkpoint: str | None = None

    def dataset_args(self) -> list[str]:
        return [a for spec in self.datasets.values() for a in ("--dataset", spec)]


def config_overrides(device: str, quick: bool) -> list:
    """The model of the training steps: R-50 at COCO sizes on a GPU; the small synthetic model for --quick."""
    if quick:
        return ["MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.STEM_OUT_CHANNELS", 32, "MODEL.FPN.OUT_CHANNELS", 64,
                "MODEL.EMBEDMASK.MASK_BRANCH.CHANNELS", 32, "MODEL.EMBEDMASK.MASK_BRANCH.OUT_CHANNELS", 32,
                "INPUT.MIN_SIZE_TRAIN", (128,), "INPUT.MAX_SIZE_TRAIN", 160, "INPUT.MIN_SIZE_TEST", 128,
                "INPUT.MAX_SIZE_TEST", 160, "SOLVER.IMS_PER_BATCH", 4, "MODEL.DEVICE", device,
                "MODEL.WEIGHTS", "", "MODEL.FCOS.NUM_CLASSES", 4, "MODEL.BACKBONE.FREEZE_AT", 0,
                "MODEL.RESNETS.NORM", "BN", "DATALOADER.NUM_WORKERS", 0]
    # No ImageNet weights on a bare machine: trained from scratch, so BatchNorm learns (not frozen) and gradients
    # are clipped; 8 images per iteration, the official recipe's per-GPU share on a GPU four times as big.
    return ["MODEL.DEVICE", device, "MODEL.WEIGHTS", "", "MODEL.FCOS.NUM_CLASSES", 4, "MODEL.BACKBONE.FREEZE_AT", 0,
            "MODEL.RESNETS.NORM", "BN", "SOLVER.IMS_PER_BATCH", 8, "SOLVER.BASE_LR", 0.01, "SOLVER.WARMUP_ITERS", 20,
            "SOLVER.CLIP_GRADIENTS.ENABLED", True, "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "full_model",
            "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", 5.0, "DATALOADER.NUM_WORKERS", 6]


def official_config(device: str, quick: bool, *extra):
    from adet.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(ROOT, "configs", "EmbedMask", "MS_R_50_1x.yaml"))
    cfg.merge_from_list(config_overrides(device, quick) + list(extra))
    return cfg


def relative_error(a, b) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp(min=1e-12)).item()


def run_kernel(report: Report, device: str, quick: bool, work: Workspace) -> None:
    import coupling
    import torch

    from adet.layers.coupling import mask_probability_reference
    from adet.layers.coupling_fused import FusedCoupling, fused_kernel_available, load_cuda_extension, load_emulator

    if device.startswith("cuda"):
        if not fused_kernel_available():
            report.add("kernel", "fused kernel build", "the CUDA kernel could not be built (see the warning above)",
                       ok=False)
            return
        module, label = load_cuda_extension(), "fused CUDA"
    else:
        module, label = load_emulator(), "CPU emulation of the kernel"
    height, width = (50, 76) if quick else (200, 304)  # stride 4 of 800x1216
    for dtype, tolerance in ((torch.float32, 1e-5), (torch.float16, 2e-3)):
        if dtype == torch.float16 and not device.startswith("cuda"):
            continue
        pixels, embeddings, margins, images = (t.to(device) for t in coupling.make_inputs(500, "cpu", height, width))
        leaves = [t.to(dtype).requires_grad_() for t in (pixels, embeddings, margins)]
        out = FusedCoupling.apply(module, *leaves, images)
        grad_out = torch.rand_like(out)
        (out * grad_out).sum().backward()
        reference = [t.to(dtype).float().requires_grad_() for t in (pixels, embeddings, margins)]
        expected = mask_probability_reference(*reference, images)
        (expected * grad_out).sum().backward()
        errors = [relative_error(out, expected)] + [relative_error(a.grad, b.grad) for a, b in zip(leaves, reference)]
        report.add("kernel", f"{label} vs reference, {str(dtype)[6:]}, 500 proposals, 2x{height}x{width}",
                   "max relative error: values {:.1e}, gradients pixels {:.1e} embeddings {:.1e} margins "
                   "{:.1e}".format(*errors), ok=max(errors) < tolerance, errors=errors, tolerance=tolerance)
    for row in coupling.run(device, repeat=2 if quick else 20, height=height, width=width):
        memory = f", peak {row['peak_mib']:.0f} MiB ({row['memory_ratio']:.2f}x)" if row["peak_mib"] == row[
            "peak_mib"] else ""
        report.add("kernel", f"coupling P={row['proposals']} {row['pass']} {row['path']}",
                   f"{row['seconds'] * 1000:.2f} ms ({row['speedup']:.1f}x dense){memory}", **row)


def train(cfg) -> tuple[list[dict], float]:
    """Train ``cfg`` in this process; its metrics.json records with losses, and the peak GPU memory (MiB)."""
    import torch

    from adet.engine import DefaultTrainer
    from adet.utils.plots import read_metrics

    if cfg.MODEL.DEVICE.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    trainer = DefaultTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train(log_period=1)
    peak = torch.cuda.max_memory_allocated() / 2**20 if cfg.MODEL.DEVICE.startswith("cuda") else float("nan")
    records = [r for r in read_metrics(os.path.join(cfg.OUTPUT_DIR, "metrics.json")) if "total_loss" in r]
    return records, peak


def run_training(report: Report, device: str, quick: bool, work: Workspace) -> None:
    import torch

    from adet.engine.training.trainer import amp_dtype
    from adet.layers import coupling_fused

    iterations = 10 if quick else 120
    output_dir = os.path.join(work.folder, "training")
    cfg = official_config(device, quick, "SOLVER.AMP.ENABLED", True, "SOLVER.MAX_ITER", iterations,
                          "SOLVER.CHECKPOINT_PERIOD", 0, "DATASETS.TRAIN", ("gpu_check_train",), "DATASETS.TEST", (),
                          "OUTPUT_DIR", output_dir)
    dtype = str(amp_dtype(cfg.SOLVER.AMP.PRECISION, torch.device(device).type))[6:]
    records, peak = train(cfg)
    work.checkpoint = os.path.join(output_dir, "model_final.pth")
    losses = [r["total_loss"] for r in records]
    window = max(1, len(losses) // 5)
    first, last = sum(losses[:window]) / window, sum(losses[-window:]) / window
    finite = all(math.isfinite(v) for r in records for k, v in r.items() if k.startswith("loss"))
    seconds = [r["time"] for r in records[len(records) // 5:]]  # after the warm-up iterations
    fused = device.startswith("cuda") and "cuda" in coupling_fused._modules and "cuda" not in coupling_fused._failed
    size = f"R-{cfg.MODEL.RESNETS.DEPTH}, {cfg.SOLVER.IMS_PER_BATCH} images of {cfg.INPUT.MIN_SIZE_TRAIN[0]}-" \
           f"{cfg.INPUT.MIN_SIZE_TRAIN[-1]} x <={cfg.INPUT.MAX_SIZE_TRAIN}"
    memory = f", peak {peak:.0f} MiB" if peak == peak else ""
    report.add("training", f"AMP ({dtype}) training, {iterations} it, {size}",
               f"{sum(seconds) / len(seconds):.3f} s/it{memory}, losses {'finite' if finite else 'NOT finite'}, "
               f"mean total loss first {window} it {first:.3f} -> last {window} it {last:.3f}"
               f"{', fused kernel used' if fused else ''}",
               ok=finite and len(records) == iterations and last < first and (fused or not device.startswith("cuda")),
               seconds_per_iteration=sum(seconds) / len(seconds), peak_mib=peak, first_loss=first, last_loss=last)
    if device.startswith("cuda"):  # float16 needs the gradient scaler: its path, a few iterations
        cfg = official_config(device, quick, "SOLVER.AMP.ENABLED", True, "SOLVER.AMP.PRECISION", "float16",
                              "SOLVER.MAX_ITER", 20, "SOLVER.CHECKPOINT_PERIOD", 0, "DATASETS.TRAIN",
                              ("gpu_check_train",), "DATASETS.TEST", (), "OUTPUT_DIR", output_dir + "_fp16")
        records, peak = train(cfg)
        finite = all(math.isfinite(r["total_loss"]) for r in records)
        report.add("training", "float16 training with the gradient scaler, 20 it",
                   f"{len(records)} iterations, losses {'finite' if finite else 'NOT finite'} (last "
                   f"{records[-1]['total_loss']:.3f}), peak {peak:.0f} MiB", ok=finite and len(records) == 20)


def script(args: list[str], env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    environment = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]), **(env or {}))
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=environment, timeout=timeout,
                          cwd=ROOT)


def last_line(done: subprocess.CompletedProcess) -> str:
    lines = [x for x in (done.stderr + done.stdout).strip().splitlines() if x.strip()]
    return lines[-1][-300:] if lines else f"exit status {done.returncode}"


def run_ddp(report: Report, device: str, quick: bool, work: Workspace) -> None:
    output_dir = os.path.join(work.folder, "ddp")
    config = os.path.join(work.folder, "ddp.yaml")
    with open(config, "w") as f:
        f.write(official_config(device, quick, "SOLVER.IMS_PER_BATCH", 4, "SOLVER.MAX_ITER", 20, "SEED", -1,
                                "TEST.EVAL_PERIOD", 10, "SOLVER.CHECKPOINT_PERIOD", 0, "DATALOADER.NUM_WORKERS", 2,
                                "DIST_TIMEOUT", 120).dump())
    done = script([TRAIN_NET, "--config-file", config, "--num-gpus", "2", *work.dataset_args(), "--log-period", "1",
                   "DATASETS.TRAIN", "('gpu_check_train',)", "DATASETS.TEST", "('gpu_check_val',)",
                   "OUTPUT_DIR", output_dir], env={"EMBEDMASK_DIST_BACKEND": "cuda:gloo"})
    metrics = os.path.join(output_dir, "metrics.json")
    records = [json.loads(x) for x in open(metrics)] if os.path.exists(metrics) else []
    losses = [r for r in records if "total_loss" in r]
    evaluations = [r["iteration"] for r in records if "segm/AP" in r]
    finite = all(math.isfinite(r["total_loss"]) for r in losses)
    ok = done.returncode == 0 and len(losses) == 20 and finite and evaluations[:1] == [9]
    result = (f"20 iterations on 2 processes, losses finite, evaluated at iterations {[i + 1 for i in evaluations]}"
              if ok else f"exit status {done.returncode}: {last_line(done)}; {len(losses)} logged iterations, "
              f"evaluations at {evaluations}")
    report.add("ddp", "2 processes on 1 GPU, default group cuda:gloo, SEED -1, evaluation at it 10", result, ok=ok)


def run_eval(report: Report, device: str, quick: bool, work: Workspace) -> None:
    if not work.checkpoint or not os.path.exists(work.checkpoint):
        report.add("eval", "--eval-only", "no trained checkpoint (the training step did not run or failed)", ok=False)
        return
    output_dir = os.path.join(work.folder, "eval")
    config = os.path.join(work.folder, "eval.yaml")
    with open(config, "w") as f:
        # every detection kept: a model this briefly trained scores low, and the protocol needs detections to count
        f.write(official_config(device, quick, "MODEL.FCOS.INFERENCE_TH_TEST", 0.0).dump())
    start = time.perf_counter()
    done = script([TRAIN_NET, "--config-file", config, "--eval-only", *work.dataset_args(), "DATASETS.TEST",
                   "('gpu_check_val',)", "MODEL.WEIGHTS", work.checkpoint, "OUTPUT_DIR", output_dir])
    seconds = time.perf_counter() - start
    found = re.search(r"gpu_check_val segm: AP (\S+)", done.stdout + done.stderr)
    results = os.path.join(output_dir, "inference", "coco_instances_results.json")
    detections = len(json.load(open(results))) if os.path.exists(results) else 0
    ok = done.returncode == 0 and detections > 0 and found is not None
    report.add("eval", "--eval-only, generated validation set (COCO protocol)",
               f"{detections} detections evaluated in {seconds:.0f} s (process included)"
               f"{f', segm AP {found.group(1)}' if found else ''}" if ok else
               f"exit status {done.returncode}: {last_line(done)}", ok=ok)


def run_predict(report: Report, device: str, quick: bool, work: Workspace) -> None:
    import inference
    import numpy as np

    from adet.engine import DefaultPredictor
    from adet.engine.inference.batch_predict import predict_files

    folder = os.path.join(work.folder, "gpu_check_val")
    paths = sorted(os.path.join(folder, name) for name in os.listdir(folder))
    # --quick: the small model just trained, every detection kept (a few iterations leave low scores)
    cfg = official_config(device, quick, "MODEL.WEIGHTS", work.checkpoint or "", "MODEL.FCOS.INFERENCE_TH_TEST", 0.0)
    if not quick:  # the official model (reference weights: 100 detections per image, as trained weights give)
        from adet.config import get_cfg

        cfg = get_cfg()
        cfg.merge_from_file(os.path.join(ROOT, "configs", "EmbedMask", "MS_R_50_1x.yaml"))
        cfg.merge_from_list(["MODEL.DEVICE", device, "MODEL.WEIGHTS", inference.reference_weights(work.folder)])
    predictor = DefaultPredictor(cfg)
    outputs, speed = {}, {}
    for batch_size in (1, 8):
        found = {}

        def keep(item, instances, found=found):
            found[item.path] = (instances.scores.numpy(), instances.pred_boxes.tensor.numpy())

        timing = predict_files(predictor, paths, keep, lambda path, reason: None, batch_size=batch_size,
                               num_workers=2, keep_original=False)
        outputs[batch_size], speed[batch_size] = found, timing["images"] / timing["seconds"]
    worst_score, worst_box, counts = 0.0, 0.0, True
    for path in paths:
        (s1, b1), (s8, b8) = outputs[1][path], outputs[8][path]
        if len(s1) != len(s8):
            counts = False
            continue
        worst_score = max(worst_score, float(np.abs(np.sort(s1) - np.sort(s8)).max(initial=0)))
        order1, order8 = np.argsort(-s1, kind="stable"), np.argsort(-s8, kind="stable")
        worst_box = max(worst_box, float(np.abs(b1[order1] - b8[order8]).max(initial=0)))
    detections = sum(len(outputs[1][p][0]) for p in paths)
    ok = counts and len(outputs[8]) == len(paths) and detections > 0 and worst_score < 1e-2
    report.add("predict", f"batched predict ({len(paths)} images), batch 8 vs 1",
               f"{speed[8]:.1f} vs {speed[1]:.1f} images/s ({speed[8] / speed[1]:.2f}x), {detections} detections, "
               f"same counts: {counts}, max |d score| {worst_score:.1e}, max |d box| {worst_box:.2f} px", ok=ok,
               images_per_second={"1": speed[1], "8": speed[8]})


def run_inference(report: Report, device: str, quick: bool, work: Workspace) -> None:
    import inference

    for precision in ("fp32", "fp16"):
        argv = ["--device", device, "--precision", precision, "--runs", "2" if quick else "10", "--tmp", work.folder]
        if not quick:
            argv += ["--input-size", "800x1333"]
        args = inference.get_parser().parse_args(argv + (["--bf16"] if precision == "fp32" else []))
        rows = inference.compare(args)
        peer = rows[-1]
        memory = "peak_gpu_mb" if device.startswith("cuda") else "peak_rss_mb"
        for ours in rows[:-1]:
            label = "bf16" if ours["model"] == "embedmask_bf16" else precision
            report.add("inference", f"inference batch 1, EmbedMask {label} vs Mask R-CNN {precision}",
                       f"{ours['total'] * 1000:.1f} vs {peer['total'] * 1000:.1f} ms/img "
                       f"({ours['total'] / peer['total']:.2f}x), peak {ours[memory]:.0f} vs {peer[memory]:.0f} MB, "
                       f"{ours['detections']:.0f} detections", ours=ours, peer=peer)


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


def run_parity(report: Report, device: str, quick: bool, work: Workspace) -> None:
    import cv2
    import inference
    import numpy as np
    import pycocotools.mask as mask_util

    from adet.config import get_cfg
    from adet.engine import DefaultPredictor

    official = np.load(os.path.join(REFERENCE, "outputs_R_50.npz"))
    with open(os.path.join(REFERENCE, "outputs_R_50_masks_rle.json")) as f:
        official_rles = json.load(f)
    weights = inference.reference_weights(work.folder)
    predictors = {}
    for target in dict.fromkeys(("cpu", device)):
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
        if device != "cpu":
            result, ok = compare_outputs(outputs["cpu"], outputs[device])
            report.add("parity", f"parity {name}: {device} vs CPU", result, ok)
        result, ok = compare_outputs(reference, outputs[device])
        report.add("parity", f"parity {name}: {device} vs official", result, ok)


def run_tests(report: Report, device: str, quick: bool, work: Workspace) -> None:
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                           os.path.join(ROOT, "tests")], capture_output=True, text=True, cwd=ROOT, timeout=300)
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-300:]
    failed = re.search(r"(\d+) (failed|error)", summary)
    report.add("tests", "CUDA tests (pytest -m gpu)", summary.strip("= "), done.returncode in (0, 5) and not failed)


RUNNERS = {"kernel": run_kernel, "training": run_training, "ddp": run_ddp, "eval": run_eval, "predict": run_predict,
           "inference": run_inference, "parity": run_parity, "tests": run_tests}


def main() -> int:
    parser = argparse.ArgumentParser(description="EmbedMask's GPU acceptance run: one table, one JSON report")
    parser.add_argument("--device", default="cuda", help="cuda (default); cpu runs the same steps to check the script")
    parser.add_argument("--only", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)}")
    parser.add_argument("--quick", action="store_true", help="small model, sizes and repetitions (checks the script)")
    parser.add_argument("--report", default="gpu_check.json", help="the JSON report (default: %(default)s)")
    parser.add_argument("--budget-s", type=float, default=330,
                        help="steps not started by then are reported as FAIL (not run); default %(default)s s")
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
    print(title, flush=True)
    report, seconds, start = Report(title, name), {}, time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as folder:
        work = Workspace(folder, args.quick)
        for step in steps:
            if time.perf_counter() - start > args.budget_s:
                report.add(step, step, f"not run: the {args.budget_s:.0f} s budget was spent", ok=False)
                continue
            print(f"[{step}]", flush=True)
            tic = time.perf_counter()
            try:
                RUNNERS[step](report, args.device, args.quick, work)
            except Exception as e:  # noqa: BLE001 - a failing step is a FAIL row, and the others still run
                traceback.print_exc()
                message = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
                report.add(step, step, f"{type(e).__name__}: {message}", ok=False)
            seconds[step] = round(time.perf_counter() - tic, 1)
            with contextlib.suppress(Exception):
                if args.device.startswith("cuda"):
                    torch.cuda.empty_cache()
    report.print()
    print(f"steps' seconds: {seconds}; total {time.perf_counter() - start:.0f} s; report: {args.report}")
    report.write(args.report, seconds)
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
