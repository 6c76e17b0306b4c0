"""The HTTP service (``embedmask serve``): a FastAPI app run by uvicorn.

Routes: ``POST /predict`` (``payloads.py``), ``GET /health`` (200 once every worker has its model, 503 before),
``GET /info`` (the model: version, classes, config, input, limits), ``GET /metrics`` (Prometheus). A request's body
is read and its size checked on the event loop; decoding, resizing and encoding the answer run in the thread pool;
the model runs in its workers' threads on batches of requests (``batching.py``). So a slow or hostile request
holds neither the model nor the other requests.

Built on FastAPI and uvicorn directly rather than LitServe (0.2.x): LitServe reads a non-form body as JSON (a raw
image is a 500), decodes every request of a batch in the model's worker (one bad image fails the batch and decoding
waits on the model), drains nothing on SIGTERM and owns ``/health`` and ``/info``. uvicorn's own shutdown is the
drain: on SIGTERM it stops accepting, waits for the requests in flight (``--grace-period``), then re-raises the
signal.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from fastapi import FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from adet.api import Model
from adet.structures import Instances
from adet.version import __version__

from .batching import BatchQueue, ModelWorker
from .payloads import (
    RequestError,
    body_limit_error,
    image_bytes_from_json,
    image_of,
    parse_mask_format,
    parse_threshold,
    prediction_payload,
)

logger = logging.getLogger(__name__)

BATCH_SIZE_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


@dataclass
class ServeSettings:
    """The service's limits and batching (``embedmask serve``'s options)."""

    max_batch_size: int = 4
    batch_timeout_s: float = 0.01
    max_body_mb: float = 20.0
    max_pixels: int = 50_000_000
    timeout_s: float = 60.0
    confidence_threshold: float = 0.5
    api_key: str = ""


@dataclass
class ModelInfo:
    """What ``/info`` says of the model besides its classes: a content hash of the weights, the config's name."""

    version: str
    config: str


