"""Run a model over a data loader and feed an evaluator, with progress and an ETA."""

from __future__ import annotations

import logging
import sys
import time
from typing import Callable

import torch
from tqdm import tqdm

from adet.utils.comm import get_world_size, is_main_process

logger = logging.getLogger(__name__)


class DatasetEvaluator:
    """detectron2's evaluator interface: ``reset()``, then ``process(inputs, outputs)`` per batch, then
    ``evaluate()`` -> {task: {metric: value}} (on the main process; {} elsewhere)."""

    def reset(self) -> None:
        pass

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        pass

    def evaluate(self) -> dict | None:
        return {}


class DatasetEvaluators(DatasetEvaluator):
    """Several evaluators as one; their results are merged (a task reported twice is an error)."""

    def __init__(self, evaluators: list):
        self.evaluators = list(evaluators)

    def reset(self) -> None:
        for evaluator in self.evaluators:
            evaluator.reset()

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        for evaluator in self.evaluators:
            evaluator.process(inputs, outputs)

    def skip(self, inputs: list[dict]) -> None:
        for evaluator in self.evaluators:
            if hasattr(evaluator, "skip"):
                evaluator.skip(inputs)

    def evaluate(self) -> dict | None:
        merged: dict = {}
        for evaluator in self.evaluators:
            results = evaluator.evaluate()
            if results is None:
                return None
            for task, metrics in (results or {}).items():
                if task in merged:
                    raise KeyError(f"two evaluators both report {task!r}")
                merged[task] = metrics
        return merged


def inference_on_dataset(model: torch.nn.Module, data_loader, evaluator,
                         should_stop: Callable[[], bool] | None = None) -> dict | None:
    """Evaluate ``model`` (put in eval mode) on every batch of ``data_loader``; returns ``evaluator.evaluate()``,
    or None when ``should_stop()`` turned true on some process before the end (its results are dropped).

    Progress is a tqdm bar on a terminal and a log line every ~10 s otherwise (main process only).
    """
    total = len(data_loader)
    logger.info("Start inference on %d batches (%d processes)", total, get_world_size())
    evaluator.reset()
    show_bar = sys.stderr.isatty() and is_main_process()
    bar = None
    if show_bar:
        bar = tqdm(total=total, desc="inference", unit="img", dynamic_ncols=True)
    was_training = model.training
    model.eval()
    start = last_log = time.perf_counter()
    compute_time = 0.0
    try:
        with torch.inference_mode():
            for index, inputs in enumerate(data_loader):
                if should_stop is not None and should_stop():
                    if not hasattr(evaluator, "interrupted"):  # only ours agree across processes to drop all
                        return None
                    evaluator.interrupted = True
                    break
                skipped = [x for x in inputs if "skipped" in x]  # images that could not be used (already warned)
                if skipped and hasattr(evaluator, "skip"):  # a detectron2-style evaluator has no skip
                    evaluator.skip(skipped)
                    inputs = [x for x in inputs if "skipped" not in x]
                tic = time.perf_counter()
                if inputs:
                    evaluator.process(inputs, model(inputs))
                compute_time += time.perf_counter() - tic
                done = index + 1
                if bar is not None:
                    bar.update(1)
                elif is_main_process() and (time.perf_counter() - last_log > 10 or done == total):
                    elapsed = time.perf_counter() - start
                    eta = elapsed / done * (total - done)
                    logger.info("Inference done %d/%d. %.3f s / img (model %.3f s). ETA=%s", done, total,
                                elapsed / done, compute_time / done, time.strftime("%H:%M:%S", time.gmtime(eta)))
                    last_log = time.perf_counter()
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)
    elapsed = time.perf_counter() - start
    logger.info("Total inference time: %.1f s (%.3f s / img per process; model %.3f s / img)", elapsed,
                elapsed / max(total, 1), compute_time / max(total, 1))
    return evaluator.evaluate()
