"""The training loop: a step function and the periodic work around it, which a reader can hold in their head.

The initial weights follow from the seed, and every iteration's randomness (data order, augmentation, proposal
sampling) from (seed, iteration): a run with SEED >= 0 is repeatable, and one resumed from a checkpoint produces the
same losses as one that never stopped. A stop signal (``preemption.py``) ends the run at an iteration boundary with
a resumable checkpoint of that iteration.
"""

from __future__ import annotations

import logging
import math
import os
import random
import signal
import time
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from adet.checkpoint import DetectionCheckpointer, resume_checkpoint
from adet.config import CfgNode
from adet.data import MetadataCatalog, build_detection_train_loader
from adet.data.build import check_num_classes
from adet.errors import Preempted, TrainingDivergedError
from adet.modeling import build_model
from adet.modeling.embedmask import EmbedMask
from adet.solver import WarmupLRScheduler, build_lr_scheduler, build_optimizer, clip_gradients, scale_for_world_size
from adet.utils import comm
from adet.utils.plots import plot_training_curves

from . import preemption
from .evaluate import evaluate_datasets
from .metrics import MetricsWriter

logger = logging.getLogger(__name__)


def seed_rng(seed: int, iteration: int | None = None) -> None:
    """The one place torch's RNG is seeded: from the run's seed before the model is built (``iteration`` None:
    the initial weights), and from (seed, iteration, rank) before each step (proposal sampling), so that a resumed
    run draws what an uninterrupted one would."""
    if iteration is None:
        torch.manual_seed(seed)
    else:
        torch.manual_seed((seed * 1000003 + iteration * 1009 + comm.get_rank()) % (2**63))


def shared_seed(cfg_seed: int) -> int:
    """cfg.SEED, or (when negative) a random seed drawn on rank 0 and shared with every process."""
    if cfg_seed >= 0:
        return cfg_seed
    seed = torch.tensor([random.SystemRandom().randrange(2**31)])
    if comm.get_world_size() > 1:
        dist.broadcast(seed, src=0)
    return int(seed.item())


def configure_determinism(cfg) -> None:
    """DETERMINISTIC: torch's deterministic algorithms (warning for an op that has none), deterministic cuDNN
    without autotuning, and a fixed cuBLAS workspace (read when cuBLAS starts, so set before any CUDA work)."""
    if not cfg.DETERMINISTIC:
        return
    if cfg.CUDNN_BENCHMARK:
        logger.warning("CUDNN_BENCHMARK True is overridden by DETERMINISTIC True")
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def check_finite(loss_dict: dict[str, torch.Tensor], iteration: int) -> None:
    values = torch.stack([v.detach().float() for v in loss_dict.values()])
    if bool(torch.isfinite(values).all()):  # one device sync per iteration, not one per term
        return
    terms = ", ".join(f"{k}={v}" for k, v in zip(loss_dict, values.tolist()) if not math.isfinite(v))
    raise TrainingDivergedError(f"training diverged at iteration {iteration}: {terms}; lower SOLVER.BASE_LR or "
                                "enable SOLVER.CLIP_GRADIENTS, then --resume from the last checkpoint")


def reduce_for_logging(loss_dict: dict[str, torch.Tensor]) -> dict[str, float]:
    """The mean of each loss over processes (what the log and metrics.json show)."""
    names = sorted(loss_dict)
    values = torch.stack([loss_dict[k].detach().float() for k in names])
    if comm.get_world_size() > 1:
        dist.all_reduce(values)
        values /= comm.get_world_size()
    return dict(zip(names, values.tolist()))


def dataset_classes(cfg) -> tuple[list[str] | None, list[int] | None]:
    """Class names and dataset category ids (in contiguous order) of DATASETS.TRAIN, saved in checkpoints."""
    if not cfg.DATASETS.TRAIN:
        return None, None
    check_num_classes(cfg)
    metadata = MetadataCatalog.get(cfg.DATASETS.TRAIN[0])
    names = metadata.get("thing_classes")
    id_map = metadata.get("thing_dataset_id_to_contiguous_id")
    ids = [k for k, _ in sorted(id_map.items(), key=lambda kv: kv[1])] if id_map else None
    return names, ids


