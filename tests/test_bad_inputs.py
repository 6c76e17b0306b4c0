"""Every case of the bad-input corpus (tests/bad_inputs.py) gives its exact outcome: the exit status, a message naming
the culprit, no traceback, and whatever else the case requires (unaffected results, nothing lost). Then Ctrl-C in the
middle of training and of a prediction run."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from adet.cli import main as embedmask

from .bad_inputs import CASES, make_world, train
from .conftest import ROOT


@pytest.fixture(scope="module")
def world_template(tmp_path_factory):
    return make_world(str(tmp_path_factory.mktemp("world")))


@pytest.fixture
def world(world_template, tmp_path, monkeypatch):
    """A fresh copy of the valid world for one case (cases write into it)."""
    import copy
    import shutil

    shutil.copytree(world_template.root, tmp_path / "w")
    copied = copy.copy(world_template)
    copied.root = str(tmp_path / "w")
    copied.images, copied.config, copied.checkpoint = (copied.path("images"), copied.path("config.yaml"),
                                                       copied.path("model.pth"))
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "datasets"))
    return copied


def test_the_corpus_covers_every_category():
    categories = {case.category for case in CASES}
    assert categories == {"annotations", "images", "config", "weights", "command line", "output", "resume", "video"}
    assert len(CASES) >= 90 and len({case.name for case in CASES}) == len(CASES)


SLOW_CASES = {"unicode_file_names"}  # trains and predicts end to end (~10 s)


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c.name in SLOW_CASES else c
                                  for c in CASES], ids=[case.name for case in CASES])
def test_bad_input(case, world, capsys):
    argv = case.build(world)
    capsys.readouterr()  # what building the case printed (e.g. an earlier run) is not the case's output
    code = embedmask(argv)
    out = capsys.readouterr()
    output = out.out + out.err
    assert "Traceback" not in output and "unexpected" not in out.err, output[-3000:]
    message = case.message.replace("{root}", world.root)
    assert code == case.code, f"exit {code}, expected {case.code}\n{output[-3000:]}"
    assert message in output, f"{message!r} not in:\n{output[-3000:]}"
    if code == 2:
        errors = [line for line in out.err.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and message in errors[0], out.err  # one line, naming the culprit
    if case.check is not None:
        case.check(world)


def _interruptible() -> None:
    """In the child: Ctrl-C's default action, even when the test runner was started in the background, where SIGINT
    is ignored and Python would then never raise KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_for(path, process, timeout=300):
    deadline = time.time() + timeout
    while not os.path.exists(path):
        assert process.poll() is None, process.communicate()[0][-3000:]
        assert time.time() < deadline, "timed out"
        time.sleep(0.2)


@pytest.mark.slow
def test_ctrl_c_during_training_keeps_the_last_checkpoint_and_resume_continues(world):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    argv = train(world, "train.json", "SOLVER.MAX_ITER", "400", "SOLVER.CHECKPOINT_PERIOD", "2", "--log-period", "1")
    process = subprocess.Popen([sys.executable, "-m", "adet", *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=env, cwd=ROOT, preexec_fn=_interruptible)
    _wait_for(world.path("out", "model_0000003.pth"), process)
    process.send_signal(signal.SIGINT)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 130 and "interrupted" in output and "Traceback" not in output, output[-3000:]
    out = world.path("out")
    assert not [f for f in os.listdir(out) if f.startswith(".tmp")]
    last = open(os.path.join(out, "last_checkpoint")).read().strip()
    state = torch.load(os.path.join(out, last), weights_only=True)  # whole, and resumable
    assert {"model", "optimizer", "scheduler", "iteration"} <= set(state)
    done = subprocess.run([sys.executable, "-m", "adet", *argv[:-4], "SOLVER.MAX_ITER", str(state["iteration"] + 3),
                           "--resume"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"Resuming from {os.path.join(out, last)} at iteration {state['iteration'] + 1}" in done.stdout


@pytest.mark.slow
def test_ctrl_c_during_prediction_leaves_no_partial_results(world):
    import cv2

    frames = [cv2.imread(os.path.join(world.images, "a.png"))] * 400
    for k, frame in enumerate(frames):
        cv2.imwrite(os.path.join(world.images, f"many_{k:03d}.png"), frame)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    process = subprocess.Popen([sys.executable, "-m", "adet", "predict", "--weights", world.checkpoint, "--input",
                                world.images, "--output", world.path("drawn"), "--json", world.path("r.json"),
                                "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=env, cwd=ROOT, preexec_fn=_interruptible)
    _wait_for(world.path("drawn", "many_005.png"), process)
    process.send_signal(signal.SIGINT)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 130 and "Traceback" not in output, output[-3000:]
    assert not os.path.exists(world.path("r.json"))  # written whole at the end, or not at all
