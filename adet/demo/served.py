"""The page on ``embedmask serve --demo``: its detections go through the server's queue and batching (the model the
server runs, with its batching and metrics), not a second model."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from adet.api import Prediction
from adet.data.image_io import read_image
from adet.serve.app import Service
from adet.serve.payloads import RequestError

from .page import Detections, Detector


class ServedDetector(Detector):
    """The server's one model. Slicing and test-time augmentation are the server's settings, not the page's."""

    supports_options = False

    def __init__(self, service: Service, name: str):
        self.service = service
        self.names = [name]

    def class_names(self, name: str) -> list[str]:
        model = self.service.model
        return list(model.class_names or []) if model is not None else []

    async def detect(self, name: str, path: str, tile: int | None, overlap: float, augment: bool) -> Detections:
        service = self.service
        start = time.perf_counter()
        data = await asyncio.to_thread(Path(path).read_bytes)
        try:
            service.check_ready()
            service.queue.enter()
            try:
                instances = await service.detect(data, os.path.basename(path))
            finally:
                service.queue.leave()
        except RequestError as e:
            raise ValueError(e.message) from None
        detected = time.perf_counter()
        image = await asyncio.to_thread(read_image, path, "BGR")  # the page draws on it
        model = service.model
        prediction = Prediction(instances.to("cpu"), image, model.class_names, model.category_ids, path)
        return Detections(name, prediction, os.path.basename(path),
                          {"server (queue, batch, model)": (detected - start) * 1e3})