@dataclass
class TrainingState:
    """Everything the loop needs; ``model`` is the bare model, ``train_model`` its DDP wrapper (or itself)."""

    cfg: CfgNode
    model: EmbedMask
    train_model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: WarmupLRScheduler
    scaler: torch.amp.GradScaler  # disabled unless SOLVER.AMP on a GPU: then scale/step/update pass through
    checkpointer: DetectionCheckpointer
    loader: torch.utils.data.DataLoader
    start_iter: int
    seed: int
    # The checkpoint resumed from was written when a stop signal cut the evaluation of its iteration short: the
    # resumed run evaluates that iteration first.
    pending_evaluation: bool = False


def remove_stale_temporaries(output_dir: str) -> None:
    """Partial files of a save that was killed midway (never a .pth: saves are atomic renames)."""
    if comm.is_main_process() and os.path.isdir(output_dir):
        for name in os.listdir(output_dir):
            if name.startswith(".tmp-"):
                os.remove(os.path.join(output_dir, name))


def build_training(cfg, resume: bool = False) -> TrainingState:
    """Model, optimizer, schedule and data, restored from OUTPUT_DIR's last checkpoint when resuming (model,
    optimizer, schedule, iteration and data order) or initialised from MODEL.WEIGHTS."""
    world_size = comm.get_world_size()
    cfg = scale_for_world_size(cfg, world_size)
    configure_determinism(cfg)
    seed = shared_seed(cfg.SEED)
    seed_rng(seed)  # the initial weights too are a function of the seed, whoever calls this
    model = build_model(cfg)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer)
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.SOLVER.AMP.ENABLED and model.device.type == "cuda")
    checkpointables = {"optimizer": optimizer, "scheduler": scheduler}
    if scaler.is_enabled():
        checkpointables["scaler"] = scaler
    checkpointer = DetectionCheckpointer(model, cfg.OUTPUT_DIR, save_to_disk=comm.is_main_process(),
                                         **checkpointables)
    remove_stale_temporaries(cfg.OUTPUT_DIR)
    resume_from = resume_checkpoint(cfg.OUTPUT_DIR) if resume else None  # an error if what was saved is unusable
    if resume_from is not None:
        extra = checkpointer.load(resume_from)
        start_iter, seed = int(extra["iteration"]) + 1, int(extra["seed"])
        pending_evaluation = bool(extra.get("evaluation_pending", False))
        logger.info("Resuming from %s at iteration %d", resume_from, start_iter)
    else:
        checkpointer.load(cfg.MODEL.WEIGHTS, checkpointables=[], strict=False)
        start_iter, pending_evaluation = 0, False
    loader = build_detection_train_loader(cfg, seed, start_iter)
    model.class_names, model.category_ids = dataset_classes(cfg)
    train_model = model
    if world_size > 1:
        device_ids = [model.device.index] if model.device.type == "cuda" else None
        # Per-process BatchNorm statistics, as the official training (broadcast_buffers=False).
        with warnings.catch_warnings():  # newer torch renames the option; its meaning here is unchanged
            warnings.simplefilter("ignore", FutureWarning)
            train_model = DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)
    return TrainingState(cfg, model, train_model, optimizer, scheduler, scaler, checkpointer, loader, start_iter,
                         seed, pending_evaluation)


def train_step(state: TrainingState, data: list[dict], iteration: int) -> tuple[dict[str, torch.Tensor], float]:
    """One optimisation step on one batch; returns the losses and the learning rate it used."""
    cfg, model = state.cfg, state.model
    seed_rng(state.seed, iteration)
    # AMP: float16 on GPUs (with the gradient scaler), bfloat16 on the CPU.
    dtype = torch.float16 if model.device.type == "cuda" else torch.bfloat16
    with torch.autocast(model.device.type, dtype=dtype, enabled=cfg.SOLVER.AMP.ENABLED):
        loss_dict = state.train_model(data)
    check_finite(loss_dict, iteration)
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(sum(loss_dict.values())).backward()
    state.scaler.unscale_(state.optimizer)
    clip_gradients(cfg, model)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    lr = state.optimizer.param_groups[0]["lr"]
    state.scheduler.step()
    return loss_dict, lr


def headline_metric(results: dict) -> tuple[str, float] | None:
    """What model_best.pth is chosen by: segm AP of the first test dataset (bbox AP if it has no masks)."""
    if not results:
        return None
    tasks = next(iter(results.values()))
    task = "segm" if "segm" in tasks else "bbox"
    value = tasks.get(task, {}).get("AP")
    return (f"{task}/AP", value) if value is not None and value == value else None


