"""Shared fixtures: a tiny EmbedMask config that runs in milliseconds on a CPU, and small synthetic images."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
REFERENCE = os.path.join(FIXTURES, "reference")
sys.path.insert(0, ROOT)
# No test reaches the internet: weight URLs resolve from caches only (test_weights_download.py lifts this for its
# local server). Subprocesses inherit it.
os.environ["EMBEDMASK_OFFLINE"] = "1"
# Every process group the tests start follows NCCL's device rule (adet/utils/comm.py): the default group takes CUDA
# tensors only, so a CPU tensor sent to it fails here as it would on GPUs. Spawned, torchrun and srun-style workers
# read it from the environment; the tests marked nccl_emulated are the multi-process matrix that relies on it.
os.environ["EMBEDMASK_DIST_BACKEND"] = "cuda:gloo"

from adet.config import get_cfg  # noqa: E402

TINY_OVERRIDES = [
    "MODEL.DEVICE", "cpu",
    "MODEL.RESNETS.DEPTH", 18,
    "MODEL.FPN.OUT_CHANNELS", 64,
    "MODEL.FCOS.NUM_CLASSES", 3,
    "MODEL.EMBEDMASK.MASK_BRANCH.CHANNELS", 32,
    "MODEL.EMBEDMASK.MASK_BRANCH.OUT_CHANNELS", 32,
    "INPUT.MIN_SIZE_TRAIN", (96,),
    "INPUT.MAX_SIZE_TRAIN", 160,
    "INPUT.MIN_SIZE_TEST", 96,
    "INPUT.MAX_SIZE_TEST", 160,
    "DATALOADER.NUM_WORKERS", 0,
]


def make_tiny_cfg(*overrides):
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(ROOT, "configs", "EmbedMask", "Base-EmbedMask.yaml"))
    cfg.merge_from_list(TINY_OVERRIDES + list(overrides))
    return cfg


@pytest.fixture
def tiny_cfg():
    return make_tiny_cfg()


@pytest.fixture
def tiny_model(tiny_cfg):
    from adet.modeling import build_model

    torch.manual_seed(0)
    return build_model(tiny_cfg)


def shapes_image(height: int = 96, width: int = 128, seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """A BGR uint8 image with a filled rectangle and a filled triangle, and their polygons."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 40, size=(height, width, 3), dtype=np.uint8)
    rect = np.array([10, 10, 50, 10, 50, 60, 10, 60], dtype=np.float64)
    tri = np.array([70, 20, 120, 80, 60, 85], dtype=np.float64)
    import cv2

    cv2.fillPoly(image, [rect.reshape(-1, 2).astype(np.int32)], (0, 0, 220))
    cv2.fillPoly(image, [tri.reshape(-1, 2).astype(np.int32)], (220, 200, 0))
    return image, [rect, tri]


def load_tool(relative_path: str):
    """Import a script (tools/train_net.py, demo/demo.py) as a module."""
    import importlib.util

    name = os.path.splitext(os.path.basename(relative_path))[0]
    folder = os.path.dirname(os.path.join(ROOT, relative_path))
    if folder not in sys.path:
        sys.path.insert(0, folder)  # spawned workers import the script's module by name
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, relative_path))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _restore_logging():
    """CLI entry points configure the 'adet' logger (no propagation); undo that so caplog sees later tests."""
    import logging

    yield
    logger = logging.getLogger("adet")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.propagate = True


def _children_of(pid: int) -> list[tuple[int, str]]:
    children = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                command = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, ValueError, IndexError):
            continue
        if parent == pid and "resource_tracker" not in command:  # the tracker ends with this process
            children.append((int(entry), command))
    return children


def pytest_sessionfinish(session, exitstatus):
    """A process a test left running fails the run by name (and is ended): left alone it would keep the test
    process from exiting, which on CI reads as a timeout with every test passed."""
    import signal

    if not os.path.isdir("/proc"):
        return
    left = _children_of(os.getpid())
    for pid, command in left:
        print(f"\nerror: a test left process {pid} running: {command}", file=sys.stderr)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if left:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
