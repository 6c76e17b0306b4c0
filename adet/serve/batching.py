"""Dynamic batching: requests wait in one queue; each model worker takes the oldest request and the others of the
same padded size that arrive within ``batch_timeout`` (up to ``max_batch_size``), and runs them as one batch of the
inference contract (``adet/engine/inference/backend.py``). It waits only while the server holds requests besides the
queued ones (being read or decoded, or being answered: their clients send again soon), so a lone client's request
runs at once. Batching by padded size, as prediction over a folder does (``batch_predict.SizeBuckets``), pads no
image beyond what it is alone: each answer is the image's one-image prediction to float rounding.

A request's result comes back on a ``concurrent.futures.Future``; a request cancelled while it waits (its client
timed out) is dropped, and a batch that fails inside the model fails its requests only, with the error.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from adet.engine.inference.backend import Backend, ImageInput
from adet.structures import padded_size

logger = logging.getLogger(__name__)


@dataclass
class Job:
    """One request's model input and where its :class:`Instances` (on the CPU, in the original image's pixels) go."""

    input: ImageInput
    size_key: tuple[int, int]  # the padded (height, width) it batches with
    result: Future = field(default_factory=Future)


class BatchQueue:
    """The requests waiting for a model, oldest first."""

    def __init__(self, max_batch_size: int, batch_timeout_s: float, size_divisibility: int):
        self.max_batch_size, self.batch_timeout_s = max_batch_size, batch_timeout_s
        self.size_divisibility = size_divisibility
        self.jobs: list[Job] = []
        self.changed = threading.Condition()
        self.closed = False
        self.requests_in_server = 0  # between enter() and leave(): queued or not

    def enter(self) -> None:
        """A request came in: while it is in the server, a batch may wait for more."""
        with self.changed:
            self.requests_in_server += 1

    def leave(self) -> None:
        """A request was answered (or refused)."""
        with self.changed:
            self.requests_in_server -= 1
            self.changed.notify_all()

    def others_coming(self) -> bool:
        return self.requests_in_server > len(self.jobs)

    def put(self, item: ImageInput) -> Future:
        job = Job(item, padded_size(*item.image.shape[1:], self.size_divisibility))
        with self.changed:
            if self.closed:
                raise RuntimeError("the server is shutting down")
            self.jobs.append(job)
            self.changed.notify_all()
        return job.result

    def close(self) -> None:
        """Wake the workers to exit once the queue is empty."""
        with self.changed:
            self.closed = True
            self.changed.notify_all()

    def next_batch(self) -> list[Job]:
        """The next batch (blocking); [] once closed and empty. Only jobs whose future could start running are in
        it (a cancelled one is dropped here)."""
        with self.changed:
            while True:
                while not self.jobs and not self.closed:
                    self.changed.wait()
                if not self.jobs:
                    return []
                key, deadline = self.jobs[0].size_key, time.monotonic() + self.batch_timeout_s
                same = [job for job in self.jobs if job.size_key == key]
                while len(same) < self.max_batch_size and self.others_coming() and not self.closed:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self.changed.wait(left)
                    same = [job for job in self.jobs if job.size_key == key]
                batch = same[:self.max_batch_size]
                taken = {id(job) for job in batch}
                self.jobs = [job for job in self.jobs if id(job) not in taken]
                batch = [job for job in batch if job.result.set_running_or_notify_cancel()]
                if batch:
                    return batch


class ModelWorker(threading.Thread):
    """One model replica: loads it (``load()``, on its device) then runs batches from ``queue`` until it closes.
    ``on_batch(size, seconds)`` is told of every batch run (the metrics)."""

    def __init__(self, name: str, load: Callable[[], Backend], queue: BatchQueue,
                 on_batch: Callable[[int, float], None] = lambda size, seconds: None):
        super().__init__(name=name, daemon=True)
        self.load, self.queue, self.on_batch = load, queue, on_batch
        self.backend: Backend | None = None
        self.ready = threading.Event()
        self.failed: BaseException | None = None

    def run(self) -> None:
        try:
            self.backend = self.load()
        except BaseException as e:  # reported by the server, which exits: a worker without a model serves nothing
            self.failed = e
            self.ready.set()
            return
        self.ready.set()
        while batch := self.queue.next_batch():
            self.run_batch(batch)

    def run_batch(self, batch: list[Job]) -> None:
        tic = time.perf_counter()
        try:
            outputs = self.backend.predict_batch([job.input for job in batch])
            outputs = [instances.to("cpu") for instances in outputs]
        except Exception as e:  # a failure inside the model fails this batch's requests, not the server
            logger.exception("%s: the model failed on a batch of %d", self.name, len(batch))
            for job in batch:
                job.result.set_exception(e)
            return
        self.on_batch(len(batch), time.perf_counter() - tic)
        for job, instances in zip(batch, outputs):
            job.result.set_result(instances)

