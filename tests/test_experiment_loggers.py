"""The W&B and MLflow writer hooks, with the libraries' offline modes (wandb mode="offline", MLflow's file store):
the values they logged equal metrics.json's, and a resumed run continues the same tracker run."""

import glob
import json

import pytest

from adet.engine import DefaultTrainer

from .test_trainer import register_shapes, shapes, tiny_training_cfg  # noqa: F401 - the fixture


def metrics_json(output_dir):
    with open(output_dir / "metrics.json") as f:
        return [json.loads(line) for line in f]


def train(cfg, hook, resume=False):
    trainer = DefaultTrainer(cfg)
    trainer.register_hooks([hook])
    trainer.resume_or_load(resume=resume)
    trainer.train(log_period=1)
    return trainer


def test_mlflow_writer_logs_what_metrics_json_holds_and_resumes_the_same_run(shapes, tmp_path,  # noqa: F811
                                                                              monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a local store with no server or database
    from adet.engine.training.experiment_loggers import MLflowWriter

    register_shapes(shapes)
    uri = f"file:{tmp_path / 'mlruns'}"
    cfg = tiny_training_cfg(tmp_path / "out", "SOLVER.MAX_ITER", 4, "TEST.EVAL_PERIOD", 0,
                            "SOLVER.CHECKPOINT_PERIOD", 2)
    train(cfg, MLflowWriter(tracking_uri=uri, period=1))
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("embedmask").experiment_id])
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "total_loss")}
    logged = {r["iteration"]: r["total_loss"] for r in metrics_json(tmp_path / "out") if "total_loss" in r}
    assert history == pytest.approx(logged) and sorted(history) == [0, 1, 2, 3]
    assert {m.step for m in client.get_metric_history(run.info.run_id, "segm/AP")} == {3}  # the last evaluation
    assert run.data.params["SOLVER.MAX_ITER"] == "4"

    longer = cfg.clone()
    longer.SOLVER.MAX_ITER = 6
    train(longer, MLflowWriter(tracking_uri=uri, period=1), resume=True)
    (again,) = client.search_runs([client.get_experiment_by_name("embedmask").experiment_id])
    assert again.info.run_id == run.info.run_id
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "total_loss")) == list(range(6))


def test_wandb_writer_offline_summary_holds_the_last_values(shapes, tmp_path, monkeypatch):  # noqa: F811
    wandb = pytest.importorskip("wandb")
    from adet.engine.training.experiment_loggers import WandbWriter

    register_shapes(shapes)
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = tiny_training_cfg(tmp_path / "out", "SOLVER.MAX_ITER", 3, "TEST.EVAL_PERIOD", 0)
    hook = WandbWriter(project="embedmask-test", mode="offline", dir=str(tmp_path), period=1)
    sent = []
    start = hook.start

    def start_and_record(config):  # what the hook hands to the offline run, step by step
        run_id = start(config)
        log = hook.run.log
        hook.run.log = lambda scalars, step: (sent.append((step, dict(scalars))), log(scalars, step=step))
        return run_id

    hook.start = start_and_record
    try:
        train(cfg, hook)
    finally:
        wandb.teardown()  # ends wandb's service process
    logged = {r["iteration"]: r for r in metrics_json(tmp_path / "out") if "total_loss" in r}
    losses = [(step, scalars) for step, scalars in sent if "total_loss" in scalars]
    assert [step for step, _ in losses] == [0, 1, 2]
    for step, scalars in losses:
        assert scalars["total_loss"] == pytest.approx(logged[step]["total_loss"])
        assert scalars["lr"] == pytest.approx(logged[step]["lr"])
    assert [step for step, scalars in sent if "segm/AP" in scalars] == [2]
    assert glob.glob(str(tmp_path / "wandb" / f"offline-run-*-{hook.run.id}" / f"run-{hook.run.id}.wandb"))
    assert hook.state_dict() == {"run_id": hook.run.id} and not hook.started  # finished
