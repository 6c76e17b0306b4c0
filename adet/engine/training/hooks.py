"""Hooks: code a :class:`~adet.engine.DefaultTrainer` runs at fixed points of its loop, as detectron2's hooks do.

    class CountSteps(HookBase):
        def __init__(self): self.steps = 0
        def after_step(self): self.steps += 1
        def state_dict(self): return {"steps": self.steps}       # saved in every checkpoint, back on --resume
        def load_state_dict(self, state): self.steps = state["steps"]

    trainer.register_hooks([CountSteps(), EarlyStopping("segm/AP", patience=3)])

A hook sees the trainer as ``self.trainer``: ``iter``, ``start_iter``, ``max_iter``, ``cfg``, ``model``,
``optimizer``, ``storage`` (``put_scalar`` adds a scalar to metrics.json), ``request_stop(reason)``.
The loop calls, in order: ``before_train``; per iteration ``before_step``, ``after_backward`` (gradients present,
before clipping and the optimizer step), ``after_step``; ``after_eval(results)`` after each evaluation, with the
results as ``DefaultTrainer.test`` returns them; ``after_save`` after each checkpoint; ``after_train`` once, however
the loop ended.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable

import numpy as np
import torch

from adet.data import DatasetCatalog
from adet.data.mapper import DatasetMapper
from adet.utils import comm

logger = logging.getLogger(__name__)


class HookBase:
    trainer: Any  # the DefaultTrainer that registered this hook (set by its register_hooks)

    def before_train(self) -> None:
        pass

    def after_train(self) -> None:
        pass

    def before_step(self) -> None:
        pass

    def after_backward(self) -> None:
        pass

    def after_step(self) -> None:
        pass

    def after_eval(self, results: dict) -> None:
        pass

    def after_save(self) -> None:
        """After a checkpoint was written (not detectron2's; Ultralytics' on_model_save)."""

    def state_dict(self) -> dict:
        """What must survive a resume (an empty dict: nothing)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def flat_metrics(results: dict) -> dict[str, float]:
    """``{"segm": {"AP": 40.1}}`` (one dataset) or ``{dataset: {"segm": ...}}`` -> ``{"segm/AP": 40.1}``, and with
    several datasets ``{"dataset/segm/AP": ...}``."""
    flat: dict[str, float] = {}

    def walk(prefix: str, node: Any) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(f"{prefix}{key}/", value)
            elif isinstance(value, (int, float)):
                flat[f"{prefix}{key}"] = float(value)

    walk("", results)
    return flat


class EarlyStopping(HookBase):
    """Stop training when ``metric`` (a key of the evaluation, e.g. ``segm/AP``, ``bbox/AP50``, or a scalar a hook
    puts, e.g. ``validation_loss``) has not improved by more than ``min_delta`` for ``patience`` evaluations.
    ``mode`` "max" (AP) or "min" (a loss). The run ends with model_final.pth and a resumable checkpoint;
    model_best.pth holds the best weights.

    A hook's scalar is observed once per value, in ``after_step`` (register this hook after the one that puts it,
    and it stops at the same iteration; before it, one iteration later)."""

    def __init__(self, metric: str = "segm/AP", patience: int = 5, mode: str = "max", min_delta: float = 0.0):
        if mode not in ("max", "min"):
            raise ValueError(f"EarlyStopping mode must be 'max' or 'min', got {mode!r}")
        if patience < 1:
            raise ValueError(f"EarlyStopping patience must be at least 1, got {patience}")
        self.metric, self.patience, self.mode, self.min_delta = metric, patience, mode, min_delta
        self.best = -math.inf if mode == "max" else math.inf
        self.best_iter = -1
        self.bad_evaluations = 0
        self.observed_iter = -1  # the iteration of the last hook scalar observed

    def _improved(self, value: float) -> bool:
        if self.mode == "max":
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta

    def observe(self, value: float, iteration: int | None = None) -> None:
        if self._improved(value):
            self.best, self.bad_evaluations = value, 0
            self.best_iter = self.trainer.iter if iteration is None else iteration
            return
        self.bad_evaluations += 1
        if self.bad_evaluations >= self.patience:
            self.trainer.request_stop(f"early stopping: {self.metric} has not improved for {self.bad_evaluations} "
                                      f"evaluations (best {self.best:.4g} at iteration {self.best_iter})")

    def after_step(self) -> None:
        latest = self.trainer.storage.latest().get(self.metric)  # (value, iteration) of a hook's scalar
        if latest is not None and latest[1] > self.observed_iter:
            self.observed_iter = latest[1]
            self.observe(*latest)

    def after_eval(self, results: dict) -> None:
        if not results:  # not the main process: rank 0 decides, the trainer tells the others
            return
        flat = flat_metrics(results)
        if self.metric in flat:
            self.observe(flat[self.metric])
        elif self.metric not in self.trainer.storage.latest():
            raise KeyError(f"EarlyStopping: the evaluation has no {self.metric!r} and no hook put it; the evaluation "
                           f"has {sorted(flat)}")

    def state_dict(self) -> dict:
        return {"best": self.best, "best_iter": self.best_iter, "bad_evaluations": self.bad_evaluations}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_iter, self.bad_evaluations = state["best"], state["best_iter"], state["bad_evaluations"]


