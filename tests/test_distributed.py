"""Multi-process runs under NCCL's device rule, emulated on the CPU (EMBEDMASK_DIST_BACKEND=cuda:gloo, set by
conftest for every process the tests start): every launch path sets the rule up, collectives are routed by device,
an official-style run (SEED -1, periodic evaluation, a validation loss and early stopping on unevenly shared images)
completes on two processes, and the validation loss is the one-process value."""

import json
import os
import subprocess
import sys
import uuid

import pytest
import torch

from adet.data import DatasetCatalog, MetadataCatalog, register_coco_instances
from adet.data.synthetic import write_split
from adet.engine import DefaultTrainer, ValidationLoss
from adet.engine.distributed.launch import find_free_port
from adet.utils import comm

from .conftest import ROOT
from .test_trainer import register_shapes, tiny_training_cfg

RULES_SCRIPT = os.path.join(ROOT, "tests", "scripts", "default_group_rules.py")
TRAIN_SCRIPT = os.path.join(ROOT, "tests", "scripts", "adelaidet_train_net.py")
NCCL_ERROR = "No backend type associated with device type cpu"


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed_data")
    return {"json": write_split(str(root), "shapes", 12, seed=11), "images": str(root / "shapes"), "root": root}


def one_thread_env(**extra):
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT, **extra)


def read_ranks(out_dir):
    return [json.loads((out_dir / f"rank{rank}.json").read_text()) for rank in (0, 1)]


@pytest.mark.nccl_emulated
@pytest.mark.parametrize("launcher", ["spawn", "torchrun", "slurm"])
def test_every_launch_path_puts_the_default_group_under_nccls_device_rule(launcher, tmp_path):
    assert os.environ[comm.BACKEND_ENV] == "cuda:gloo"
    if launcher == "spawn":
        runs = [subprocess.Popen([sys.executable, RULES_SCRIPT, str(tmp_path), "spawn"], env=one_thread_env())]
    elif launcher == "torchrun":
        runs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                                  "--master_port", str(find_free_port()), RULES_SCRIPT, str(tmp_path), "torchrun"],
                                 env=one_thread_env())]
    else:
        slurm = {"SLURM_NTASKS": "2", "SLURM_NODEID": "0", "SLURM_TASKS_PER_NODE": "2", "SLURM_NODELIST": "localhost",
                 "SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0", "MASTER_PORT": str(find_free_port())}
        runs = [subprocess.Popen([sys.executable, RULES_SCRIPT, str(tmp_path), "slurm"],
                                 env=one_thread_env(SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank), **slurm))
                for rank in (0, 1)]
    assert [run.wait(timeout=120) for run in runs] == [0] * len(runs)
    for found in read_ranks(tmp_path):
        assert NCCL_ERROR in found["cpu_tensor_on_default_group"], found  # as NCCL answers it
        assert found["backend"] == "cuda:gloo" and found["routed_sum"] == 3.0 and found["broadcast"] == 10
        assert found["gathered"] == [0, 1]


@pytest.mark.nccl_emulated
def test_official_style_run_with_random_seed_validation_loss_and_early_stopping_on_uneven_shares(shapes, tmp_path):
    """The AdelaiDet script on two processes with SEED -1 (every official config's: a seed drawn on rank 0 and
    broadcast), an evaluation every 2 iterations, a validation loss every iteration on 5 images (3 and 2 per
    process) and early stopping on it. The run completes, both processes trained with one seed, and the validation
    loss it logged for its last weights is the one-process value."""
    validation_json = write_split(str(tmp_path), "validation", 5, seed=3)
    config = tmp_path / "config.yaml"
    config.write_text(tiny_training_cfg(tmp_path / "out", "SEED", -1, "TEST.EVAL_PERIOD", 2, "SOLVER.MAX_ITER", 4,
                                        "SOLVER.IMS_PER_BATCH", 4, "DIST_TIMEOUT", 60).dump())
    env = one_thread_env(EMBEDMASK_TEST_DATASET=f"{shapes['json']}:{shapes['images']}",
                         EMBEDMASK_TEST_VALIDATION=f"{validation_json}:{tmp_path / 'validation'}")
    done = subprocess.run([sys.executable, TRAIN_SCRIPT, "--config-file", str(config), "--num-gpus", "2",
                           "MODEL.DEVICE", "cpu"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "out"
    seeds = {rank: [line.split(" (seed ")[1].split(",")[0] for line in (out / name).read_text().splitlines()
                    if "Training 4 iterations from 0 (seed" in line]
             for rank, name in ((0, "log.txt"), (1, "log.txt.rank1"))}
    assert seeds[0] == seeds[1] and len(seeds[0]) == 1 and int(seeds[0][0]) >= 0
    with open(out / "metrics.json") as f:
        records = [json.loads(line) for line in f]
    validations = [r for r in records if "validation_loss" in r]
    assert validations and [r["iteration"] for r in validations] == list(range(len(validations)))
    evaluated = [i for i in (1, 3) if i <= validations[-1]["iteration"]]
    assert [r["iteration"] for r in records if "segm/AP" in r] == evaluated
    final = torch.load(out / "model_final.pth", weights_only=True)
    assert final["iteration"] == validations[-1]["iteration"] and "EarlyStopping" in final["hooks"]
    # What hooks read from the storage is the mean over processes at every iteration, not only at log ones (here
    # the first and the last): both ranks hold the same values, though each computed its own losses.
    steps = [json.loads(line) for line in open(out / "steps.jsonl")]
    by_rank = {rank: {s["iteration"]: {k: v for k, v in s.items() if k.startswith("loss_")} for s in steps
                      if s["rank"] == rank} for rank in (0, 1)}
    assert 1 in by_rank[0] and by_rank[0] == by_rank[1] and len(by_rank[0][1]) == 5

    # One process, the same images, the final weights: the value the two processes logged for them.
    name = f"validation_{uuid.uuid4().hex[:6]}"
    register_coco_instances(name, {}, validation_json, str(tmp_path / "validation"))
    register_shapes(shapes)
    try:
        trainer = DefaultTrainer(tiny_training_cfg(tmp_path / "again", "MODEL.WEIGHTS", str(out / "model_final.pth")))
        trainer.resume_or_load(resume=False)
        hook = ValidationLoss(name, period=1)
        hook.trainer = trainer
        one_process = hook.compute()
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    logged = {k[len("validation/"):]: v for k, v in validations[-1].items() if k.startswith("validation/")}
    assert set(logged) == set(one_process) and len(logged) == 5
    assert one_process == pytest.approx(logged, rel=1e-5)
