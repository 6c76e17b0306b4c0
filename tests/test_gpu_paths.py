"""The GPU-only choices, checked on the CPU where they are decisions the code makes: the default group's backend,
autocast's type and the gradient scaler, DDP's device options, pinned memory in the loaders, cuDNN's benchmark mode,
NCCL's error handling and sharing one GPU between processes. (What only a GPU can run is in benchmarks/gpu_check.py.)
"""

from __future__ import annotations

import logging

import pytest
import torch
import torch.distributed as dist

from adet.cli.preflight import check_config_values
from adet.config import get_cfg
from adet.data import DatasetCatalog, build_detection_test_loader, build_detection_train_loader, register_coco_instances
from adet.data.build import pin_memory
from adet.data.synthetic import write_split
from adet.engine import DefaultTrainer
from adet.engine.defaults import default_setup
from adet.engine.distributed.launch import check_devices, unsafe_nccl_error_handling
from adet.engine.training.trainer import amp_dtype, ddp_placement
from adet.errors import LaunchError, PreflightError
from adet.utils import comm

from .conftest import make_tiny_cfg


@pytest.fixture
def no_backend_choice(monkeypatch):
    monkeypatch.delenv(comm.BACKEND_ENV, raising=False)


@pytest.fixture
def a_gpu(monkeypatch):
    """torch believing it has one GPU: only for decisions, nothing runs on it."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


def test_the_default_group_is_nccl_on_gpus_gloo_on_the_cpu(no_backend_choice, a_gpu):
    assert comm.default_backend(use_cuda=True) == "nccl"
    assert comm.default_backend(use_cuda=False) == "gloo"


def test_the_default_group_without_a_gpu_is_gloo(no_backend_choice, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert comm.default_backend(use_cuda=True) == "gloo"


def test_the_backend_switch_wins_and_a_wrong_value_is_named(monkeypatch, a_gpu):
    monkeypatch.setenv(comm.BACKEND_ENV, "cuda:gloo")
    assert comm.default_backend(use_cuda=True) == comm.default_backend(use_cuda=False) == "cuda:gloo"
    monkeypatch.setenv(comm.BACKEND_ENV, "mpi")
    with pytest.raises(ValueError, match=r"EMBEDMASK_DIST_BACKEND=mpi: choose one of nccl, gloo, cuda:gloo"):
        comm.default_backend(use_cuda=True)


@pytest.mark.parametrize("precision, device_type, native_bf16, expected", [
    ("auto", "cpu", False, torch.bfloat16),      # CPU autocast computes bfloat16 only
    ("auto", "cuda", True, torch.bfloat16),      # Ampere and newer: float32's range, no loss scaling
    ("auto", "cuda", False, torch.float16),      # V100, T4: float16 with the scaler
    ("float16", "cuda", True, torch.float16),
    ("bfloat16", "cuda", False, torch.bfloat16),
])
def test_amp_precision(monkeypatch, precision, device_type, native_bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native_bf16)
    assert amp_dtype(precision, device_type) == expected


def test_amp_precision_on_a_torch_without_the_emulation_argument(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)  # torch < 2.4's signature
    assert amp_dtype("auto", "cuda") == torch.float16


@pytest.mark.parametrize("precision", ["auto", "bfloat16"])
def test_cpu_amp_training_uses_bfloat16_and_no_scaler(precision, tmp_path):
    cfg = make_tiny_cfg("SOLVER.AMP.ENABLED", True, "SOLVER.AMP.PRECISION", precision, "OUTPUT_DIR", str(tmp_path))
    trainer = DefaultTrainer(cfg)
    assert trainer.amp_dtype == torch.bfloat16 and not trainer.scaler.is_enabled()


def test_an_unknown_amp_precision_is_named():
    cfg = get_cfg()
    cfg.SOLVER.AMP.PRECISION = "fp8"
    with pytest.raises(PreflightError, match=r"^SOLVER\.AMP\.PRECISION must be 'auto', 'float16' or 'bfloat16'$"):
        check_config_values(cfg)


def test_ddp_of_a_gpu_model_gets_its_device_and_the_default_group():
    # The default group (None) carries NCCL's CUDA gradients; device_ids pins the replica to its GPU.
    assert ddp_placement(torch.device("cuda", 1)) == {"device_ids": [1], "output_device": 1, "process_group": None}


def test_ddp_of_a_cpu_model_gets_no_device_and_the_cpu_group(tmp_path):
    dist.init_process_group("cuda:gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        placement = ddp_placement(torch.device("cpu"))
        assert placement["device_ids"] is None and placement["output_device"] is None
        assert placement["process_group"] is not None and placement["process_group"] is not dist.group.WORLD
        assert dist.get_backend(placement["process_group"]) == "gloo"
    finally:
        comm.clear_groups()
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu_paths_data")
    name = "gpu_paths_shapes"
    if name not in DatasetCatalog.list():
        register_coco_instances(name, {}, write_split(str(root), "shapes", 2, seed=3), str(root / "shapes"))
    return name


def test_loaders_pin_memory_for_a_gpu_model_only(a_gpu, tiny_data):
    assert pin_memory("cuda") and pin_memory("cuda:1") and not pin_memory("cpu")
    for device in ("cuda", "cpu"):
        cfg = make_tiny_cfg("MODEL.DEVICE", device, "DATASETS.TRAIN", (tiny_data,), "DATASETS.TEST", (tiny_data,))
        assert build_detection_train_loader(cfg).pin_memory == (device == "cuda")
        assert build_detection_test_loader(cfg, tiny_data).pin_memory == (device == "cuda")


def test_no_pinned_memory_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not pin_memory("cuda")  # torch would warn at every batch


@pytest.mark.parametrize("cudnn_benchmark, deterministic, expected", [(True, False, True), (True, True, False),
                                                                  (False, False, False)])
def test_cudnn_benchmark_follows_the_config_unless_deterministic(cudnn_benchmark, deterministic, expected, tmp_path):
    before = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = not expected
        default_setup(make_tiny_cfg("CUDNN_BENCHMARK", cudnn_benchmark, "DETERMINISTIC", deterministic,
                                    "OUTPUT_DIR", str(tmp_path)))
        assert torch.backends.cudnn.benchmark is expected
    finally:
        torch.backends.cudnn.benchmark = before


@pytest.mark.parametrize("value, warned", [(None, False), ("3", False), ("1", False), ("0", True)])
def test_turning_off_nccl_error_handling_is_warned(monkeypatch, value, warned):
    monkeypatch.delenv("NCCL_ASYNC_ERROR_HANDLING", raising=False)
    if value is None:
        monkeypatch.delenv("TORCH_NCCL_ASYNC_ERROR_HANDLING", raising=False)
    else:
        monkeypatch.setenv("TORCH_NCCL_ASYNC_ERROR_HANDLING", value)
    message = unsafe_nccl_error_handling()
    assert (message is not None) == warned
    if warned:
        assert message.startswith("TORCH_NCCL_ASYNC_ERROR_HANDLING=0:") and "hangs" in message


def test_more_processes_than_gpus_only_with_the_default_group_on_gloo(monkeypatch, a_gpu, caplog):
    monkeypatch.delenv(comm.BACKEND_ENV, raising=False)
    with pytest.raises(LaunchError, match="--num-gpus 2 asks for 2 GPUs but this machine has only 1"):
        check_devices(2, "cuda")
    monkeypatch.setenv(comm.BACKEND_ENV, "cuda:gloo")  # gloo takes CUDA tensors and lets processes share a GPU
    with caplog.at_level(logging.WARNING, logger="adet.engine.distributed.launch"):
        check_devices(2, "cuda")
    assert "2 processes share 1 GPU(s)" in caplog.text
