"""Training where clusters train, on CPU processes (gloo): stop signals at a random iteration and an exact resume,
all processes of a 2-process run signalled, a killed rank, a torchrun restart, SLURM variables alone, the OUTPUT_DIR
claim, corrupt checkpoints and a full disk."""

import json
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid

import pytest
import torch

from adet.cli import main as embedmask
from adet.cli.errors import run_cli
from adet.engine.distributed import slurm
from adet.engine.distributed.run_claim import LOCK_NAME, RunClaim
from adet.errors import LaunchError, PreflightError

from .conftest import ROOT, load_tool
from .test_train import TRAIN_NET, read_losses, tiny_data, tiny_train_args  # noqa: F401 (tiny_data: a fixture)

STEPS = ("SOLVER.MAX_ITER", "12", "SOLVER.CHECKPOINT_PERIOD", "100", "DATALOADER.NUM_WORKERS", "1")
TWO_PROCESSES = ("--num-gpus", "2", "MODEL.DEVICE", "cpu")


STARTED: list = []


@pytest.fixture(autouse=True)
def _stop_what_a_test_started():
    """Whatever a test started (a failing assertion leaves processes running) is killed after it."""
    yield
    while STARTED:
        tag = STARTED.pop()
        for pid in tagged_processes(tag):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def start(args, tag=None, command=(TRAIN_NET,), **env):
    """The training command in a subprocess (its own session), its output in a file; ``tag`` marks every process
    it starts (through the environment), so that none can go unnoticed."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", EMBEDMASK_TEST_TAG=tag or uuid.uuid4().hex,
               **env)
    log = open(os.path.join(os.environ.get("TMPDIR", "/tmp"), f"run-{uuid.uuid4().hex}.log"), "w+")
    process = subprocess.Popen([sys.executable, *command, *args], stdout=log, stderr=subprocess.STDOUT, env=env,
                               start_new_session=True, cwd=ROOT)
    process.log, process.tag = log, env["EMBEDMASK_TEST_TAG"]
    STARTED.append(process.tag)
    return process


def output_of(process) -> str:
    process.log.seek(0)
    return process.log.read()


def tagged_processes(tag: str, **variables) -> list[int]:
    """Pids of live processes whose environment holds the tag (and the given variables)."""
    wanted = [f"EMBEDMASK_TEST_TAG={tag}".encode()] + [f"{k}={v}".encode() for k, v in variables.items()]
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = f.read().split(b"\0")
            with open(f"/proc/{pid}/stat") as f:
                zombie = f.read().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            continue
        if not zombie and all(w in environ for w in wanted) and int(pid) != os.getpid():
            found.append(int(pid))
    return found


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def no_process_left(tag: str, seconds: float = 10) -> bool:
    """Whether every tagged process is gone within ``seconds`` (exiting processes take a moment)."""
    deadline = time.time() + seconds
    while tagged_processes(tag) and time.time() < deadline:
        time.sleep(0.1)
    return tagged_processes(tag) == []


def iterations_in(path) -> list[int]:
    with open(path) as f:
        return [json.loads(line)["iteration"] for line in f]


def wait_for_iteration(output_dir, iteration: int, process, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (output_dir / "metrics.json").exists() and iteration in read_losses(output_dir):
            return
        assert process.poll() is None, output_of(process)[-3000:]
        time.sleep(0.05)
    raise AssertionError(f"iteration {iteration} not reached:\n{output_of(process)[-3000:]}")


def final_weights(output_dir):
    return torch.load(output_dir / "model_final.pth", weights_only=True)["model"]


def assert_same_run(reference_dir, resumed_dir, start_iter: int):
    """Per-iteration losses from ``start_iter`` on and the final weights equal the uninterrupted run's."""
    expected, got = read_losses(reference_dir), read_losses(resumed_dir)
    assert sorted(got) == sorted(expected)
    for iteration in range(start_iter, max(expected) + 1):
        assert got[iteration] == expected[iteration], iteration
    reference, resumed = final_weights(reference_dir), final_weights(resumed_dir)
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)


def finish(process, timeout: float = 300) -> int:
    try:
        return process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def one_process_reference(tiny_data, tmp_path_factory):  # noqa: F811
    output_dir = tmp_path_factory.mktemp("cluster") / "reference"
    process = start(tiny_train_args(tiny_data, output_dir, *STEPS))
    assert finish(process) == 0, output_of(process)[-3000:]
    return output_dir


