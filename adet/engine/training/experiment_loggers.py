"""Hooks that send a run's scalars to experiment trackers: Weights & Biases and MLflow (optional: ``pip install
wandb`` / ``mlflow``; each imported only when its hook is used). Every ``period`` iterations they log what the
iteration put in ``trainer.storage`` (losses, learning rate, a hook's validation loss), after each evaluation its
metrics (``segm/AP``...). The tracker's run id is part of the hook's state: ``--resume`` continues the same run.
Only the main process logs.

    trainer.register_hooks([WandbWriter(project="embedmask", mode="offline"), MLflowWriter(tracking_uri="file:mlruns")])
"""

from __future__ import annotations

from typing import Any

import yaml

from adet.engine.training.hooks import HookBase, flat_metrics
from adet.utils import comm


class TrackerWriter(HookBase):
    """What both trackers share: when to log and what; subclasses start, log to and end a run."""

    def __init__(self, period: int = 20):
        self.period = period
        self.run_id: str | None = None
        self.started = False

    def active(self) -> bool:
        return comm.is_main_process()

    def before_train(self) -> None:
        if self.active():  # run_id: a resumed run's, from the checkpoint, or None
            self.run_id = self.start(yaml.safe_load(self.trainer.cfg.dump()))
            self.started = True

    def after_step(self) -> None:
        iteration = self.trainer.iter
        if not self.active() or ((iteration + 1) % self.period and iteration != self.trainer.max_iter - 1):
            return
        latest = self.trainer.storage.latest()
        self.log({name: value for name, (value, at) in latest.items() if at == iteration}, iteration)

    def after_eval(self, results: dict) -> None:
        if self.active() and results:
            self.log({k: v for k, v in flat_metrics(results).items() if v == v}, self.trainer.iter)  # NaN: no AP

    def after_train(self) -> None:
        if self.started:
            self.end()
            self.started = False

    def state_dict(self) -> dict:
        return {"run_id": self.run_id} if self.run_id else {}

    def load_state_dict(self, state: dict) -> None:
        self.run_id = state.get("run_id")

    def start(self, config: dict) -> str:
        raise NotImplementedError

    def log(self, scalars: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def end(self) -> None:
        raise NotImplementedError


class WandbWriter(TrackerWriter):
    """``wandb.init(project=..., **init_kwargs)`` (e.g. ``mode="offline"``, ``entity``, ``name``, ``dir``)."""

    def __init__(self, project: str = "embedmask", period: int = 20, **init_kwargs: Any):
        super().__init__(period)
        self.project, self.init_kwargs = project, init_kwargs
        self.run = None

    def start(self, config: dict) -> str:
        import wandb  # optional: pip install wandb

        resume = {"id": self.run_id, "resume": "allow"} if self.run_id else {}
        self.run = wandb.init(project=self.project, config=config, **resume, **self.init_kwargs)
        return self.run.id

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.run.log(scalars, step=step)

    def end(self) -> None:
        self.run.finish()


class MLflowWriter(TrackerWriter):
    """An MLflow run in ``experiment`` (``tracking_uri`` None: MLflow's default, ``$MLFLOW_TRACKING_URI``); the full
    config is logged as the artifact ``config.yaml`` and its main values as parameters."""

    PARAMS = ("MODEL.RESNETS.DEPTH", "MODEL.FCOS.NUM_CLASSES", "SOLVER.BASE_LR", "SOLVER.IMS_PER_BATCH",
              "SOLVER.MAX_ITER", "SEED")

    def __init__(self, experiment: str = "embedmask", tracking_uri: str | None = None, run_name: str | None = None,
                 period: int = 20):
        super().__init__(period)
        self.experiment, self.tracking_uri, self.run_name = experiment, tracking_uri, run_name

    def start(self, config: dict) -> str:
        import mlflow  # optional: pip install mlflow

        self.mlflow = mlflow
        if self.tracking_uri:
            mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_experiment(self.experiment)
        run = mlflow.start_run(run_id=self.run_id, run_name=None if self.run_id else self.run_name)
        if self.run_id is None:
            mlflow.log_text(self.trainer.cfg.dump(), "config.yaml")
            mlflow.log_params({key: _lookup(config, key) for key in self.PARAMS})
        return run.info.run_id

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.mlflow.log_metrics(scalars, step=step)

    def end(self) -> None:
        self.mlflow.end_run()


def _lookup(config: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        config = config[part]
    return config
