"""The GPU acceptance run (benchmarks/gpu_check.py): it skips cleanly without CUDA, its steps run end to end on the
CPU (the kernel through its CPU emulation), its JSON report holds every row, and a failing step fails the run
without stopping the steps after it."""

import json
import os
import subprocess
import sys

import pytest
import torch

from .conftest import ROOT

GPU_CHECK = os.path.join(ROOT, "benchmarks", "gpu_check.py")


def run_check(tmp_path, *args):
    report = tmp_path / "report.json"
    done = subprocess.run([sys.executable, GPU_CHECK, "--device", "cpu", "--quick", "--report", str(report), *args],
                          capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="2"))
    return done, json.loads(report.read_text()) if report.exists() else None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU behaviour")
def test_without_cuda_it_says_so_and_exits_0():
    done = subprocess.run([sys.executable, GPU_CHECK], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "no CUDA GPU on this machine" in done.stdout and done.stderr == ""


@pytest.mark.slow
def test_its_steps_run_on_the_cpu_and_the_report_holds_them(tmp_path):
    done, report = run_check(tmp_path, "--only", "kernel,training,eval,predict")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert report["passed"] and set(report["step_seconds"]) == {"kernel", "training", "eval", "predict"}
    rows = {row["check"]: row for row in report["rows"]}
    assert all(row["status"] == "PASS" for row in rows.values())
    emulated = rows["CPU emulation of the kernel vs reference, float32, 500 proposals, 2x50x76"]
    assert len(emulated["errors"]) == 4 and max(emulated["errors"]) < emulated["tolerance"] == 1e-5
    assert sum(name.startswith("coupling P=") for name in rows) == 4
    training = next(row for name, row in rows.items() if name.startswith("AMP (bfloat16) training, 10 it"))
    assert training["last_loss"] < training["first_loss"] and training["seconds_per_iteration"] > 0
    evaluation = rows["--eval-only, generated validation set (COCO protocol)"]
    assert int(evaluation["result"].split()[0]) > 0 and "segm AP" in evaluation["result"]
    predict = rows["batched predict (8 images), batch 8 vs 1"]
    assert "same counts: True" in predict["result"] and predict["images_per_second"]["8"] > 0
    assert "PASS" in done.stdout.split(report["title"])[-1]  # the table printed at the end


def test_a_failing_step_fails_the_run_and_the_next_steps_still_run(tmp_path):
    # eval first: no training step ran, so there is no checkpoint to evaluate
    done, report = run_check(tmp_path, "--only", "eval,kernel")
    assert done.returncode == 1 and report is not None and not report["passed"]
    assert [row["status"] for row in report["rows"] if row["step"] == "eval"] == ["FAIL"]
    assert "no trained checkpoint" in report["rows"][0]["result"]
    kernel = [row for row in report["rows"] if row["step"] == "kernel"]
    assert len(kernel) == 5 and all(row["status"] == "PASS" for row in kernel)


def test_an_unknown_step_is_named(tmp_path):
    done, _ = run_check(tmp_path, "--only", "kernel,warp")
    assert done.returncode == 2 and "unknown steps ['warp']" in done.stderr
