"""Checks made before any work starts, so that a mistake costs seconds rather than a training run, and is reported
once, as one line naming the option or config key, rather than once per process."""

from __future__ import annotations

import difflib
import os
import tempfile

import torch

from adet.checkpoint import read_checkpoint_file, resolve_weight_path
from adet.checkpoint.weight_files import read_msra_pkl
from adet.data import DatasetCatalog, MetadataCatalog
from adet.data.build import per_process_batch
from adet.data.image_io import check_image_format
from adet.data.validation import load_coco
from adet.errors import PreflightError
from adet.modeling import build_model
from adet.solver import scale_for_world_size


def _probe_writable(folder: str) -> str | None:
    """None if a file can be created in ``folder``, else the reason (a real write: permission bits mean little to
    root, and read-only file systems do not show in them)."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            return None
    except OSError as e:
        return e.strerror or str(e)


def check_output_folder(path: str, what: str) -> None:
    """``path`` is, or can be created as, a folder this process can write into."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise PreflightError(f"{what} {path}: is a file, not a folder")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise PreflightError(f"{what} {path}: cannot create this folder ({e.strerror or e})") from None
    reason = _probe_writable(path)
    if reason:
        raise PreflightError(f"{what} {path}: cannot write into this folder ({reason})")


def check_output_file(path: str, what: str) -> None:
    """``path`` names a file this process can write (its folder is created if needed)."""
    if os.path.isdir(path):
        raise PreflightError(f"{what} {path}: is a folder, expected a file name")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        check_output_folder(folder, what)
    except PreflightError as e:
        raise PreflightError(f"{what} {path}: {str(e).split(': ', 1)[1]}") from None
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise PreflightError(f"{what} {path}: the file exists and is not writable")


