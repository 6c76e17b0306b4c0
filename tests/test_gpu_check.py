"""The one-command GPU check: it skips cleanly without CUDA and its steps run (on the CPU) end to end."""

import os
import subprocess
import sys

import pytest
import torch

from .conftest import ROOT

GPU_CHECK = os.path.join(ROOT, "benchmarks", "gpu_check.py")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU behaviour")
def test_without_cuda_it_says_so_and_exits_0():
    done = subprocess.run([sys.executable, GPU_CHECK], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "no CUDA GPU on this machine" in done.stdout and done.stderr == ""


@pytest.mark.slow
def test_its_steps_run_on_the_cpu(tmp_path):
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path))
    done = subprocess.run([sys.executable, GPU_CHECK, "--device", "cpu", "--quick", "--only", "coupling,training"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    table = done.stdout.split("\nEmbedMask GPU check on CPU")[-1]
    rows = {line.split("  ")[0]: line for line in table.splitlines()}
    assert sum(name.startswith("coupling P=") for name in rows) == 4
    training = rows["AMP training, synthetic, 10 it"]
    assert " ok " in training and "losses finite" in training
    assert "FAIL" not in table