@pytest.fixture(scope="module")
def two_process_reference(tiny_data, tmp_path_factory):  # noqa: F811
    output_dir = tmp_path_factory.mktemp("cluster") / "reference2"
    process = start(tiny_train_args(tiny_data, output_dir, *STEPS, *TWO_PROCESSES))
    assert finish(process) == 0, output_of(process)[-3000:]
    return output_dir


# ---- stop signals ---------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2])
def test_a_stop_signal_saves_the_iteration_and_resume_continues_exactly(signum, tiny_data, tmp_path,  # noqa: F811
                                                                        one_process_reference):
    stop_after = random.Random(int(signum)).randint(2, 8)
    output_dir = tmp_path / "run"
    env = {}
    if signum == signal.SIGUSR1:  # as #SBATCH --signal=USR1 with EMBEDMASK_REQUEUE=1: requeued after the save
        scontrol = tmp_path / "bin" / "scontrol"
        scontrol.parent.mkdir()
        scontrol.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'requeued'}\n")
        scontrol.chmod(0o755)
        env = {"EMBEDMASK_REQUEUE": "1", "SLURM_JOB_ID": "555", "PATH": f"{scontrol.parent}:{os.environ['PATH']}"}
    process = start(tiny_train_args(tiny_data, output_dir, *STEPS), **env)
    wait_for_iteration(output_dir, stop_after, process)
    sent = time.time()
    process.send_signal(signum)
    code = finish(process, timeout=60)
    seconds = time.time() - sent
    output = output_of(process)
    assert code == 128 + signum, output[-3000:]
    assert seconds < 20, seconds
    saved = (output_dir / "last_checkpoint").read_text().strip()
    iteration = int(saved[len("model_"):-len(".pth")])
    assert iteration >= stop_after and not (output_dir / "model_final.pth").exists()
    assert f"stopped by {signal.Signals(signum).name} after iteration {iteration}" in output
    if env:
        assert "; job 555 requeued;" in output and (tmp_path / "requeued").read_text() == "requeue 555\n"
    assert "Traceback" not in output and not [f for f in os.listdir(output_dir) if f.startswith(".tmp")]
    resumed = start(["--resume", *tiny_train_args(tiny_data, output_dir, *STEPS)])
    assert finish(resumed) == 0, output_of(resumed)[-3000:]
    assert f"Resuming from {output_dir / saved} at iteration {iteration + 1}" in output_of(resumed)
    assert_same_run(one_process_reference, output_dir, iteration + 1)


@pytest.mark.nccl_emulated
@pytest.mark.slow
def test_sigterm_to_every_process_of_a_two_process_run(tiny_data, tmp_path, two_process_reference):  # noqa: F811
    output_dir = tmp_path / "run"
    process = start(tiny_train_args(tiny_data, output_dir, *STEPS, *TWO_PROCESSES))
    wait_for_iteration(output_dir, 4, process)
    everyone = tagged_processes(process.tag)  # the launcher, both workers and their data-loader workers
    assert len(everyone) >= 5
    for pid in everyone:  # as SLURM does on preemption
        os.kill(pid, signal.SIGTERM)
    assert finish(process, timeout=60) == 128 + signal.SIGTERM, output_of(process)[-3000:]
    assert no_process_left(process.tag)
    saved = (output_dir / "last_checkpoint").read_text().strip()
    iteration = int(saved[len("model_"):-len(".pth")])
    resumed = start(["--resume", *tiny_train_args(tiny_data, output_dir, *STEPS, *TWO_PROCESSES)])
    assert finish(resumed) == 0, output_of(resumed)[-3000:]
    assert_same_run(two_process_reference, output_dir, iteration + 1)


@pytest.mark.nccl_emulated
@pytest.mark.slow
def test_a_killed_rank_ends_the_run_at_once_without_orphans(tiny_data, tmp_path):  # noqa: F811
    output_dir = tmp_path / "dies"
    process = start(tiny_train_args(tiny_data, output_dir, "SOLVER.MAX_ITER", "100000", "DATALOADER.NUM_WORKERS", "1",
                                    *TWO_PROCESSES))
    wait_for_iteration(output_dir, 2, process)
    ranks = sorted(pid for pid in tagged_processes(process.tag) if parent_of(pid) == process.pid
                   and b"spawn_main" in open(f"/proc/{pid}/cmdline", "rb").read())  # not the resource tracker
    assert len(ranks) == 2, output_of(process)[-2000:]
    os.kill(ranks[1], signal.SIGKILL)  # rank 1 (started second), not one of its data-loader workers
    killed = time.time()
    code = finish(process, timeout=120)
    assert code != 0 and time.time() - killed < 60
    assert "error: worker 1 died (signal SIGKILL); the other workers were stopped" in output_of(process)
    assert no_process_left(process.tag)  # data-loader workers included