# ---- devices and launch -----------------------------------------------------------------------------------------
def check_device(device: str, what: str = "MODEL.DEVICE") -> None:
    """``device`` names a device this code runs on: cpu, cuda or cuda:N (a GPU that exists, when any does)."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise PreflightError(f"{what} '{device}' is not a device: use cpu, cuda or cuda:N") from None
    if parsed.type not in ("cpu", "cuda"):
        raise PreflightError(f"{what} '{device}': EmbedMask runs on cpu or cuda (cuda:N)")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if parsed.type == "cuda" and parsed.index is not None and count and parsed.index >= count:
        raise PreflightError(f"{what} '{device}': this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}")


def check_launch(num_gpus: int, num_machines: int, machine_rank: int, dist_url: str) -> None:
    if num_gpus < 1:
        raise PreflightError(f"--num-gpus {num_gpus}: needs at least 1 (processes per machine)")
    if num_machines < 1:
        raise PreflightError(f"--num-machines {num_machines}: needs at least 1")
    if not 0 <= machine_rank < num_machines:
        raise PreflightError(f"--machine-rank {machine_rank}: must be between 0 and --num-machines - 1 "
                             f"({num_machines - 1})")
    if dist_url != "auto" and not dist_url.startswith(("tcp://", "file://", "env://")):
        raise PreflightError(f"--dist-url {dist_url}: expected auto, tcp://HOST:PORT or file:///shared/path")
    if dist_url.startswith("tcp://"):
        host, _, port = dist_url[len("tcp://"):].rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise PreflightError(f"--dist-url {dist_url}: expected tcp://HOST:PORT with a port from 1 to 65535")


# ---- config values ---------------------------------------------------------------------------------------------
def check_config_values(cfg, world_size: int = 1) -> None:
    """Values the model does not read (solver, input, test), and the model built on the meta device (no memory),
    which checks its own: a bad key fails here, in the launching process, not in every worker."""
    solver = cfg.SOLVER
    checks = [
        (cfg.FLOAT32_PRECISION in ("", "highest", "high", "medium"), "FLOAT32_PRECISION",
         "must be '', 'highest', 'high' or 'medium'"),
        (solver.IMS_PER_BATCH >= 1, "SOLVER.IMS_PER_BATCH", "must be at least 1"),
        (solver.AMP.PRECISION in ("auto", "float16", "bfloat16"), "SOLVER.AMP.PRECISION",
         "must be 'auto', 'float16' or 'bfloat16'"),
        (solver.MAX_ITER >= 1, "SOLVER.MAX_ITER", "must be at least 1"),
        (solver.BASE_LR > 0 and solver.BASE_LR != float("inf"), "SOLVER.BASE_LR", "must be a positive number"),
        (all(isinstance(s, int) for s in solver.STEPS) and list(solver.STEPS) == sorted(solver.STEPS),
         "SOLVER.STEPS", "must be increasing iteration numbers"),
        (solver.WARMUP_ITERS >= 0 and solver.CHECKPOINT_PERIOD >= 0, "SOLVER.WARMUP_ITERS/CHECKPOINT_PERIOD",
         "must not be negative"),
        (cfg.TEST.EVAL_PERIOD >= 0, "TEST.EVAL_PERIOD", "must not be negative"),
        (cfg.DATALOADER.NUM_WORKERS >= 0, "DATALOADER.NUM_WORKERS", "must not be negative"),
        (cfg.INPUT.MASK_FORMAT in ("polygon", "bitmask"), "INPUT.MASK_FORMAT", "must be 'polygon' or 'bitmask'"),
        (cfg.INPUT.MIN_SIZE_TEST > 0 and cfg.INPUT.MAX_SIZE_TEST >= cfg.INPUT.MIN_SIZE_TEST, "INPUT.MIN_SIZE_TEST",
         "must be positive and at most INPUT.MAX_SIZE_TEST"),
        (len(cfg.INPUT.MIN_SIZE_TRAIN) > 0 and all(s > 0 for s in cfg.INPUT.MIN_SIZE_TRAIN), "INPUT.MIN_SIZE_TRAIN",
         "must list positive sizes"),
        (not cfg.TEST.AUG.ENABLED or (len(cfg.TEST.AUG.MIN_SIZES) > 0 and all(s > 0 for s in cfg.TEST.AUG.MIN_SIZES)),
         "TEST.AUG.MIN_SIZES", "must list positive sizes when TEST.AUG.ENABLED"),
        (len(cfg.TEST.SLICE.SIZE) == 2 and all(s > 0 for s in cfg.TEST.SLICE.SIZE) and 0 <= cfg.TEST.SLICE.OVERLAP < 1,
         "TEST.SLICE.SIZE/OVERLAP", "need a (height, width) of positive pixels and an overlap in [0, 1)"),
        (len(cfg.MODEL.PIXEL_MEAN) == 3 and len(cfg.MODEL.PIXEL_STD) == 3 and all(s > 0 for s in cfg.MODEL.PIXEL_STD),
         "MODEL.PIXEL_MEAN/PIXEL_STD", "need 3 values each, the standard deviations positive"),
    ]
    for ok, key, what in checks:
        if not ok:
            value = cfg.FLOAT32_PRECISION if key == "FLOAT32_PRECISION" else ""
            raise PreflightError(f"{key} {value!r} {what}" if value else f"{key} {what}")
    check_image_format(cfg.INPUT.FORMAT)
    per_process_batch(scale_for_world_size(cfg, world_size), world_size)
    build_model(cfg, device="meta")


# ---- datasets --------------------------------------------------------------------------------------------------
def check_datasets(cfg, names: tuple, key: str, need_annotations: bool) -> None:
    """Every dataset in ``names`` (the value of config key ``key``) is registered, its files exist, and its
    annotation file passes validation (with a usable annotation when ``need_annotations``)."""
    for name in names:
        if name not in DatasetCatalog:
            hint = difflib.get_close_matches(name, list(DatasetCatalog), n=1)
            raise PreflightError(f"{key}: dataset '{name}' is not registered" +
                                 (f" (did you mean '{hint[0]}'?)" if hint else "") +
                                 f"; registered: {', '.join(sorted(DatasetCatalog))}; pass --dataset "
                                 f"{name}=ANNOTATIONS.json:IMAGES/ to use your own")
        metadata = MetadataCatalog.get(name)
        json_file, image_root = metadata.get("json_file"), metadata.get("image_root")
        if json_file is None:  # registered from code, or generated on first use (synthetic)
            continue
        if not os.path.isfile(json_file):
            raise PreflightError(f"{key}: dataset '{name}': annotation file {json_file} does not exist (datasets "
                                 "are looked for under $DETECTRON2_DATASETS, default ./datasets)")
        if image_root and not os.path.isdir(image_root):
            raise PreflightError(f"{key}: dataset '{name}': image folder {image_root} does not exist")
        load_coco(json_file, require_annotations=need_annotations)


# ---- weights and checkpoints -----------------------------------------------------------------------------------
def check_weights(weights: str, required: bool, what: str = "MODEL.WEIGHTS") -> None:
    """``weights`` is present and readable as a checkpoint or ImageNet weight file (empty: random initialisation,
    an error when ``required``)."""
    if not weights:
        if required:
            raise PreflightError(f"{what} is empty: evaluation and prediction need trained weights (--weights CKPT "
                                 "or MODEL.WEIGHTS path/to/model.pth)")
        return
    local = resolve_weight_path(weights)
    if os.path.isdir(local):
        raise PreflightError(f"{what} {weights}: is a folder, not a weight file")
    if local.endswith(".pkl"):
        read_msra_pkl(local)
    else:
        read_checkpoint_file(local)
