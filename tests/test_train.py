"""Training end to end on tiny data: losses, bad annotations, divergence, resume after SIGKILL, two processes (the
cluster cases are test_cluster.py's)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from adet.cli.errors import run_cli
from adet.data.synthetic import write_split

from .conftest import ROOT, load_tool, make_tiny_cfg

TRAIN_NET = os.path.join(ROOT, "tools", "train_net.py")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_data")
    json_file = write_split(str(root), "shapes", 12, seed=11)
    return {"dataset": f"shapes={json_file}:{root / 'shapes'}", "json": json_file, "root": root}


def tiny_train_args(data, output_dir, *extra):
    cfg = make_tiny_cfg("MODEL.FCOS.NUM_CLASSES", 4, "MODEL.BACKBONE.FREEZE_AT", 0, "MODEL.RESNETS.NORM", "BN",
                        "SOLVER.IMS_PER_BATCH", 2, "SOLVER.BASE_LR", 0.01, "SOLVER.WARMUP_ITERS", 2,
                        "SOLVER.MAX_ITER", 6, "SOLVER.CHECKPOINT_PERIOD", 3, "SEED", 1, "DATALOADER.NUM_WORKERS", 0,
                        "INPUT.MIN_SIZE_TRAIN", (96, 112), "MODEL.EMBEDMASK.MAX_PROPOSALS", 30)
    config = output_dir.parent / f"{output_dir.name}.yaml"
    config.write_text(cfg.dump())
    return ["--config-file", str(config), "--dataset", data["dataset"], "--log-period", "1",
            "DATASETS.TRAIN", "('shapes',)", "DATASETS.TEST", "()", "OUTPUT_DIR", str(output_dir), *extra]


def read_losses(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        records = [json.loads(line) for line in f]
    return {r["iteration"]: {k: v for k, v in r.items() if k.startswith("loss_")} for r in records if "total_loss" in r}


def test_train_writes_checkpoints_metrics_and_config(tiny_data, tmp_path):
    train_net = load_tool("tools/train_net.py")
    output_dir = tmp_path / "run"
    train_net.cli(tiny_train_args(tiny_data, output_dir))
    files = set(os.listdir(output_dir))
    assert {"model_0000002.pth", "model_final.pth", "last_checkpoint", "metrics.json", "config.yaml",
            "log.txt"} <= files
    assert any(f.startswith("events.out.tfevents") for f in files) and not any(f.startswith(".tmp") for f in files)
    losses = read_losses(output_dir)
    assert sorted(losses) == list(range(6))
    assert set(losses[0]) == {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr", "loss_mask", "loss_sem"}
    final = torch.load(output_dir / "model_final.pth", weights_only=True)
    assert final["iteration"] == 5 and final["class_names"] == ["circle", "square", "triangle", "star"]
    assert final["category_ids"] == [1, 2, 3, 4] and "EmbedMask" in final["config"]
    assert "optimizer" not in final and "scheduler" not in final  # weights only: the resumable state is below
    resumable = torch.load(output_dir / "model_0000005.pth", weights_only=True)
    assert set(resumable) >= {"model", "optimizer", "scheduler"} and resumable["iteration"] == 5
    assert (output_dir / "last_checkpoint").read_text() == "model_0000005.pth"
    assert os.path.getsize(output_dir / "model_final.pth") < 0.6 * os.path.getsize(output_dir / "model_0000005.pth")


def test_bad_annotations_are_dropped_with_a_count(tiny_data, tmp_path, caplog):
    data = json.load(open(tiny_data["json"]))
    first = data["images"][0]["id"]
    data["annotations"] += [
        {"id": 9001, "image_id": first, "category_id": 1, "bbox": [5, 5, 0, 10], "iscrowd": 0,
         "segmentation": [[5, 5, 5, 10, 5, 15]]},                       # zero-area box, degenerate polygon
        {"id": 9002, "image_id": first, "category_id": 2, "bbox": [500, 500, 10, 10], "iscrowd": 0,
         "segmentation": [[500, 500, 510, 500, 510, 510]]},             # outside the image
        {"id": 9003, "image_id": first, "category_id": 3, "bbox": [10, 10, 20, 20], "iscrowd": 0,
         "segmentation": [[10, 10, 20, 20, 30, 30]]},                   # collinear: zero-area polygon
    ]
    bad_json = tmp_path / "bad.json"
    bad_json.write_text(json.dumps(data))
    bad = dict(tiny_data, dataset=f"shapes={bad_json}:{tiny_data['root'] / 'shapes'}")
    train_net = load_tool("tools/train_net.py")
    train_net.cli(tiny_train_args(bad, tmp_path / "run", "SOLVER.MAX_ITER", "2"))
    log = open(tmp_path / "run" / "log.txt").read()
    assert ("bad.json: 3 annotations dropped: 2 without a valid polygon (>= 3 points, non-zero area) (ids 9001, "
            "9003); 1 with a bbox outside the image (ids 9002)") in log


def test_non_finite_loss_stops_with_iteration_and_term(tiny_data, tmp_path, capsys):
    train_net = load_tool("tools/train_net.py")
    code = run_cli(train_net.cli, tiny_train_args(tiny_data, tmp_path / "run", "SOLVER.BASE_LR", "1e12",
                                                  "SOLVER.WARMUP_ITERS", "0"))
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: training diverged at iteration ")
    assert ("=nan" in err or "=inf" in err) and err.count("\n") == 0


def _run(args, **kwargs):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, TRAIN_NET, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, **kwargs)


def test_initial_weights_follow_the_seed_not_the_callers_rng(tiny_data, tmp_path):
    from adet.cli.options import register_datasets_from_args
    from adet.engine import DefaultTrainer

    register_datasets_from_args([tiny_data["dataset"]])

    def initial_weights(seed, caller_rng):
        cfg = make_tiny_cfg("MODEL.FCOS.NUM_CLASSES", 4, "SEED", seed, "DATALOADER.NUM_WORKERS", 0,
                            "DATASETS.TRAIN", ("shapes",), "DATASETS.TEST", (), "OUTPUT_DIR", str(tmp_path / "out"))
        torch.manual_seed(caller_rng)
        return DefaultTrainer(cfg).model.state_dict()

    first, again, other = initial_weights(3, 100), initial_weights(3, 200), initial_weights(4, 100)
    assert all(torch.equal(first[k], again[k]) for k in first)
    head = "proposal_generator.fcos_head.cls_logits.weight"
    assert not torch.equal(first[head], other[head])


@pytest.mark.slow
def test_resume_after_sigkill_continues_the_same_loss_sequence(tiny_data, tmp_path):
    extra = ("SOLVER.MAX_ITER", "12", "SOLVER.CHECKPOINT_PERIOD", "4")
    reference = _run(tiny_train_args(tiny_data, tmp_path / "a", *extra))
    assert reference.wait(timeout=300) == 0, reference.stdout.read()[-2000:]

    killed_dir = tmp_path / "b"
    process = _run(tiny_train_args(tiny_data, killed_dir, *extra))
    deadline = time.time() + 300
    while time.time() < deadline:  # kill between the checkpoints of iterations 3 and 7
        if (killed_dir / "metrics.json").exists() and 5 in read_losses(killed_dir):
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed_dir / "model_final.pth").exists()
    for name in os.listdir(killed_dir):  # whatever was written is complete
        if name.endswith(".pth"):
            torch.load(killed_dir / name, weights_only=True)
    last = (killed_dir / "last_checkpoint").read_text().strip()
    resumed = _run(["--resume", *tiny_train_args(tiny_data, killed_dir, *extra)])
    assert resumed.wait(timeout=300) == 0, resumed.stdout.read()[-2000:]
    start = int(last.split("_")[1].split(".")[0]) + 1
    expected, got = read_losses(tmp_path / "a"), read_losses(killed_dir)
    assert start >= 4
    for iteration in range(start, 12):
        for key, value in expected[iteration].items():
            assert got[iteration][key] == pytest.approx(value, rel=1e-5, abs=1e-7), (iteration, key)


@pytest.mark.nccl_emulated
@pytest.mark.slow
def test_two_cpu_processes_match_one_process_with_the_same_total_batch(tmp_path):
    """A one-image dataset without flips makes every per-process batch identical, so per-process normalisations
    and BatchNorm statistics coincide and two processes (batch 1 each) must reproduce one process (batch 2)."""
    from adet.engine.distributed.launch import launch

    from . import dist_worker

    json_file = write_split(str(tmp_path), "one", 1, seed=4)
    cfg = make_tiny_cfg("MODEL.FCOS.NUM_CLASSES", 4, "MODEL.BACKBONE.FREEZE_AT", 0, "MODEL.RESNETS.NORM", "BN",
                        "SOLVER.IMS_PER_BATCH", 2, "SOLVER.BASE_LR", 0.01, "SOLVER.WARMUP_ITERS", 0,
                        "SOLVER.MAX_ITER", 3, "SOLVER.CHECKPOINT_PERIOD", 0, "SEED", 1, "INPUT.HFLIP_TRAIN", False,
                        "DATASETS.TRAIN", ("one",), "DATASETS.TEST", (), "MODEL.EMBEDMASK.MAX_PROPOSALS", -1,
                        # Lovasz's subgradient depends on how exact ties sort; Dice is smooth, so updates compare.
                        "MODEL.EMBEDMASK.MASK_LOSS_TYPE", "Dice")
    dataset = f"one={json_file}:{tmp_path / 'one'}"
    runs = {}
    for name, processes in (("single", 1), ("double", 2)):
        cfg.OUTPUT_DIR = str(tmp_path / name)
        launch(dist_worker.train_and_save_weights, processes, args=(cfg.dump(), dataset), use_cuda=False)
        runs[name] = read_losses(tmp_path / name)
    assert sorted(runs["double"]) == [0, 1, 2]
    for iteration, losses in runs["single"].items():
        for key, value in losses.items():
            assert runs["double"][iteration][key] == pytest.approx(value, rel=1e-4), (iteration, key)
    rank0 = torch.load(tmp_path / "double" / "weights_rank0.pt")
    rank1 = torch.load(tmp_path / "double" / "weights_rank1.pt")
    single = torch.load(tmp_path / "single" / "weights_rank0.pt")
    assert all(torch.equal(rank0["final"][k], rank1["final"][k]) for k in rank0["final"])  # replicas identical
    for name, initial in single["initial"].items():
        assert torch.equal(initial, rank0["initial"][name])
        # Same update as one process, up to float32 summation order (gradients agree to ~1e-4 relative).
        update = (single["final"][name] - initial).abs().max()
        difference = (rank0["final"][name] - single["final"][name]).abs().max()
        assert difference <= 0.02 * update + 1e-7, name


@pytest.mark.nccl_emulated
@pytest.mark.slow
def test_torchrun_launch(tiny_data, tmp_path):
    import shutil

    torchrun = shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not on PATH")
    output_dir = tmp_path / "torchrun"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([torchrun, "--nproc_per_node", "2", TRAIN_NET,
                           *tiny_train_args(tiny_data, output_dir, "SOLVER.MAX_ITER", "2", "MODEL.DEVICE", "cpu")],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    log = open(output_dir / "log.txt").read()
    assert "Rank 0 of 2" in log and (output_dir / "log.txt.rank1").exists()
    assert sorted(read_losses(output_dir)) == [0, 1] and (output_dir / "model_final.pth").exists()


def test_best_checkpoint_by_segm_ap_and_a_finished_run_resumes_to_nothing(tiny_data, tmp_path):
    train_net = load_tool("tools/train_net.py")
    output_dir = tmp_path / "run"
    args = tiny_train_args(tiny_data, output_dir, "DATASETS.TEST", "('shapes',)", "TEST.EVAL_PERIOD", "2")
    train_net.cli(args)
    with open(output_dir / "metrics.json") as f:
        evaluations = [r for r in map(json.loads, f) if "segm/AP" in r]
    assert [r["iteration"] for r in evaluations] == [1, 3, 5]
    best = torch.load(output_dir / "model_best.pth", weights_only=True)
    best_eval = max(evaluations, key=lambda r: r["segm/AP"])
    assert best["best_metric"] == {"name": "segm/AP", "value": best_eval["segm/AP"],
                                   "iteration": best_eval["iteration"]}
    assert best["iteration"] == best_eval["iteration"] and "optimizer" not in best
    before = {name: os.path.getmtime(output_dir / name) for name in os.listdir(output_dir) if name.endswith(".pth")}
    assert train_net.cli(args + ["--resume"]) == {}
    after = {name: os.path.getmtime(output_dir / name) for name in os.listdir(output_dir) if name.endswith(".pth")}
    assert after == before
    assert "Training already finished (iteration 6 of SOLVER.MAX_ITER 6)" in (output_dir / "log.txt").read_text()


def test_a_failed_training_in_a_python_session_leaves_no_workers_and_the_sigterm_handler(tiny_data, tmp_path,
                                                                                           capsys):
    """Training from Python (a notebook, a test) that fails mid-way: the loader's workers (which ignore SIGTERM)
    are gone, and SIGTERM means again what it meant before."""
    import multiprocessing
    import shutil
    import signal

    from adet.cli.errors import run_cli

    images = tmp_path / "images"
    shutil.copytree(tiny_data["root"] / "shapes", images)
    for image in images.iterdir():
        image.write_bytes(b"junk")
    before = signal.getsignal(signal.SIGTERM)
    args = tiny_train_args({"dataset": f"cut={tiny_data['json']}:{images}"}, tmp_path / "out",
                           "DATASETS.TRAIN", "('cut',)", "DATALOADER.NUM_WORKERS", "2", "SOLVER.MAX_ITER", "40")
    code = run_cli(load_tool("tools/train_net.py").cli, args)
    assert code == 2 and "unusable training images in a row" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is before
    assert [child for child in multiprocessing.active_children() if child.daemon] == []
