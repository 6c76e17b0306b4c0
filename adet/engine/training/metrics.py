"""Training metrics: a console line (or a progress bar on a terminal) with ETA, ``metrics.json`` (one JSON object
per logged iteration, appended across resumes) and TensorBoard events, written by the main process."""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import sys
from collections import deque

import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

logger = logging.getLogger(__name__)


def flatten_results(results: dict) -> dict[str, float]:
    """{dataset: {task: {metric: v}}} -> {"task/metric": v} (detectron2's metrics.json keys; the dataset name is
    kept only when there are several)."""
    flat = {}
    for dataset, tasks in results.items():
        for task, metrics in tasks.items():
            for metric, value in metrics.items():
                prefix = f"{dataset}/" if len(results) > 1 else ""
                flat[f"{prefix}{task}/{metric}"] = value
    return flat


def drop_records_from(path: str, iteration: int) -> None:
    """Remove the records of ``iteration`` and later from a metrics.json: what a killed run logged after its last
    checkpoint, which the resumed run logs again."""
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    kept = []
    for line in lines:
        try:
            if json.loads(line).get("iteration", -1) >= iteration:
                continue
        except ValueError:  # a line cut short by the kill
            continue
        kept.append(line)
    if len(kept) != len(lines):
        temporary = path + ".tmp"
        with open(temporary, "w", encoding="utf-8") as f:
            f.writelines(kept)
        os.replace(temporary, path)


class MetricsWriter:
    def __init__(self, output_dir: str | None, max_iter: int, start_iter: int):
        self.output_dir = output_dir
        self.max_iter = max_iter
        self.start_iter = start_iter
        self.iteration_times: deque[float] = deque(maxlen=20)
        self.bar = None
        self.tensorboard = None
        self.json_path = None
        if output_dir:
            os.makedirs(output_dir, exist_ok=True)
            self.json_path = os.path.join(output_dir, "metrics.json")
            if start_iter > 0:
                drop_records_from(self.json_path, start_iter)
            try:
                # Imported only by the process that writes events: it loads tensorboard and protobuf.
                from torch.utils.tensorboard import SummaryWriter

                self.tensorboard = SummaryWriter(log_dir=output_dir)
            except ImportError:
                logger.info("tensorboard is not installed: no TensorBoard events (pip install tensorboard)")

    @contextlib.contextmanager
    def progress(self):
        """A tqdm bar (logging routed around it) when the main process writes to a terminal."""
        if self.output_dir is None or not sys.stdout.isatty():
            yield
            return
        self.bar = tqdm(total=self.max_iter, initial=self.start_iter, unit="it", dynamic_ncols=True, desc="train")
        with logging_redirect_tqdm([logging.getLogger("adet")]):
            try:
                yield
            finally:
                self.bar.close()
                self.bar = None

    def tick(self, iteration: int, iteration_time: float) -> None:
        if iteration > self.start_iter:  # the first iteration includes warm-up costs
            self.iteration_times.append(iteration_time)
        if self.bar is not None:
            self.bar.update(1)

    def eta_seconds(self, iteration: int) -> float:
        if not self.iteration_times:
            return float("nan")
        return sorted(self.iteration_times)[len(self.iteration_times) // 2] * (self.max_iter - iteration - 1)

    def write_iteration(self, iteration: int, losses: dict[str, float], lr: float, iteration_time: float,
                        data_time: float, extra: dict[str, float] | None = None) -> None:
        """One record of the losses and timings, plus ``extra`` scalars (what hooks put)."""
        self.tick(iteration, iteration_time)
        if self.output_dir is None:
            return
        total = sum(losses.values())
        eta = self.eta_seconds(iteration)
        record = {"iteration": iteration, "total_loss": total, **losses, "lr": lr, "time": iteration_time,
                  "data_time": data_time}
        if not (eta != eta):  # not NaN
            record["eta_seconds"] = eta
        if torch.cuda.is_available():
            record["max_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
        self._append(dict(record, **(extra or {})))
        eta_text = str(datetime.timedelta(seconds=int(eta))) if eta == eta else "?"
        terms = "  ".join(f"{k}: {v:.4g}" for k, v in losses.items())
        logger.info("eta: %s  iter: %d  total_loss: %.4g  %s  time: %.3f  data_time: %.3f  lr: %.5g", eta_text,
                    iteration, total, terms, iteration_time, data_time, lr)
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss {total:.3f} lr {lr:.2g}")

    def _append(self, record: dict) -> None:
        """One line of metrics.json, and each value (NaN excepted) to TensorBoard."""
        with open(self.json_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            for key, value in record.items():
                if key != "iteration" and value == value:
                    self.tensorboard.add_scalar(key, value, record["iteration"])

    def write_scalars(self, iteration: int, scalars: dict[str, float]) -> None:
        """A record of other scalars (a hook's validation loss...) at ``iteration``."""
        if self.output_dir is not None and scalars:
            self._append({"iteration": iteration, **scalars})

    def write_evaluation(self, iteration: int, results: dict) -> None:
        if self.output_dir is not None and results:
            self._append({"iteration": iteration, **flatten_results(results)})

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None