def read_best(output_dir: str) -> float:
    """The metric of an earlier run's model_best.pth in ``output_dir`` (so a resumed run keeps the real best)."""
    path = os.path.join(output_dir, "model_best.pth")
    if not os.path.isfile(path):
        return float("-inf")
    try:
        return float(torch.load(path, map_location="cpu", weights_only=True).get("best_metric", {}).get("value"))
    except Exception:  # noqa: BLE001 - an unreadable old file is simply replaced by the next best
        return float("-inf")


def save_if_best(state: TrainingState, results: dict, iteration: int, extra: dict, best: float) -> float:
    """Write model_best.pth (weights only) when this evaluation beats every earlier one; returns the best so far."""
    metric = headline_metric(results)
    if not comm.is_main_process() or metric is None or metric[1] <= best:
        return best
    name, value = metric
    state.checkpointer.save("model_best", resumable=False, **extra,
                            best_metric={"name": name, "value": value, "iteration": iteration})
    logger.info("New best %s %.2f at iteration %d: saved model_best.pth", name, value, iteration)
    return value


def periodic_work(state: TrainingState, iteration: int, writer: MetricsWriter, best: float,
                  config_text: str) -> tuple[dict, float]:
    """Checkpoints (every SOLVER.CHECKPOINT_PERIOD iterations and at the last), model_final.pth, and evaluations
    (every TEST.EVAL_PERIOD and at the last) with model_best.pth. Returns (results: {} when there was no evaluation,
    None when a stop signal cut it short; the best metric so far)."""
    cfg = state.cfg
    last = iteration == cfg.SOLVER.MAX_ITER - 1
    extra = checkpoint_extra(state, iteration, config_text)
    period = cfg.SOLVER.CHECKPOINT_PERIOD
    if period > 0 and ((iteration + 1) % period == 0 or last):
        state.checkpointer.save(f"model_{iteration:07d}", **extra)  # resumable
    if last:
        state.checkpointer.save("model_final", resumable=False, **extra)
    eval_period = cfg.TEST.EVAL_PERIOD
    if not cfg.DATASETS.TEST or not (last or (eval_period > 0 and (iteration + 1) % eval_period == 0)):
        return {}, best
    return evaluate(state, iteration, writer, best, extra)


def evaluate(state: TrainingState, iteration: int, writer: MetricsWriter, best: float, extra: dict
             ) -> tuple[dict | None, float]:
    """Evaluate the weights of ``iteration`` and keep model_best.pth; (None, best) when a stop signal cut it short."""
    results = evaluate_datasets(state.cfg, state.model, should_stop=preemption.stop_requested)
    comm.wait_for_evaluation()  # rank 0 may score for long: the others wait here, not in a training collective
    state.train_model.train()
    if results is None:
        return None, best
    writer.write_evaluation(iteration, results)
    return results, save_if_best(state, results, iteration, extra, best)


def checkpoint_extra(state: TrainingState, iteration: int, config_text: str) -> dict:
    """What a checkpoint of ``iteration`` holds besides the model and the optimizer state."""
    return {"iteration": iteration, "seed": state.seed, "config": config_text}


def stop_on_signal(state: TrainingState, iteration: int, signum: int, config_text: str,
                   evaluation_pending: bool = False) -> None:
    """Save a resumable checkpoint of ``iteration`` (unless the periodic one just did; marked when its evaluation
    is still to be done), requeue the SLURM job when asked, and raise :class:`Preempted` on every process once rank
    0 has saved."""
    name = f"model_{iteration:07d}"
    path = os.path.join(state.cfg.OUTPUT_DIR, f"{name}.pth")
    if evaluation_pending or state.checkpointer.get_checkpoint_file() != path:
        start = time.perf_counter()
        extra = checkpoint_extra(state, iteration, config_text)
        state.checkpointer.save(name, **extra, **({"evaluation_pending": True} if evaluation_pending else {}))
        if comm.is_main_process():
            logger.info("Stop checkpoint written in %.2f s", time.perf_counter() - start)
    requeued = ""
    if comm.is_main_process() and preemption.requeue_requested():
        requeued = "; " + preemption.requeue_slurm_job()
    comm.wait_for_evaluation()  # the others exit only once the checkpoint is complete
    message = (f"stopped by {signal.Signals(signum).name} after iteration {iteration}: resumable checkpoint {path}"
               f"{requeued}; continue with --resume (a torchrun or SLURM restart resumes by itself)")
    logger.info("%s", message)
    raise Preempted(message, signum)


