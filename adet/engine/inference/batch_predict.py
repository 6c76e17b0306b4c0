"""Prediction over many image files through any backend (``backend.py``: PyTorch, ONNX Runtime, sliced): loader
workers read the images and run the backend's ``preprocess``, the backend's ``predict_batch`` runs on batches, and a
writer thread turns each batch's outputs into results (drawings, COCO records in the process's shard) while the
model runs on the next one.

A batch only holds images of one padded size (images wait in per-size buckets, a few batches' worth at most), so
no image is padded beyond what it is alone: the detections are ``DefaultPredictor``'s, exactly at batch size 1 and
up to float rounding (~1e-7 in scores) in larger batches, whatever the mix of image sizes.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import torch.utils.data as torchdata

from adet.data.build import DataLoader, leave_stop_signals_to_the_trainer, pin_memory, trivial_batch_collator
from adet.data.image_io import read_image
from adet.engine.inference.backend import Backend, ImageInput
from adet.errors import ImageReadError
from adet.structures import Instances, padded_size

logger = logging.getLogger(__name__)


def leave_signals_to_the_main_process(worker_id: int) -> None:
    """Loader workers leave Ctrl-C (SIGINT, sent to the whole terminal's process group) and the stop signals to the
    main process, which ends them: no traceback from each worker."""
    leave_stop_signals_to_the_trainer(worker_id)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@dataclass
class ImageFile:
    """One file of the input: its backend input, and the original BGR image when kept (for drawing); or why it was
    skipped (an unreadable file)."""

    path: str
    input: ImageInput | None = None
    original: np.ndarray | None = None
    skipped: str = ""


class ImageFiles(torchdata.Dataset):
    """paths[i] -> :class:`ImageFile` (read, then preprocessed by ``backend``, in a loader worker)."""

    def __init__(self, paths: list[str], backend: Backend, keep_original: bool):
        self.paths = paths
        self.backend = backend
        self.keep_original = keep_original

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> ImageFile:
        path = self.paths[index]
        try:
            original = read_image(path, "BGR")
        except ImageReadError as e:
            return ImageFile(path, skipped=str(e))
        # numpy, not tensors: it travels by value through the worker's pipe. A tensor would go as a file descriptor
        # served by a thread of the worker, which prints a traceback when Ctrl-C ends the main process mid-handover.
        return ImageFile(path, self.backend.preprocess(original), original if self.keep_original else None)


def default_batch_size(device: str) -> int:
    """8 images per model call on a GPU, 4 on a CPU (measured faster than 1 there too: benchmarks/predict_scale.py);
    ``--batch-size 1`` gives the one-image detections bit for bit."""
    return 8 if device.startswith("cuda") else 4


class SizeBuckets:
    """Items grouped by the padded size of their image; :meth:`add` returns the batches that are ready: a full
    bucket, or, when more than ``2 * batch_size`` items wait, the fullest bucket."""

    def __init__(self, batch_size: int, size_divisibility: int):
        self.batch_size, self.size_divisibility = batch_size, size_divisibility
        self.buckets: dict[tuple[int, int], list[ImageFile]] = {}

    def add(self, item: ImageFile) -> list[list[ImageFile]]:
        key = padded_size(*item.input.image.shape[1:], self.size_divisibility)
        bucket = self.buckets.setdefault(key, [])
        bucket.append(item)
        if len(bucket) == self.batch_size:
            return [self.buckets.pop(key)]
        if sum(map(len, self.buckets.values())) > 2 * self.batch_size:
            return [self.buckets.pop(max(self.buckets, key=lambda k: len(self.buckets[k])))]
        return []

    def rest(self) -> list[list[ImageFile]]:
        batches, self.buckets = list(self.buckets.values()), {}
        return batches


def predict_files(backend: Backend, paths: list[str], handle: Callable[[ImageFile, Instances], None],
                  skip: Callable[[str, str], None], batch_size: int = 1, num_workers: int = 2,
                  keep_original: bool = True) -> dict[str, float]:
    """Run ``backend`` over ``paths``; ``handle(item, instances)`` (on CPU Instances of the original image) runs in
    a writer thread, a batch behind the model, ``skip(path, reason)`` for unreadable files. Returns
    {"images", "seconds", "model_seconds"}."""
    # batch_size None: items one by one (the buckets batch them), untouched (the original stays a numpy array)
    loader = DataLoader(ImageFiles(paths, backend, keep_original), batch_size=None,
                        collate_fn=trivial_batch_collator, num_workers=num_workers,
                        worker_init_fn=leave_signals_to_the_main_process,
                        prefetch_factor=max(2, batch_size) if num_workers else None)
    pinned = pin_memory(str(backend.cfg.MODEL.DEVICE))
    buckets = SizeBuckets(batch_size, backend.size_divisibility)
    start, model_seconds, pending = time.perf_counter(), 0.0, []

    def finish(batch: list[ImageFile], outputs: list[Instances]) -> None:
        for item, instances in zip(batch, outputs):
            handle(item, instances.to("cpu"))

    def run(batch: list[ImageFile]) -> None:
        nonlocal model_seconds
        tic = time.perf_counter()
        outputs = backend.predict_batch([item.input for item in batch])
        model_seconds += time.perf_counter() - tic
        pending.append(writer.submit(finish, batch, outputs))
        while len(pending) > 1:  # at most one batch waits for the writer: memory stays flat
            pending.pop(0).result()  # a writer error (a full disk...) is raised here, in the main thread

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="results") as writer:
        for item in loader:
            if item.skipped:
                skip(item.path, item.skipped)
                continue
            if pinned:  # page-locked: its copy to the GPU overlaps the computation
                item.input.image = torch.from_numpy(item.input.image).pin_memory()
            for batch in buckets.add(item):
                run(batch)
        for batch in buckets.rest():
            run(batch)
        for future in pending:
            future.result()
    return {"images": len(paths), "seconds": time.perf_counter() - start, "model_seconds": model_seconds}