class ValidationLoss(HookBase):
    """The training losses on ``dataset`` every ``period`` iterations (and after the last), at the test size and
    without flips, put as ``validation_loss`` (their sum) and ``validation/<term>``: in metrics.json, TensorBoard and
    for :class:`EarlyStopping` (``metric="validation_loss", mode="min"``). Each process scores its share of the
    images; BatchNorm statistics and the training RNG are left as they were."""

    def __init__(self, dataset: str, period: int, max_images: int | None = None):
        self.dataset, self.period, self.max_images = dataset, period, max_images

    def after_step(self) -> None:
        iteration = self.trainer.iter
        if (iteration + 1) % self.period and iteration != self.trainer.max_iter - 1:
            return
        losses = self.compute()
        self.trainer.storage.put_scalars(validation_loss=sum(losses.values()),
                                         **{f"validation/{k}": v for k, v in losses.items()})
        if comm.is_main_process():
            logger.info("Validation loss on %s at iteration %d: %.4g (%s)", self.dataset, iteration,
                        sum(losses.values()), ", ".join(f"{k} {v:.4g}" for k, v in losses.items()))

    def mapper(self) -> DatasetMapper:
        cfg = self.trainer.cfg.clone()
        cfg.defrost()
        cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (cfg.INPUT.MIN_SIZE_TEST,), cfg.INPUT.MAX_SIZE_TEST
        cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING, cfg.INPUT.HFLIP_TRAIN = "choice", False
        return DatasetMapper.from_config(cfg, is_train=True)

    @torch.no_grad()
    def compute(self) -> dict[str, float]:
        """The mean over the images of each loss term, every image scored alone (all processes together: the same
        value whatever the number of processes). The images are shared out unevenly between processes, so the loss
        makes no collective (:func:`comm.process_local_losses`); the sums meet in one gather at the end."""
        model = self.trainer.model
        dicts = [d for d in DatasetCatalog.get(self.dataset) if d.get("annotations")][:self.max_images]
        mapper = self.mapper()
        comm.broadcast_buffers(model)  # each process's share scored with the BatchNorm statistics that are saved
        norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training]
        totals: dict[str, float] = {}
        with torch.random.fork_rng(devices=[]), comm.process_local_losses():
            for norm in norms:
                norm.eval()
            try:
                for index in range(comm.get_rank(), len(dicts), comm.get_world_size()):
                    torch.manual_seed(index)  # proposal sampling: the same draw for this image at every evaluation
                    losses = model([mapper(dicts[index], np.random.default_rng([0, index]))])
                    values = torch.stack([v.detach().double() for v in losses.values()]).tolist()  # one sync
                    for name, value in zip(losses, values):
                        totals[name] = totals.get(name, 0.0) + value
            finally:
                for norm in norms:
                    norm.train()
        summed: dict[str, float] = {}
        for share in comm.all_gather(totals):
            for name, value in share.items():
                summed[name] = summed.get(name, 0.0) + value
        return {name: value / max(len(dicts), 1) for name, value in sorted(summed.items())}


# Ultralytics' callback events -> the hook method that runs them.
CALLBACK_EVENTS = {"on_pretrain_routine_start": "before_train", "on_train_start": "before_train",
                   "on_train_batch_start": "before_step", "on_before_optimizer_step": "after_backward",
                   "on_train_batch_end": "after_step", "on_fit_epoch_end": "after_eval",
                   "on_model_save": "after_save", "on_train_end": "after_train"}


class Callbacks(HookBase):
    """Ultralytics-style callbacks: ``add(event, fn)``; ``fn(trainer)`` runs at the event (see
    :data:`CALLBACK_EVENTS`; there is no epoch here, so ``on_fit_epoch_end`` runs after each evaluation)."""

    def __init__(self, callbacks: dict[str, list[Callable]] | None = None):
        self.callbacks: dict[str, list[Callable]] = {event: [] for event in CALLBACK_EVENTS}
        for event, functions in (callbacks or {}).items():
            for function in functions:
                self.add(event, function)

    def add(self, event: str, function: Callable) -> None:
        if event not in CALLBACK_EVENTS:
            raise ValueError(f"unknown callback event {event!r}; known: {', '.join(CALLBACK_EVENTS)}")
        self.callbacks[event].append(function)

    def run(self, method: str) -> None:
        for event, hook_method in CALLBACK_EVENTS.items():
            if hook_method == method:
                for function in self.callbacks[event]:
                    function(self.trainer)

    def before_train(self) -> None:
        self.run("before_train")

    def before_step(self) -> None:
        self.run("before_step")

    def after_backward(self) -> None:
        self.run("after_backward")

    def after_step(self) -> None:
        self.run("after_step")

    def after_eval(self, results: dict) -> None:
        self.run("after_eval")

    def after_save(self) -> None:
        self.run("after_save")

    def after_train(self) -> None:
        self.run("after_train")
