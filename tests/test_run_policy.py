"""Run policy where the run is: DefaultTrainer claims its OUTPUT_DIR (a busy folder is refused at once, naming the
holder; a dead holder's claim is taken over), moves an earlier run aside, and sets up the ``adet`` logger when the
caller did not, as `DefaultTrainer(cfg).train()` scripts expect without any of the command line around them."""

import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest

from adet.engine import DefaultTrainer
from adet.engine.distributed.run_claim import LOCK_NAME
from adet.errors import PreflightError

from .conftest import ROOT
from .test_trainer import (
    register_shapes,
    shapes,  # noqa: F401 (a fixture)
    tiny_training_cfg,
)

HOLDER = """
import sys, time
sys.path.insert(0, {root!r})
from adet.config import get_cfg
from adet.data import register_coco_instances
from adet.engine import DefaultTrainer
register_coco_instances("shapes", {{}}, {json!r}, {images!r})
cfg = get_cfg()
cfg.merge_from_file({config!r})
trainer = DefaultTrainer(cfg)          # no setup_logger(): the trainer sets the logger up
print("claimed", flush=True)
time.sleep(600)
"""


def iterations(path):
    with open(path) as f:
        return [json.loads(line)["iteration"] for line in f if "total_loss" in line]


def test_default_trainer_twice_in_one_folder_starts_the_second_run_afresh(shapes, tmp_path):  # noqa: F811
    register_shapes(shapes)
    out = tmp_path / "out"
    DefaultTrainer(tiny_training_cfg(out, "SOLVER.MAX_ITER", 3, "TEST.EVAL_PERIOD", 0)).train(log_period=1)
    assert not (out / LOCK_NAME).exists()  # released when training ended
    DefaultTrainer(tiny_training_cfg(out, "SOLVER.MAX_ITER", 2, "TEST.EVAL_PERIOD", 0)).train(log_period=1)
    assert iterations(out / "metrics.json") == [0, 1]  # not appended to the first run's
    earlier = [name for name in os.listdir(out) if name.startswith("metrics.json.")]
    assert len(earlier) == 1 and iterations(out / earlier[0]) == [0, 1, 2]
    assert (out / "last_checkpoint").read_text() == "model_0000001.pth"  # resumable; model_final is weights only


def test_a_busy_folder_is_refused_at_once_and_a_killed_holders_claim_is_taken_over(shapes, tmp_path, caplog):  # noqa: F811
    register_shapes(shapes)
    out = tmp_path / "busy"
    config = tmp_path / "config.yaml"
    config.write_text(tiny_training_cfg(out, "SOLVER.MAX_ITER", 2, "TEST.EVAL_PERIOD", 0).dump())
    script = HOLDER.format(root=ROOT, json=shapes["json"], images=shapes["images"], config=str(config))
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        assert holder.stdout.readline().strip() == "claimed"
        assert (out / "log.txt").exists()  # its logger, set up by the trainer
        started = time.time()
        with pytest.raises(PreflightError) as refused:
            DefaultTrainer(tiny_training_cfg(out, "SOLVER.MAX_ITER", 2, "TEST.EVAL_PERIOD", 0))
        assert time.time() - started < 30
        message = str(refused.value)
        assert message.startswith(f"OUTPUT_DIR {out} is in use by another run (pid {holder.pid} on ")
        assert "\n" not in message and not (out / "metrics.json").exists()
    finally:
        holder.send_signal(signal.SIGKILL)  # no release: the kernel drops the lock with the process
        holder.wait()
    assert (out / LOCK_NAME).exists()
    with caplog.at_level(logging.WARNING, logger="adet.engine.distributed.run_claim"):
        DefaultTrainer(tiny_training_cfg(out, "SOLVER.MAX_ITER", 2, "TEST.EVAL_PERIOD", 0)).train(log_period=1)
    assert f"was claimed by a run that is gone (pid {holder.pid} on " in caplog.text
    assert iterations(out / "metrics.json") == [0, 1] and not (out / LOCK_NAME).exists()


def test_the_trainer_sets_up_the_adet_logger_when_the_caller_did_not(shapes, tmp_path):  # noqa: F811
    out = tmp_path / "logged"
    config = tmp_path / "config.yaml"
    config.write_text(tiny_training_cfg(out, "SOLVER.MAX_ITER", 1, "TEST.EVAL_PERIOD", 0).dump())
    script = HOLDER.format(root=ROOT, json=shapes["json"], images=shapes["images"], config=str(config)).replace(
        'print("claimed", flush=True)\ntime.sleep(600)', "trainer.train()")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-2000:]
    log = (out / "log.txt").read_text()
    assert "Training 1 iterations from 0" in log and "Training 1 iterations from 0" in done.stdout


def test_quickstart_retrains_into_an_existing_folder_without_deleting_it(tmp_path):
    """``embedmask quickstart --retrain --output-dir .`` once removed the current folder; now the user's files stay,
    an earlier run's metrics are moved aside, and the held-out images are drawn afresh by the retrained model."""
    (tmp_path / "notes.txt").write_text("the user's")
    command = [sys.executable, "-m", "adet", "quickstart", "--retrain", "--output-dir", ".", "SOLVER.MAX_ITER", "2",
               "TEST.EVAL_PERIOD", "0"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT, DETECTRON2_DATASETS=str(tmp_path / "datasets"))
    runs = [subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
            for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stderr[-2000:]
        assert "6 image(s) processed" in run.stdout and "segm " in run.stdout  # drawn again, and the AP table
    assert (tmp_path / "notes.txt").read_text() == "the user's"
    assert iterations(tmp_path / "metrics.json") == [0, 1]
    assert len([name for name in os.listdir(tmp_path) if name.startswith("metrics.json.")]) == 1
    assert (tmp_path / "models" / "EmbedMask_synthetic.pth").is_file()
    assert len(os.listdir(tmp_path / "demo" / "outputs")) == 6 + 2  # the drawings and the results folder's files