@pytest.mark.nccl_emulated
@pytest.mark.slow
def test_torchrun_restart_continues_from_the_checkpoint(tiny_data, tmp_path, two_process_reference):  # noqa: F811
    output_dir = tmp_path / "elastic"
    steps = ("SOLVER.MAX_ITER", "12", "SOLVER.CHECKPOINT_PERIOD", "4", "DATALOADER.NUM_WORKERS", "1")
    command = ("-m", "torch.distributed.run", "--nproc_per_node", "2", "--max-restarts", "1", TRAIN_NET)
    process = start(tiny_train_args(tiny_data, output_dir, *steps, "MODEL.DEVICE", "cpu"), command=command)
    wait_for_iteration(output_dir, 6, process)
    workers = [pid for pid in tagged_processes(process.tag, RANK=1, TORCHELASTIC_RESTART_COUNT=0)
               if TRAIN_NET.encode() in open(f"/proc/{pid}/cmdline", "rb").read()]
    os.kill(min(workers), signal.SIGKILL)
    assert finish(process, timeout=300) == 0, output_of(process)[-3000:]
    log = (output_dir / "log.txt").read_text()
    assert "Restart 1 of this job: resuming from the last checkpoint" in log
    resumed_at = int(re.search(r"Resuming from \S+ at iteration (\d+)", log).group(1))
    assert resumed_at in (4, 8) and "starts afresh" not in log
    # Same world size, same run: the spawn reference's losses (its checkpoints were never written: same schedule).
    expected, got = read_losses(two_process_reference), read_losses(output_dir)
    for iteration in range(resumed_at, 12):
        assert got[iteration] == expected[iteration], iteration


@pytest.mark.nccl_emulated
@pytest.mark.slow
def test_slurm_launcher_from_slurm_variables_equals_two_spawned_processes(tiny_data, tmp_path,  # noqa: F811
                                                                          two_process_reference):
    from adet.engine.distributed.launch import find_free_port

    output_dir = tmp_path / "slurm"
    port, tag = find_free_port(), uuid.uuid4().hex
    tasks = [start(["--launcher", "slurm", *tiny_train_args(tiny_data, output_dir, *STEPS, "MODEL.DEVICE", "cpu")],
                   tag=tag, SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank), SLURM_NTASKS="2", SLURM_NODEID="0",
                   SLURM_TASKS_PER_NODE="2", SLURM_NODELIST="localhost", SLURM_JOB_ID="4242", SLURM_STEP_ID="0",
                   MASTER_PORT=str(port)) for rank in (0, 1)]
    for task in tasks:
        assert finish(task) == 0, output_of(task)[-3000:]
    assert "Rank 0 of 2" in (output_dir / "log.txt").read_text()
    expected, got = read_losses(two_process_reference), read_losses(output_dir)
    assert got == expected
    reference, ours = final_weights(two_process_reference), final_weights(output_dir)
    assert all(torch.equal(reference[k], ours[k]) for k in reference)


