"""``DefaultTrainer``: detectron2's trainer, with the training loop in one readable method (:meth:`train_loop`).

    trainer = DefaultTrainer(cfg)
    trainer.register_hooks([EarlyStopping("segm/AP", patience=3)])   # adet.engine.training.hooks
    trainer.resume_or_load(resume=False)
    results = trainer.train()

Subclass and override ``build_model``, ``build_optimizer``, ``build_lr_scheduler``, ``build_train_loader``,
``build_test_loader``, ``build_evaluator`` or ``build_hooks`` (AdelaiDet's ``class Trainer(DefaultTrainer)``).

The initial weights follow from the seed, and every iteration's randomness (data order, augmentation, proposal
sampling) from (seed, iteration): a run with SEED >= 0 is repeatable, and one resumed from a checkpoint produces the
same losses as one that never stopped; hooks' ``state_dict`` is saved in every checkpoint and restored too. A stop
signal (``preemption.py``) ends the run at an iteration boundary with a resumable checkpoint of that iteration.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
import warnings
import weakref

import torch
from torch.nn.parallel import DistributedDataParallel

from adet.checkpoint import DetectionCheckpointer, resume_checkpoint
from adet.checkpoint.files import remove_stale_temporaries
from adet.config import CfgNode
from adet.data import build_detection_test_loader, build_detection_train_loader
from adet.data.build import dataset_classes, position_train_loader
from adet.engine.distributed import preemption
from adet.engine.distributed.launch import restart_count
from adet.engine.distributed.run_claim import RunClaim, archive_earlier_run, claimed_by_this_run
from adet.engine.evaluate import evaluate_datasets, inference_folder, single_dataset_results
from adet.engine.training.best_model import read_best, save_if_best
from adet.engine.training.hooks import HookBase
from adet.engine.training.metrics import MetricsWriter
from adet.engine.training.reproducibility import configure_determinism, seed_rng, shared_seed
from adet.errors import Preempted, TrainingDivergedError
from adet.evaluation import COCOEvaluator
from adet.modeling import build_model
from adet.solver import build_lr_scheduler, build_optimizer, clip_gradients, scale_for_world_size
from adet.utils import comm, events
from adet.utils.logger import setup_logger
from adet.utils.plots import plot_training_curves

logger = logging.getLogger(__name__)


def check_finite(loss_dict: dict[str, torch.Tensor], iteration: int) -> dict[str, float]:
    """The losses as floats (one device sync per iteration, not one per term); an error naming the bad terms."""
    values = dict(zip(loss_dict, torch.stack([v.detach().float() for v in loss_dict.values()]).tolist()))
    if all(math.isfinite(v) for v in values.values()):
        return values
    terms = ", ".join(f"{k}={v}" for k, v in values.items() if not math.isfinite(v))
    raise TrainingDivergedError(f"training diverged at iteration {iteration}: {terms}; lower SOLVER.BASE_LR or "
                                "enable SOLVER.CLIP_GRADIENTS, then --resume from the last checkpoint")


def reduce_for_logging(loss_dict: dict[str, torch.Tensor]) -> dict[str, float]:
    """The mean of each loss over processes (what the log and metrics.json show)."""
    names = sorted(loss_dict)
    values = comm.all_reduce(torch.stack([loss_dict[k].detach().float() for k in names])) / comm.get_world_size()
    return dict(zip(names, values.tolist()))


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def amp_dtype(precision: str, device_type: str) -> torch.dtype:
    """SOLVER.AMP.PRECISION on ``device_type``: "auto" is bfloat16 on the CPU and on GPUs that compute it natively
    (no loss scaling needed, float32's range), float16 on older GPUs."""
    if precision == "float16":
        return torch.float16
    if precision == "bfloat16" or device_type != "cuda":
        return torch.bfloat16
    try:
        native = torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch < 2.4 has no emulation and no argument
        native = torch.cuda.is_bf16_supported()
    return torch.bfloat16 if native else torch.float16


def ddp_placement(device: torch.device) -> dict:
    """DDP's device and group options for a model on ``device``: a CUDA model gets its one device (PyTorch's rule for
    single-device modules) and the default group (NCCL); a CPU model no device ids and the CPU gloo group, as NCCL
    would refuse its gradients."""
    on_gpu = device.type == "cuda"
    index = device.index if device.index is not None else (torch.cuda.current_device() if on_gpu else None)
    return {"device_ids": [index] if on_gpu else None, "output_device": index if on_gpu else None,
            "process_group": comm.group_for(device)}


class DefaultTrainer:
    """Attributes hooks use: ``cfg``, ``model`` (the bare model; ``train_model`` is its DDP wrapper), ``optimizer``,
    ``scheduler``, ``checkpointer``, ``data_loader`` (built when training starts), ``storage``, ``iter``,
    ``start_iter``, ``max_iter``, ``seed``."""

    def __init__(self, cfg: CfgNode):
        cfg = scale_for_world_size(cfg, comm.get_world_size())
        # The run's folder is claimed before anything touches it (a second run there is refused in one line), by
        # the main process, unless the command that started this process claimed it; released when training ends.
        self._claim = None
        if comm.is_main_process() and cfg.OUTPUT_DIR and not claimed_by_this_run(cfg.OUTPUT_DIR):
            self._claim = RunClaim(cfg.OUTPUT_DIR).acquire()
            weakref.finalize(self, self._claim.release)  # a trainer dropped without training
        if not logging.getLogger("adet").handlers and not logging.getLogger().handlers:
            # detectron2 scripts call setup_logger(); others need not. A library must not cut an application's
            # handlers off its records: they propagate to the root logger.
            setup_logger(cfg.OUTPUT_DIR, comm.get_rank(), propagate=True)
        configure_determinism(cfg)
        self.cfg = cfg
        self.seed = shared_seed(cfg.SEED)
        seed_rng(self.seed)  # the initial weights too are a function of the seed
        self.model = self.build_model(cfg)
        self.optimizer = self.build_optimizer(cfg, self.model)
        self.scheduler = self.build_lr_scheduler(cfg, self.optimizer)
        # Autocast's type, chosen once; the gradient scaler only for float16 on a GPU (bfloat16 has float32's range),
        # else its scale/step/update pass through.
        device_type = _device(self.model).type
        self.amp_dtype = amp_dtype(cfg.SOLVER.AMP.PRECISION, device_type)
        self.scaler = torch.amp.GradScaler("cuda", enabled=cfg.SOLVER.AMP.ENABLED and device_type == "cuda" and
                                           self.amp_dtype == torch.float16)
        checkpointables = {"optimizer": self.optimizer, "scheduler": self.scheduler}
        if self.scaler.is_enabled():
            checkpointables["scaler"] = self.scaler
        self.checkpointer = DetectionCheckpointer(self.model, cfg.OUTPUT_DIR, save_to_disk=comm.is_main_process(),
                                                  **checkpointables)
        self.start_iter = self.iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.storage = events.EventStorage()
        self.train_model: torch.nn.Module = self.model
        self.data_loader = None
        self.last_results: dict = {}  # {dataset: {task: ...}} of the last evaluation
        self._hooks: list[HookBase] = []
        self._hook_states: dict = {}  # from the checkpoint resumed from, for hooks registered later too
        self._stop_reason: str | None = None
        self._pending_evaluation = False
        self._loaded = False
        self.register_hooks(self.build_hooks())

    # ---- what a subclass overrides ---------------------------------------------------------------------------------
    @classmethod
    def build_model(cls, cfg) -> torch.nn.Module:
        return build_model(cfg)

    @classmethod
    def build_optimizer(cls, cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer: torch.optim.Optimizer):
        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name: str):
        return build_detection_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name: str, output_folder: str | None = None):
        return COCOEvaluator(dataset_name, output_dir=output_folder or inference_folder(cfg, dataset_name))

    def build_hooks(self) -> list[HookBase]:
        """Hooks every run of this trainer has (none: checkpoints, evaluation, metrics and stop signals are the
        loop's own). A subclass returns ``super().build_hooks() + [...]``."""
        return []

    @classmethod
    def test(cls, cfg, model: torch.nn.Module, evaluators=None) -> dict:
        """Evaluate ``model`` on DATASETS.TEST with ``evaluators`` (one, or one per dataset) or
        :meth:`build_evaluator`'s; detectron2's result layout (:func:`single_dataset_results`)."""
        if evaluators is not None and not isinstance(evaluators, (list, tuple)):
            evaluators = [evaluators]
        results = evaluate_datasets(cfg, model, build_test_loader=cls.build_test_loader,
                                    build_evaluator=cls.build_evaluator, evaluators=evaluators)
        return single_dataset_results(results)

    # ---- hooks -----------------------------------------------------------------------------------------------------
    def register_hooks(self, hooks: list[HookBase | None]) -> None:
        for hook in hooks:
            if hook is not None:
                hook.trainer = self
                self._hooks.append(hook)

    def _call(self, method: str, *args) -> None:
        for hook in self._hooks:
            getattr(hook, method)(*args)

    def _hook_keys(self) -> list[str]:
        """A stable name per hook for its saved state: the class name, numbered when a class is registered twice."""
        names = [type(hook).__qualname__ for hook in self._hooks]
        return [name if names.count(name) == 1 else f"{name}.{names[:i].count(name)}" for i, name in enumerate(names)]

    def hooks_state_dict(self) -> dict:
        states = {key: hook.state_dict() for key, hook in zip(self._hook_keys(), self._hooks)}
        return {key: state for key, state in states.items() if state}

    def _restore_hook_states(self) -> None:
        for key, hook in zip(self._hook_keys(), self._hooks):
            if key in self._hook_states:
                hook.load_state_dict(self._hook_states[key])
            elif self._hook_states and hook.state_dict():
                logger.warning("The checkpoint resumed from has no state for hook %s: it starts afresh", key)

    def request_stop(self, reason: str) -> None:
        """End the run after this iteration, with model_final.pth and a resumable checkpoint (early stopping)."""
        logger.info("%s: stopping after iteration %d", reason, self.iter)
        self._stop_reason = reason

    # ---- loading ---------------------------------------------------------------------------------------------------
    def resume_or_load(self, resume: bool = True) -> None:
        """With ``resume`` and a checkpoint in OUTPUT_DIR, continue from it (model, optimizer, schedule, iteration,
        data order, hooks); otherwise initialise from MODEL.WEIGHTS (leniently: other classes are fine-tuning). A job
        restarted by torchrun or SLURM always resumes; a fresh run moves an earlier run's metrics.json and
        last_checkpoint aside (it neither appends to them nor can be resumed into the old run)."""
        if restart_count() and not resume:
            logger.info("Restart %d of this job: resuming from the last checkpoint in %s", restart_count(),
                        self.cfg.OUTPUT_DIR)
            resume = True
        remove_stale_temporaries(self.cfg.OUTPUT_DIR)
        if not resume and comm.is_main_process() and self.cfg.OUTPUT_DIR:
            moved = archive_earlier_run(self.cfg.OUTPUT_DIR)
            if moved:
                logger.warning("%s holds an earlier training run; this one starts afresh (resume to continue that "
                               "one instead): its %s moved aside, checkpoints of the same names are replaced",
                               self.cfg.OUTPUT_DIR, " and ".join(moved))
        resume_from = resume_checkpoint(self.cfg.OUTPUT_DIR) if resume else None  # an error if it is unusable
        if resume_from is not None:
            extra = self.checkpointer.load(resume_from)
            self.start_iter, self.seed = int(extra["iteration"]) + 1, int(extra["seed"])
            # Written when a stop signal cut its evaluation short: the resumed run evaluates that iteration first.
            self._pending_evaluation = bool(extra.get("evaluation_pending", False))
            self._hook_states = extra.get("hooks", {})
            logger.info("Resuming from %s at iteration %d", resume_from, self.start_iter)
        else:
            self.checkpointer.load(self.cfg.MODEL.WEIGHTS, checkpointables=[], strict=False)
        self.iter = self.start_iter
        self._loaded = True

    # ---- training --------------------------------------------------------------------------------------------------
    def train(self, log_period: int = 20) -> dict:
        """Train to SOLVER.MAX_ITER; returns the last evaluation (:meth:`test`'s layout)."""
        if not self._loaded:
            self.resume_or_load(resume=False)
        try:
            with preemption.stop_signals_handled(), events.storage_in_use(self.storage):
                self.train_loop(log_period)
        finally:
            if self._claim is not None:
                self._claim.release()
        return single_dataset_results(self.last_results)

    def _prepare(self) -> None:
        """The loader at this run's position, class names for the checkpoints, and the DDP wrapper."""
        self.data_loader = self.build_train_loader(self.cfg)
        if not position_train_loader(self.data_loader, self.seed, self.start_iter) and self.start_iter:
            logger.warning("build_train_loader returned a loader not made by build_detection_train_loader: a resumed "
                           "run sees other batches than an uninterrupted one would")
        self.model.class_names, self.model.category_ids = dataset_classes(self.cfg)
        if comm.get_world_size() > 1 and self.train_model is self.model:
            # Per-process BatchNorm statistics, as the official training (broadcast_buffers=False).
            with warnings.catch_warnings():  # newer torch renames the option; its meaning here is unchanged
                warnings.simplefilter("ignore", FutureWarning)
                self.train_model = DistributedDataParallel(self.model, broadcast_buffers=False,
                                                           **ddp_placement(_device(self.model)))

    def train_loop(self, log_period: int = 20) -> None:
        """Iterate to SOLVER.MAX_ITER with checkpoints and evaluations; leaves the last results in last_results."""
        self._prepare()
        self._restore_hook_states()
        cfg, max_iter = self.cfg, self.max_iter
        self.writer = MetricsWriter(cfg.OUTPUT_DIR if comm.is_main_process() else None, max_iter, self.start_iter)
        logger.info("Training %d iterations from %d (seed %d, %d process(es), %d images per step)", max_iter,
                    self.start_iter, self.seed, comm.get_world_size(), cfg.SOLVER.IMS_PER_BATCH)
        self.best = read_best(cfg.OUTPUT_DIR)
        self.config_text = cfg.dump()  # saved in every checkpoint; dumping takes ~20 ms, too long per iteration
        data_iter = None
        try:
            self._call("before_train")
            if self._pending_evaluation:
                self.evaluate_pending()
            if self.start_iter >= max_iter:
                logger.info("Training already finished (iteration %d of SOLVER.MAX_ITER %d); nothing to do. Raise "
                            "SOLVER.MAX_ITER to train further.", self.start_iter, max_iter)
                return
            self.train_model.train()
            data_iter = iter(self.data_loader)
            with self.writer.progress():
                for iteration in range(self.start_iter, max_iter):
                    self.iter = self.storage.iter = iteration
                    self._call("before_step")
                    tic = time.perf_counter()
                    data = next(data_iter)
                    data_time = time.perf_counter() - tic
                    loss_dict, losses, lr = self.run_step(data)
                    step_time = time.perf_counter() - tic
                    log_now = (self.iter + 1) % log_period == 0 or self.iter in (self.start_iter, max_iter - 1)
                    # Averaged over processes at every iteration, not only at log ones: hooks and trackers read the
                    # storage on periods of their own (one all-reduce of a few floats, next to DDP's gradients).
                    losses = reduce_for_logging(loss_dict)
                    self.storage.put_scalars(total_loss=sum(losses.values()), **losses, lr=lr)
                    self.storage.take_pending()  # the writer gets these from here, not as a hook's scalars
                    self._call("after_step")
                    self.write_metrics(losses, lr, step_time, data_time, log_now)
                    evaluation_interrupted = self.periodic_work()
                    if self.stop_if_asked(evaluation_interrupted):
                        break
        finally:
            # The loader's workers end now, however the loop ended: an error raised in next() leaves the iterator
            # in its traceback, which could keep them (and their memory) for the rest of a Python session.
            shutdown_workers = getattr(data_iter, "_shutdown_workers", None)  # torch's own iterator cleanup
            if shutdown_workers is not None:
                shutdown_workers()
            del data_iter
            self.writer.close()
            self._call("after_train")
        self.write_plots()

    def run_step(self, data: list[dict]) -> tuple[dict[str, torch.Tensor], dict[str, float], float]:
        """One optimisation step on one batch; returns the losses (tensors and floats) and the learning rate."""
        seed_rng(self.seed, self.iter)
        with torch.autocast(_device(self.model).type, dtype=self.amp_dtype, enabled=self.cfg.SOLVER.AMP.ENABLED):
            loss_dict = self.train_model(data)
        losses = check_finite(loss_dict, self.iter)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(sum(loss_dict.values())).backward()
        self._call("after_backward")
        self.scaler.unscale_(self.optimizer)
        clip_gradients(self.cfg, self.model)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        return loss_dict, losses, lr

    def write_metrics(self, losses: dict[str, float], lr: float, step_time: float, data_time: float,
                      log_now: bool) -> None:
        """The console line and metrics.json at log iterations (losses averaged over processes), and what hooks
        put in the storage since the last write."""
        hook_scalars = self.storage.take_pending()
        if log_now:
            self.writer.write_iteration(self.iter, losses, lr, step_time, data_time, hook_scalars)
        else:
            self.writer.tick(self.iter, step_time)
            self.writer.write_scalars(self.iter, hook_scalars)

    def checkpoint_extra(self) -> dict:
        """What a checkpoint of this iteration holds besides the model and the optimizer state."""
        return {"iteration": self.iter, "seed": self.seed, "config": self.config_text,
                "hooks": self.hooks_state_dict()}

    def periodic_work(self) -> bool:
        """Evaluations (every TEST.EVAL_PERIOD and at the last) with model_best.pth, then checkpoints (every
        SOLVER.CHECKPOINT_PERIOD iterations and at the last; after the evaluation, so that they hold what hooks
        made of it) and model_final.pth. Returns whether a stop signal cut the evaluation short."""
        cfg, iteration = self.cfg, self.iter
        last = iteration == self.max_iter - 1
        eval_period = cfg.TEST.EVAL_PERIOD
        if cfg.DATASETS.TEST and (last or (eval_period > 0 and (iteration + 1) % eval_period == 0)):
            if not self.evaluate():
                return True
        period = cfg.SOLVER.CHECKPOINT_PERIOD
        if period > 0 and ((iteration + 1) % period == 0 or last):
            self.save(f"model_{iteration:07d}")
        if last:
            self.save("model_final", resumable=False)
        return False

    def save(self, name: str, resumable: bool = True, **extra) -> None:
        self.checkpointer.save(name, resumable=resumable, **self.checkpoint_extra(), **extra)
        self._call("after_save")

    def evaluate(self) -> bool:
        """Evaluate the weights of this iteration, keep model_best.pth and run the hooks' ``after_eval``; False
        when a stop signal cut it short."""
        comm.broadcast_buffers(self.model)  # every process scores its share with the statistics that are saved
        results = evaluate_datasets(self.cfg, self.model, should_stop=preemption.stop_requested,
                                    build_test_loader=self.build_test_loader, build_evaluator=self.build_evaluator)
        comm.wait_for_evaluation()  # rank 0 may score for long: the others wait here, not in a training collective
        self.train_model.train()
        if results is None:
            return False
        self.last_results = results
        self.writer.write_evaluation(self.iter, results)
        self.best = save_if_best(self.checkpointer, results, self.iter, self.checkpoint_extra(), self.best)
        self._call("after_eval", single_dataset_results(results))
        self.writer.write_scalars(self.iter, self.storage.take_pending())
        return True

    def evaluate_pending(self) -> None:
        """The evaluation of the iteration resumed from, which a stop signal had interrupted."""
        self.iter = self.start_iter - 1
        logger.info("Evaluating iteration %d first: a stop signal interrupted its evaluation", self.iter)
        interrupted = not self.evaluate()
        self.stop_if_asked(interrupted)
        if not interrupted:  # its checkpoint, now without the mark and with what hooks made of the evaluation
            self.save(f"model_{self.iter:07d}")
            if self.iter == self.max_iter - 1:
                self.save("model_final", resumable=False)

    def stop_if_asked(self, evaluation_interrupted: bool) -> bool:
        """At an iteration boundary: when any process received a stop signal (the same answer on every process),
        stop with a checkpoint of this iteration (after the last there is nothing to save unless its evaluation was
        cut short). True when a hook asked to end the run: then it ends with model_final.pth and a checkpoint."""
        signum, hook_stop = preemption.agree_to_stop(self._stop_reason is not None)
        last = self.iter >= self.max_iter - 1
        if signum and (not last or evaluation_interrupted):
            self.stop_on_signal(signum, evaluation_pending=evaluation_interrupted)
        if hook_stop and not last:
            if self.checkpointer.get_checkpoint_file() != self._checkpoint_path():
                self.save(f"model_{self.iter:07d}")
            self.save("model_final", resumable=False)
            logger.info("Run ended after iteration %d: %s", self.iter, self._stop_reason or "a hook of another "
                        "process asked to stop")
            return True
        return False

    def _checkpoint_path(self) -> str:
        return os.path.join(self.cfg.OUTPUT_DIR, f"model_{self.iter:07d}.pth")

    def stop_on_signal(self, signum: int, evaluation_pending: bool = False) -> None:
        """Save a resumable checkpoint of this iteration (unless the periodic one just did; marked when its
        evaluation is still to be done), requeue the SLURM job when asked, and raise :class:`Preempted` on every
        process once rank 0 has saved."""
        path = self._checkpoint_path()
        if evaluation_pending or self.checkpointer.get_checkpoint_file() != path:
            start = time.perf_counter()
            self.save(f"model_{self.iter:07d}", **({"evaluation_pending": True} if evaluation_pending else {}))
            if comm.is_main_process():
                logger.info("Stop checkpoint written in %.2f s", time.perf_counter() - start)
        requeued = ""
        if comm.is_main_process() and preemption.requeue_requested():
            requeued = "; " + preemption.requeue_slurm_job()
        comm.wait_for_evaluation()  # the others exit only once the checkpoint is complete
        message = (f"stopped by {signal.Signals(signum).name} after iteration {self.iter}: resumable checkpoint "
                   f"{path}{requeued}; continue with --resume (a torchrun or SLURM restart resumes by itself)")
        logger.info("%s", message)
        raise Preempted(message, signum)

    def write_plots(self) -> None:
        if comm.is_main_process():
            written = plot_training_curves(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json"),
                                           os.path.join(self.cfg.OUTPUT_DIR, "plots"))
            if written:
                logger.info("Training plots: %s", ", ".join(written))
        comm.synchronize()


def train(cfg, resume: bool = False, log_period: int = 20) -> dict:
    """Train ``cfg``'s model on DATASETS.TRAIN, checkpointing into OUTPUT_DIR; returns the final evaluation as
    {dataset: {task: {metric: value}}}."""
    trainer = DefaultTrainer(cfg)
    trainer.resume_or_load(resume)
    trainer.train(log_period)
    return trainer.last_results