class Metrics:
    """The Prometheus series, in a registry of their own (several apps may live in one process)."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("embedmask_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=self.registry)
        self.latency = Histogram("embedmask_request_duration_seconds", "time from request to answer", ["route"],
                                 registry=self.registry)
        self.batch_size = Histogram("embedmask_batch_size", "images per model call", buckets=BATCH_SIZE_BUCKETS,
                                    registry=self.registry)
        self.batch_seconds = Histogram("embedmask_batch_duration_seconds", "time of one model call",
                                       registry=self.registry)
        self.workers_ready = Gauge("embedmask_workers_ready", "workers with their model loaded",
                                   registry=self.registry)
        self.queued = Gauge("embedmask_queued_images", "images waiting for a model worker", registry=self.registry)

    def record_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)


def lower_priority() -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 5)  # Linux: one thread's nice value
    except (AttributeError, OSError):
        pass


def one_line(status: int, message: str, headers: dict | None = None) -> Response:
    return Response(message.replace("\n", " ") + "\n", status_code=status, media_type="text/plain", headers=headers)


class Service:
    """The app's state: the workers (one per model replica), their queue, the loaded model's metadata, the metrics."""

    def __init__(self, load_model: Callable[[str], Model], devices: list[str], model_info: ModelInfo,
                 settings: ServeSettings):
        self.settings, self.model_info, self.metrics = settings, model_info, Metrics()
        self.model: Model | None = None  # the first replica loaded: class names, preprocessing
        self.queue: BatchQueue | None = None
        self.load_model, self.devices = load_model, devices
        self.workers: list[ModelWorker] = []
        # Decoding and encoding: threads that yield the CPU to the model's (a lower priority, as far as the OS has
        # one for threads), so a burst of requests slows the batches as little as it can.
        self.codec_pool = ThreadPoolExecutor(max(4, os.cpu_count() or 1), "codec", initializer=lower_priority)

    async def off_the_loop(self, function):
        return await asyncio.get_running_loop().run_in_executor(self.codec_pool, function)

    def start(self) -> None:
        # The queue needs the model's size divisibility: the first replica loads before the queue exists, in the
        # first worker's thread, so the server listens (and /health says 503) while it loads.
        self.queue = BatchQueue(self.settings.max_batch_size, self.settings.batch_timeout_s, 32)
        self.metrics.queued.set_function(lambda: len(self.queue.jobs))
        for k, device in enumerate(self.devices):
            worker = ModelWorker(f"model-{k}-{device}", lambda device=device: self.loaded(device), self.queue,
                                 self.metrics.record_batch)
            self.workers.append(worker)
            worker.start()

    def loaded(self, device: str):
        model = self.load_model(device)
        if self.model is None:
            self.model = model
            self.queue.size_divisibility = model.predictor.size_divisibility
        self.metrics.workers_ready.inc()
        return model.predictor

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.queue is not None:
            self.queue.close()
        for worker in self.workers:
            worker.join(timeout_s)
        self.codec_pool.shutdown(wait=False, cancel_futures=True)

    @property
    def ready(self) -> bool:
        return bool(self.workers) and all(w.ready.is_set() and w.failed is None for w in self.workers)

    def failure(self) -> BaseException | None:
        return next((w.failed for w in self.workers if w.failed is not None), None)

    def info(self) -> dict:
        model = self.model
        names = model.class_names if model is not None else None
        ids = model.category_ids if model is not None and model.category_ids is not None else range(len(names or []))
        cfg = model.cfg if model is not None else None
        return {
            "service": "embedmask", "embedmask_version": __version__,
            "model_version": self.model_info.version, "config": self.model_info.config,
            "classes": [{"id": int(i), "name": n} for i, n in zip(ids, names or [])],
            "input": {"content_types": ["image/* (raw bytes)", "multipart/form-data (field image)",
                                        "application/json ({\"image\": base64})"],
                      "channel_order": cfg.INPUT.FORMAT if cfg is not None else None,
                      "min_size_test": cfg.INPUT.MIN_SIZE_TEST if cfg is not None else None,
                      "max_size_test": cfg.INPUT.MAX_SIZE_TEST if cfg is not None else None,
                      "mask_formats": ["rle", "polygons"]},
            "limits": {**asdict(self.settings), "api_key": bool(self.settings.api_key)},
            "devices": self.devices, "ready": self.ready,
        }

    async def predict(self, request: Request) -> bytes:
        """The JSON answer to a ``POST /predict``; a :class:`RequestError` for a bad request."""
        settings = self.settings
        mask_format = parse_mask_format(request.query_params.get("format"))
        min_score = parse_threshold(request.query_params.get("threshold"), settings.confidence_threshold)
        self.check_ready()
        model, queue = self.model, self.queue
        queue.enter()  # while it is here, a batch may wait for this request or, once answered, its next one
        try:
            body = await read_body(request, int(settings.max_body_mb * 2**20))
            content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if content_type == "multipart/form-data":
                data, what = await image_bytes_from_form(request, body), "multipart field image"
            elif content_type == "application/json":
                data, what = await run_in_threadpool(image_bytes_from_json, body), 'JSON field "image"'
            else:
                data, what = body, "request body"
            instances = await self.detect(data, what)
            return await self.off_the_loop(lambda: json.dumps(prediction_payload(
                instances, model.class_names, model.category_ids, self.model_info.version,
                max(min_score, model.min_score), mask_format)).encode())
        finally:
            queue.leave()

    def check_ready(self) -> None:
        if not self.ready:
            raise RequestError(503, "the model is still loading (GET /health says when it is ready)")

    async def detect(self, data: bytes, what: str) -> Instances:
        """The model's detections (all it kept) on the encoded image ``data``, batched with the other requests';
        ``what`` names the image in a :class:`RequestError`. Callers hold the queue (``enter``/``leave``)."""
        model = self.model
        item = await self.off_the_loop(lambda: model.predictor.preprocess(image_of(data, what,
                                                                                   self.settings.max_pixels)))
        return await asyncio.wrap_future(self.queue.put(item))


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The body, refused (413) as soon as it is known to be over ``max_bytes``: from a Content-Length of more than
    twice the limit before any of it is read, else once it has streamed in. A body somewhat over the limit is read
    to its end (and dropped) because a server that answers and closes while the client still sends makes the
    client's socket fail with a broken pipe before it reads the 413."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > 2 * max_bytes:
        raise body_limit_error(int(declared), max_bytes)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > 2 * max_bytes:
            break
        if size <= max_bytes:
            chunks.append(chunk)
    if size > max_bytes:
        raise body_limit_error(size if size <= 2 * max_bytes else f"more than {size}", max_bytes)
    return b"".join(chunks)


async def image_bytes_from_form(request: Request, body: bytes) -> bytes:
    """The file (or text) of the multipart field ``image`` of an already read body."""
    async def replay() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form()
    except Exception as e:  # starlette's MultiPartException, HTTPException; python-multipart's parse errors
        raise RequestError(400, f"multipart body: cannot be parsed ({getattr(e, 'detail', None) or e})") from None
    if "image" not in form:
        raise RequestError(400, f"multipart body: no field 'image' (fields: {', '.join(form.keys()) or 'none'})")
    field = form["image"]
    return await field.read() if hasattr(field, "read") else field.encode("latin-1")


class GuardAndMeasure:
    """Every route: the API key (all but /health), then the request counted and timed by route and status. Plain
    ASGI: Starlette's ``BaseHTTPMiddleware`` costs a task and a stream per request, time taken from the model's
    thread for the interpreter lock."""

    def __init__(self, app, service: Service, routes: dict):
        self.app, self.service, self.routes = app, service, routes
        self.expected = f"Bearer {service.settings.api_key}".encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        tic, route, status = time.perf_counter(), scope["path"], [500]

        async def send_and_note(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        authorization = next((value for name, value in scope["headers"] if name == b"authorization"), b"")
        if self.service.settings.api_key and route != "/health" and not hmac.compare_digest(authorization,
                                                                                             self.expected):
            await one_line(401, "missing or wrong API key: send the header Authorization: Bearer <key>",
                           {"WWW-Authenticate": "Bearer"})(scope, receive, send_and_note)
        else:
            await self.app(scope, receive, send_and_note)
        known = route if route in self.routes else "other"
        self.service.metrics.requests.labels(known, str(status[0])).inc()
        self.service.metrics.latency.labels(known).observe(time.perf_counter() - tic)


async def health(request: Request) -> Response:
    service: Service = request.app.state.service
    if service.ready:
        return one_line(200, "ok")
    failed = service.failure()
    ready = sum(w.ready.is_set() and w.failed is None for w in service.workers)
    return one_line(503, f"model failed to load: {failed}" if failed else
                    f"loading the model ({ready} of {len(service.workers)} workers ready)")


async def info(request: Request) -> Response:
    return Response(json.dumps(request.app.state.service.info()), media_type="application/json")


async def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.service.metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def predict(request: Request) -> Response:
    service: Service = request.app.state.service
    try:
        answer = await asyncio.wait_for(service.predict(request), service.settings.timeout_s)
    except RequestError as e:
        return one_line(e.status, e.message)
    except (asyncio.TimeoutError, TimeoutError):
        return one_line(504, f"no answer within --timeout {service.settings.timeout_s:g} s")
    except Exception as e:  # inside the model or the encoding: this request fails, the server serves on
        logger.exception("POST /predict failed")
        return one_line(500, f"prediction failed: {type(e).__name__}: {e}")
    return Response(answer, media_type="application/json")


ROUTES = {"/predict": (predict, "POST"), "/health": (health, "GET"), "/info": (info, "GET"),
          "/metrics": (metrics, "GET")}


def create_app(load_model: Callable[[str], Model], devices: list[str], model_info: ModelInfo,
               settings: ServeSettings | None = None, routes: dict | None = None, title: str = "EmbedMask") -> FastAPI:
    """The service for the model ``load_model(device)`` gives, one worker per entry of ``devices`` (a device
    named twice holds two replicas); ``app.state.service`` is its :class:`Service`. The workers start loading
    their models when the app starts (uvicorn's lifespan) and stop once the requests in flight are answered.
    ``routes`` (path -> (endpoint, method); default :data:`ROUTES`) is the protocol spoken over that service."""
    service = Service(load_model, devices, model_info, settings or ServeSettings())
    routes = ROUTES if routes is None else routes

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        yield
        await run_in_threadpool(service.stop)

    app = FastAPI(title=title, version=__version__, lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.service = service
    app.add_middleware(GuardAndMeasure, service=service, routes=routes)
    for path, (endpoint, method) in routes.items():
        app.add_api_route(path, endpoint, methods=[method])
    return app