def evaluate_pending(state: TrainingState, writer: MetricsWriter, best: float, config_text: str
                     ) -> tuple[dict, float]:
    """The evaluation of the iteration resumed from, which a stop signal had interrupted."""
    iteration = state.start_iter - 1
    logger.info("Evaluating iteration %d first: a stop signal interrupted its evaluation", iteration)
    evaluation, best = evaluate(state, iteration, writer, best, checkpoint_extra(state, iteration, config_text))
    stop_if_asked(state, iteration, config_text, evaluation is None)
    return evaluation or {}, best


def stop_if_asked(state: TrainingState, iteration: int, config_text: str, evaluation_interrupted: bool) -> None:
    """At an iteration boundary: when any process received a stop signal (the same answer on every process),
    stop with a checkpoint of ``iteration``. After the last iteration there is nothing to save unless its
    evaluation was cut short."""
    signum = preemption.agree_to_stop()
    if signum and (iteration < state.cfg.SOLVER.MAX_ITER - 1 or evaluation_interrupted):
        stop_on_signal(state, iteration, signum, config_text, evaluation_pending=evaluation_interrupted)


def run_training(state: TrainingState, log_period: int = 20) -> dict:
    """Iterate to SOLVER.MAX_ITER with checkpoints and evaluations; returns the last evaluation's results."""
    cfg, max_iter = state.cfg, state.cfg.SOLVER.MAX_ITER
    writer = MetricsWriter(cfg.OUTPUT_DIR if comm.is_main_process() else None, max_iter, state.start_iter)
    logger.info("Training %d iterations from %d (seed %d, %d process(es), %d images per step)", max_iter,
                state.start_iter, state.seed, comm.get_world_size(), cfg.SOLVER.IMS_PER_BATCH)
    results, best = {}, read_best(cfg.OUTPUT_DIR)
    config_text = cfg.dump()  # saved in every checkpoint; dumping takes ~20 ms, too long to repeat per iteration
    data_iter = None
    try:
        if state.pending_evaluation:
            results, best = evaluate_pending(state, writer, best, config_text)
        if state.start_iter >= max_iter:
            logger.info("Training already finished (iteration %d of SOLVER.MAX_ITER %d); nothing to do. Raise "
                        "SOLVER.MAX_ITER to train further.", state.start_iter, max_iter)
            return results
        state.train_model.train()
        data_iter = iter(state.loader)
        with writer.progress():
            for iteration in range(state.start_iter, max_iter):
                tic = time.perf_counter()
                data = next(data_iter)
                data_time = time.perf_counter() - tic
                loss_dict, lr = train_step(state, data, iteration)
                if (iteration + 1) % log_period == 0 or iteration in (state.start_iter, max_iter - 1):
                    writer.write_iteration(iteration, reduce_for_logging(loss_dict), lr, time.perf_counter() - tic,
                                           data_time)
                else:
                    writer.tick(iteration, time.perf_counter() - tic)
                evaluation, best = periodic_work(state, iteration, writer, best, config_text)
                results = evaluation or results
                stop_if_asked(state, iteration, config_text, evaluation is None)
    finally:
        # The loader's workers end now, however the loop ended: an error raised in next() leaves the iterator in
        # its traceback, which could keep them (and their memory) for the rest of a Python session.
        shutdown_workers = getattr(data_iter, "_shutdown_workers", None)  # torch's own iterator cleanup
        if shutdown_workers is not None:
            shutdown_workers()
        del data_iter
        writer.close()
    if comm.is_main_process():
        written = plot_training_curves(os.path.join(cfg.OUTPUT_DIR, "metrics.json"), os.path.join(cfg.OUTPUT_DIR,
                                                                                                 "plots"))
        if written:
            logger.info("Training plots: %s", ", ".join(written))
    comm.synchronize()
    return results


def train(cfg, resume: bool = False, log_period: int = 20) -> dict:
    """Train ``cfg``'s model on DATASETS.TRAIN, checkpointing into OUTPUT_DIR; returns the final evaluation."""
    with preemption.stop_signals_handled():
        return run_training(build_training(cfg, resume), log_period)