def test_slurm_variables_are_read_as_slurm_means_them():
    assert slurm.expand_nodelist("gpu[01-03,07],cpu3,node[9-10]") == ["gpu01", "gpu02", "gpu03", "gpu07", "cpu3",
                                                                     "node9", "node10"]
    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_NODELIST": "gpu[03-04]",
           "SLURM_JOB_ID": "123456", "SLURM_STEP_ID": "0", "SLURM_TASKS_PER_NODE": "4(x2)", "SLURM_NODEID": "1",
           "PATH": ""}  # no scontrol: our own nodelist parser
    task = slurm.slurm_task(env)
    assert (task.rank, task.world_size, task.local_rank, task.tasks_on_this_node) == (5, 8, 1, 4)
    assert task.dist_url == f"tcp://gpu03:{15000 + 123456 % 20000}"
    assert slurm.slurm_task(dict(env, MASTER_PORT="29999")).master_port == 29999
    with pytest.raises(LaunchError, match="started without srun"):
        slurm.slurm_task({k: v for k, v in env.items() if k != "SLURM_STEP_ID"})
    with pytest.raises(LaunchError, match="SLURM_PROCID.* not set"):
        slurm.slurm_task({"SLURM_JOB_ID": "1"})
    with pytest.raises(LaunchError, match="4 task.* has 8 GPUs"):
        slurm.check_gpus_per_node(task, "cuda", 1, gpus_visible=8)
    with pytest.raises(LaunchError, match="--num-gpus 2 but SLURM runs 4"):
        slurm.check_gpus_per_node(task, "cuda", 2, gpus_visible=4)
    slurm.check_gpus_per_node(task, "cuda", 1, gpus_visible=1)  # each task bound to its own GPU: fine


