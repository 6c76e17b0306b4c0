"""The Label Studio ML backend protocol over the service of ``adet.serve`` (its batching, workers and metrics):

- ``POST /setup`` ``{"project", "schema"}`` -> ``{"model_version"}``: the project's label config is checked.
- ``POST /predict`` ``{"tasks", "label_config", "params"}`` -> ``{"results": [{"result", "score",
  "model_version"}], "model_version"}``: one entry per task, in the tasks' order (Label Studio pairs them by
  position), with regions in the form the request's label config asks for. A task whose image cannot be had gets
  an empty ``result`` and a line in the log; the others get theirs.
- ``GET /health`` -> ``{"status": "UP", ...}`` (503 while the model loads), ``POST /webhook`` (annotation events,
  logged), ``GET /metrics`` (Prometheus).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
from dataclasses import dataclass

import numpy as np
from fastapi import Request, Response
from fastapi.concurrency import run_in_threadpool

from adet.api import Prediction
from adet.serve.app import Service, metrics, one_line, read_body
from adet.serve.payloads import RequestError

from .label_config import LabelConfigError, RegionTarget, region_target
from .regions import task_regions
from .task_images import TaskImageError, TaskImages

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 32 << 20  # a request carries tasks and a label config, not images


@dataclass
class LabelStudioBackend:
    """What the routes share besides the model: the image fetcher, the score threshold, the label configs
    received by ``/setup`` (by project, for a ``/predict`` without one)."""

    images: TaskImages
    min_score: float
    concurrent_tasks: int = 16

    def __post_init__(self):
        self.label_configs: dict[str, str] = {}
        self.tasks_in_flight = asyncio.Semaphore(self.concurrent_tasks)


def json_response(document: dict, status: int = 200) -> Response:
    return Response(json.dumps(document), status_code=status, media_type="application/json")


async def json_body(request: Request) -> dict:
    body = await read_body(request, MAX_BODY_BYTES)
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestError(400, f"{request.url.path}: the body is not valid JSON ({e})") from None
    if not isinstance(document, dict):
        raise RequestError(400, f"{request.url.path}: the body is not a JSON object")
    return document


def project_key(project) -> str:
    return str(project or "").split(".")[0]  # Label Studio sends "<id>.<timestamp>"


async def setup(request: Request) -> Response:
    service: Service = request.app.state.service
    backend: LabelStudioBackend = request.app.state.label_studio
    try:
        document = await json_body(request)
        schema = document.get("schema") or document.get("label_config") or ""
        region_target(schema)
    except (RequestError, LabelConfigError) as e:
        return one_line(getattr(e, "status", 400), str(getattr(e, "message", e)))
    backend.label_configs[project_key(document.get("project"))] = schema
    return json_response({"model_version": service.model_info.version})


async def predict(request: Request) -> Response:
    service: Service = request.app.state.service
    backend: LabelStudioBackend = request.app.state.label_studio
    try:
        document = await json_body(request)
        tasks = document.get("tasks")
        if not isinstance(tasks, list):
            raise RequestError(400, '/predict: the body has no list "tasks"')
        label_config = document.get("label_config") or backend.label_configs.get(
            project_key(document.get("project")), "")
        if not label_config:
            raise RequestError(400, "/predict: no label_config, and no /setup for this project")
        target = region_target(label_config)
        service.check_ready()
    except LabelConfigError as e:
        return one_line(400, str(e))
    except RequestError as e:
        return one_line(e.status, e.message)
    version = service.model_info.version
    answers = await asyncio.gather(*(task_prediction(service, backend, task, target) for task in tasks))
    return json_response({"results": [{**answer, "model_version": version} for answer in answers],
                          "model_version": version})


async def task_prediction(service: Service, backend: LabelStudioBackend, task, target: RegionTarget) -> dict:
    """One task's prediction; an empty one (and a line in the log) when its image cannot be had."""
    task_id = task.get("id") if isinstance(task, dict) else None
    data = task.get("data") if isinstance(task, dict) else None
    # A file imported before the project had a label config is stored under Label Studio's "$undefined$" key.
    url = data.get(target.data_key, data.get("$undefined$")) if isinstance(data, dict) else None
    if not isinstance(url, str) or not url:
        logger.warning("task %s: no image URL in data[%r]; left without a prediction", task_id, target.data_key)
        return {"result": [], "score": 0.0}
    model = service.model
    async with backend.tasks_in_flight:
        service.queue.enter()
        try:
            data = await run_in_threadpool(backend.images.fetch, url)
            instances = await service.detect(data, f"task {task_id} image {url}")
        except (TaskImageError, RequestError) as e:
            logger.warning("task %s: %s; left without a prediction", task_id, getattr(e, "message", e))
            return {"result": [], "score": 0.0}
        finally:
            service.queue.leave()
    height, width = instances.image_size
    prediction = Prediction(instances, np.empty((height, width, 0), np.uint8), model.class_names, model.category_ids)
    regions, left_out = await service.off_the_loop(
        lambda: task_regions(prediction, target, max(backend.min_score, model.min_score)))
    if left_out:
        counts = ", ".join(f"{n} x{c}" for n, c in collections.Counter(left_out).items())
        logger.info("task %s: %d detection(s) of classes the project has no label for left out (%s)", task_id,
                    len(left_out), counts)
    score = sum(region["score"] for region in regions) / len(regions) if regions else 0.0
    return {"result": regions, "score": score}


async def health(request: Request) -> Response:
    service: Service = request.app.state.service
    if not service.ready:
        return json_response({"status": "LOADING", "model_version": service.model_info.version}, 503)
    return json_response({"status": "UP", "model_class": "EmbedMask", "model_version": service.model_info.version})


async def webhook(request: Request) -> Response:
    try:
        document = await json_body(request)
    except RequestError as e:
        return one_line(e.status, e.message)
    logger.info("webhook: %s (project %s)", document.get("action", "?"), (document.get("project") or {}).get("id")
                if isinstance(document.get("project"), dict) else document.get("project"))
    return json_response({"status": "ok"}, 201)


ROUTES = {"/setup": (setup, "POST"), "/predict": (predict, "POST"), "/health": (health, "GET"),
          "/": (health, "GET"), "/webhook": (webhook, "POST"), "/metrics": (metrics, "GET")}