def test_launching_with_slurm_outside_srun_is_one_line(tiny_data, tmp_path, capsys, monkeypatch):  # noqa: F811
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    for name in ("SLURM_STEP_ID", "SLURM_STEPID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_LOCALID": "0",
                        "SLURM_NODELIST": "localhost"}.items():
        monkeypatch.setenv(name, value)
    train_net = load_tool("tools/train_net.py")
    code = run_cli(train_net.cli, ["--launcher", "slurm", *tiny_train_args(tiny_data, tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: --launcher slurm: started without srun") and "\n" not in err


# ---- one run per OUTPUT_DIR -------------------------------------------------------------------------------------
def test_a_busy_output_dir_is_refused_at_once(tiny_data, tmp_path, capsys):  # noqa: F811
    output_dir = tmp_path / "busy"
    output_dir.mkdir()
    train_net = load_tool("tools/train_net.py")
    with RunClaim(str(output_dir)):  # a live run: this process
        started = time.time()
        code = run_cli(train_net.cli, tiny_train_args(tiny_data, output_dir, "SOLVER.MAX_ITER", "2"))
        assert time.time() - started < 30
    err = capsys.readouterr().err.strip()
    assert code == 2 and f"OUTPUT_DIR {output_dir} is in use by another run (pid {os.getpid()} on " in err
    assert "\n" not in err and not (output_dir / "metrics.json").exists()
    assert not (output_dir / LOCK_NAME).exists()  # released with the holder


def test_a_stale_claim_is_taken_over_with_a_warning(tiny_data, tmp_path, capsys):  # noqa: F811
    output_dir = tmp_path / "stale"
    output_dir.mkdir()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that no longer runs (killed -9, crashed)
    (output_dir / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": gone.pid,
                                                    "process_start": "1", "started": time.time() - 3600}))
    train_net = load_tool("tools/train_net.py")
    assert run_cli(train_net.cli, tiny_train_args(tiny_data, output_dir, "SOLVER.MAX_ITER", "2")) == 0
    assert f"was claimed by a run that is gone (pid {gone.pid}" in (output_dir / "log.txt").read_text()
    assert not (output_dir / LOCK_NAME).exists() and sorted(read_losses(output_dir)) == [0, 1]
    with pytest.raises(PreflightError, match="in use by another run"):
        with RunClaim(str(output_dir)):
            RunClaim(str(output_dir)).acquire()


def test_a_fresh_run_does_not_append_to_an_earlier_runs_metrics(tiny_data, tmp_path):  # noqa: F811
    output_dir = tmp_path / "twice"
    train_net = load_tool("tools/train_net.py")
    train_net.cli(tiny_train_args(tiny_data, output_dir, "SOLVER.MAX_ITER", "3"))
    train_net.cli(tiny_train_args(tiny_data, output_dir, "SOLVER.MAX_ITER", "2"))
    assert iterations_in(output_dir / "metrics.json") == [0, 1]
    earlier = [name for name in os.listdir(output_dir) if name.startswith("metrics.json.")]
    assert len(earlier) == 1 and iterations_in(output_dir / earlier[0]) == [0, 1, 2]
    assert (output_dir / "last_checkpoint").read_text() == "model_0000001.pth"


# ---- checkpoint integrity ---------------------------------------------------------------------------------------
def flip_a_tensor_byte(path):
    import zipfile

    with zipfile.ZipFile(path) as archive:
        member = max(archive.infolist(), key=lambda m: m.file_size)  # the largest tensor's bytes
    data = bytearray(open(path, "rb").read())
    # The data follows the member's local header: 30 bytes, then its name and extra field (torch pads there).
    name_length, extra_length = struct.unpack("<HH", data[member.header_offset + 26:member.header_offset + 30])
    data[member.header_offset + 30 + name_length + extra_length + member.file_size // 2] ^= 0x40
    open(path, "wb").write(bytes(data))
    return member.filename


def test_a_flipped_byte_is_refused_for_resume_and_for_weights(tiny_data, tmp_path, capsys):  # noqa: F811
    output_dir = tmp_path / "run"
    train_net = load_tool("tools/train_net.py")
    args = tiny_train_args(tiny_data, output_dir, "SOLVER.MAX_ITER", "2", "SOLVER.CHECKPOINT_PERIOD", "1")
    train_net.cli(args)
    checkpoint = output_dir / "model_0000001.pth"
    member = flip_a_tensor_byte(checkpoint)
    capsys.readouterr()
    assert run_cli(train_net.cli, ["--resume", *args, "SOLVER.MAX_ITER", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: {checkpoint}: corrupt: the data of '{member}' does not match its stored checksum (a "
                   "damaged copy?); copy it again or use another checkpoint")
    code = run_cli(train_net.cli, ["--eval-only", *tiny_train_args(tiny_data, tmp_path / "eval"),
                                   "DATASETS.TEST", "('shapes',)", "MODEL.WEIGHTS", str(checkpoint)])
    assert code == 2 and "corrupt: the data of" in capsys.readouterr().err


def test_a_command_reads_its_checkpoint_in_full_once(tiny_data, tmp_path, monkeypatch):  # noqa: F811
    """The config is read from the checkpoint, preflight checks it, the model loads it: one CRC pass of the whole
    file among them; a file rewritten since is verified again."""
    import zipfile

    from adet.checkpoint import files

    train_net = load_tool("tools/train_net.py")
    train_net.cli(tiny_train_args(tiny_data, tmp_path / "run", "SOLVER.MAX_ITER", "1"))
    weights = str(tmp_path / "run" / "model_final.pth")
    passes = []
    real_testzip = zipfile.ZipFile.testzip
    monkeypatch.setattr(zipfile.ZipFile, "testzip", lambda archive: passes.append(archive.filename) or
                        real_testzip(archive))
    monkeypatch.setattr(files, "_verified", set(), raising=False)  # nothing verified yet in this process
    command = ["eval", "--weights", weights, "--dataset", tiny_data["dataset"], "DATASETS.TEST", "('shapes',)",
               "OUTPUT_DIR", str(tmp_path / "eval")]
    assert embedmask(command) == 0
    assert passes == [weights]
    os.utime(weights, ns=(0, 0))  # the file changed: read in full again
    assert embedmask(command) == 0
    assert passes == [weights, weights]


def mount_small_disk(folder, megabytes: int) -> bool:
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(folder)],
                          capture_output=True)
    return done.returncode == 0


@pytest.mark.slow
def test_a_full_disk_keeps_the_previous_checkpoint_and_says_so(tiny_data, tmp_path):  # noqa: F811
    output_dir = tmp_path / "small_disk"
    probe = tmp_path / "probe"
    train_net = load_tool("tools/train_net.py")
    train_net.cli(tiny_train_args(tiny_data, probe, "SOLVER.MAX_ITER", "1", "SOLVER.CHECKPOINT_PERIOD", "1"))
    size = os.path.getsize(probe / "model_0000000.pth")
    args = tiny_train_args(tiny_data, output_dir, "SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "3")
    if mount_small_disk(output_dir, int(1.6 * size / 2**20) + 1):  # room for one checkpoint, not two
        process, expected = start(args), "No space left on device"
    else:  # not allowed to mount: a file-size limit makes the second save fail as a full disk would
        import resource

        def limit():
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (int(1.2 * size), int(1.2 * size)))

        process = subprocess.Popen([sys.executable, TRAIN_NET, *args], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, preexec_fn=limit)
        expected = "File too large"
    try:
        code = process.wait(timeout=300)
        output = output_of(process) if hasattr(process, "log") else process.stdout.read()
        assert code == 2, output[-3000:]
        lines = [line for line in output.splitlines() if line.startswith("error:")]
        assert len(lines) == 1, output[-3000:]
        assert lines[0].startswith(f"error: {output_dir / 'model_0000005.pth'}: could not be saved: {expected}")
        assert lines[0].endswith("; nothing was written (an earlier file of that name, and last_checkpoint, are "
                                 "unchanged)")
        assert "Traceback" not in output
        assert (output_dir / "last_checkpoint").read_text() == "model_0000002.pth"
        torch.load(output_dir / "model_0000002.pth", weights_only=True)  # whole
        assert not [f for f in os.listdir(output_dir) if f.startswith(".tmp") or f == "model_0000005.pth"]
    finally:
        subprocess.run(["umount", str(output_dir)], capture_output=True)


# ---- evaluations --------------------------------------------------------------------------------------------------
SLOW_EVALUATION = os.path.join(ROOT, "tests", "slow_evaluation.py")


@pytest.mark.nccl_emulated
@pytest.mark.slow
def test_a_long_evaluation_on_rank_0_does_not_trip_the_collective_timeout(tiny_data, tmp_path):  # noqa: F811
    """DIST_TIMEOUT 3 s and rank 0 scoring for 8 s: the others wait for it without timing out."""
    output_dir = tmp_path / "long_eval"
    process = start(tiny_train_args(tiny_data, output_dir, "SOLVER.MAX_ITER", "4", "TEST.EVAL_PERIOD", "2",
                                    "DATASETS.TEST", "('shapes',)", "DIST_TIMEOUT", "3", *TWO_PROCESSES),
                    command=(SLOW_EVALUATION,), EMBEDMASK_TEST_SCORE_SECONDS="8")
    assert finish(process) == 0, output_of(process)[-3000:]
    with open(output_dir / "metrics.json") as f:
        evaluations = [r["iteration"] for r in map(json.loads, f) if "segm/AP" in r]
    assert evaluations == [1, 3]


@pytest.mark.slow
def test_a_stop_signal_during_an_evaluation_stops_promptly_and_the_resume_evaluates_first(tiny_data,  # noqa: F811
                                                                                          tmp_path):
    output_dir = tmp_path / "stopped_eval"
    args = tiny_train_args(tiny_data, output_dir, "SOLVER.MAX_ITER", "6", "TEST.EVAL_PERIOD", "3",
                           "DATASETS.TEST", "('shapes',)")
    process = start(args, command=(SLOW_EVALUATION,), EMBEDMASK_TEST_IMAGE_SECONDS="1")
    deadline = time.time() + 240
    while "Start inference" not in output_of(process) and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(1.5)  # a couple of images into the 12
    sent = time.time()
    process.send_signal(signal.SIGTERM)
    assert finish(process, timeout=60) == 128 + signal.SIGTERM, output_of(process)[-3000:]
    assert time.time() - sent < 10
    output = output_of(process)
    assert "interrupted by a stop signal: its partial results are dropped" in output
    assert not (output_dir / "inference" / "evaluation_results.json").exists()
    assert (output_dir / "last_checkpoint").read_text() == "model_0000002.pth"
    assert torch.load(output_dir / "model_0000002.pth", weights_only=True)["evaluation_pending"] is True
    resumed = start(["--resume", *args])
    assert finish(resumed) == 0, output_of(resumed)[-3000:]
    assert "Evaluating iteration 2 first: a stop signal interrupted its evaluation" in output_of(resumed)
    with open(output_dir / "metrics.json") as f:
        records = list(map(json.loads, f))
    assert [r["iteration"] for r in records if "segm/AP" in r] == [2, 5]
    assert sorted({r["iteration"] for r in records if "total_loss" in r}) == list(range(6))


def test_requeue_asks_scontrol_for_this_job(tmp_path, monkeypatch):
    from adet.engine.distributed import preemption

    calls = tmp_path / "calls.txt"
    scontrol = tmp_path / "scontrol"
    scontrol.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n")
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "31337")
    assert preemption.requeue_slurm_job() == "job 31337 requeued"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "31000")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "7")
    assert preemption.requeue_slurm_job() == "job 31000_7 requeued"  # an array task requeues itself only
    assert calls.read_text().splitlines() == ["requeue 31337", "requeue 31000_7"]
    monkeypatch.delenv("SLURM_JOB_ID")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID")
    assert "not a SLURM job" in preemption.requeue_slurm_job()
