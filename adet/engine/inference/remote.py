"""A model served by ``embedmask serve``, run through the inference contract (``backend.py``): the same
``Prediction``s as the local model, so ``adet.load("http://host:8000")`` and ``embedmask predict --weights
http://host:8000`` switch an application from a local model to a remote one by one string.

An ``http(s)://`` weights name is a weight file to download when it ends in a weight-file suffix or carries a
``#sha256=`` checksum; any other is asked for ``/info``, which an EmbedMask server answers.

Images travel as PNG (lossless: the server decodes the very pixels the client holds); the detections come back as
COCO RLE and are rebuilt into :class:`Instances` in the image's pixels. ``predict_batch`` sends its images
concurrently (the server batches them with other clients' requests).
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import urllib.parse
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pycocotools.mask as mask_util
import torch

from adet.config import get_cfg
from adet.data.image_io import as_color_uint8
from adet.engine.inference.backend import ImageInput
from adet.errors import EmbedMaskError
from adet.structures import Boxes, Instances, LocalMasks

WEIGHT_SUFFIXES = (".pth", ".pkl", ".pt", ".onnx", ".safetensors")
API_KEY_VARIABLE = "EMBEDMASK_API_KEY"


class RemoteError(EmbedMaskError, RuntimeError):
    """A server that cannot be reached, is no EmbedMask server, or refused a request; the message names the URL."""


def is_server_url(weights: str) -> bool:
    """An ``http(s)://`` name that is not a weight file to download (no weight suffix, no ``#sha256=``)."""
    if not str(weights).startswith(("http://", "https://")):
        return False
    parsed = urllib.parse.urlsplit(str(weights))
    return not parsed.fragment.startswith("sha256=") and not parsed.path.lower().endswith(WEIGHT_SUFFIXES)


class Connection:
    """HTTP requests to one server, a kept-alive connection per thread."""

    def __init__(self, url: str, api_key: str | None = None, timeout_s: float = 120.0):
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise RemoteError(f"{url}: not an http(s):// server address")
        self.url, self.parsed, self.timeout_s = url.rstrip("/"), parsed, timeout_s
        self.base_path = parsed.path.rstrip("/")
        api_key = os.environ.get(API_KEY_VARIABLE, "") if api_key is None else api_key
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.local = threading.local()

    def _connection(self) -> http.client.HTTPConnection:
        if getattr(self.local, "connection", None) is None:
            kind = http.client.HTTPSConnection if self.parsed.scheme == "https" else http.client.HTTPConnection
            self.local.connection = kind(self.parsed.hostname, self.parsed.port, timeout=self.timeout_s)
        return self.local.connection

    def request(self, method: str, route: str, body: bytes | None = None, headers: dict | None = None
                ) -> tuple[int, bytes]:
        """(status, body) of ``method route``; a dropped kept-alive connection is retried once on a new one."""
        for attempt in (0, 1):
            connection = self._connection()
            try:
                connection.request(method, self.base_path + route, body, {**self.headers, **(headers or {})})
                response = connection.getresponse()
                return response.status, response.read()
            except (ConnectionError, http.client.HTTPException, OSError) as e:
                connection.close()
                self.local.connection = None
                if attempt or not isinstance(e, (ConnectionResetError, BrokenPipeError,
                                                 http.client.RemoteDisconnected)):
                    raise RemoteError(f"{self.url}{route}: {type(e).__name__}: {e}") from None
        raise AssertionError("unreachable")

    def json(self, method: str, route: str, body: bytes | None = None, headers: dict | None = None) -> dict:
        status, answer = self.request(method, route, body, headers)
        if status != 200:
            line = answer.decode("utf-8", "replace").strip().splitlines()
            raise RemoteError(f"{self.url}{route}: HTTP {status}" + (f": {line[0]}" if line else ""))
        try:
            return json.loads(answer)
        except ValueError:
            raise RemoteError(f"{self.url}{route}: the answer is not JSON (not an EmbedMask server?)") from None


def server_info(url: str, api_key: str | None = None, timeout_s: float = 30.0) -> dict:
    """The ``/info`` of the EmbedMask server at ``url``; a one-line :class:`RemoteError` for anything else."""
    try:
        info = Connection(url, api_key, timeout_s).json("GET", "/info")
    except RemoteError as e:
        raise RemoteError(f"{url}: not a weight file (no .pth/.pkl/.pt/.onnx/.safetensors suffix or #sha256=) and "
                          f"not an EmbedMask server ({e})") from None
    if info.get("service") != "embedmask":
        raise RemoteError(f"{url}: answers /info but is not an EmbedMask server")
    return info


class RemoteBackend:
    """The inference contract over HTTP: ``preprocess`` keeps the image (the server resizes it), ``predict_batch``
    sends each image of the batch concurrently. ``min_score``: the ``threshold`` each request asks for (None: the
    server's)."""

    def __init__(self, url: str, min_score: float | None = None, api_key: str | None = None,
                 timeout_s: float = 120.0, max_concurrency: int = 16):
        self.arguments = (url, min_score, api_key, timeout_s, max_concurrency)  # what a pickled copy reconnects with
        self.info = server_info(url, api_key)
        self.url = url.rstrip("/")
        self.connection = Connection(url, api_key, timeout_s)
        server_threshold = float(self.info["limits"]["confidence_threshold"])
        if min_score is not None and min_score < server_threshold:
            raise RemoteError(f"{url}: a score threshold of {min_score:g} is below the server's "
                              f"--confidence-threshold {server_threshold:g}, whose model drops lower scores")
        self.query = f"?format=rle&threshold={min_score!r}" if min_score is not None else "?format=rle"
        self.class_names: list[str] | None = [c["name"] for c in self.info["classes"]] or None
        self.category_ids: list[int] | None = [int(c["id"]) for c in self.info["classes"]] or None
        self.class_of_category = {c: k for k, c in enumerate(self.category_ids or [])}
        self.model_version: str = self.info["model_version"]
        # One bucket for every image size: a batch is just requests in flight (the server pads nothing).
        self.size_divisibility = 1 << 30
        self.cfg = get_cfg()
        self.cfg.MODEL.DEVICE = "cpu"  # where the results land; the model runs on the server
        self.cfg.freeze()
        self.pool = ThreadPoolExecutor(max_concurrency, thread_name_prefix="remote")

    def __reduce__(self):  # to another process (--num-gpus N): connect there afresh
        return RemoteBackend, self.arguments

    def __repr__(self) -> str:
        return f"RemoteBackend({self.url}, model {self.model_version})"

    def preprocess(self, image_bgr: np.ndarray) -> ImageInput:
        image = as_color_uint8(image_bgr)
        return ImageInput(np.ascontiguousarray(image.transpose(2, 0, 1)), image.shape[0], image.shape[1])

    def predict_batch(self, batch: Sequence[ImageInput]) -> list[Instances]:
        return list(self.pool.map(self.predict_one, batch))

    def predict_one(self, item: ImageInput) -> Instances:
        image = np.asarray(item.image)
        ok, png = cv2.imencode(".png", np.ascontiguousarray(image.transpose(1, 2, 0)),
                               [cv2.IMWRITE_PNG_COMPRESSION, 1])
        if not ok:
            raise RemoteError(f"{self.url}: could not encode an image of shape {image.shape} as PNG")
        answer = self.connection.json("POST", "/predict" + self.query, png.tobytes(), {"Content-Type": "image/png"})
        return self.instances_of(answer)

    def instances_of(self, answer: dict) -> Instances:
        """An answer's detections as the local model's :class:`Instances` (contiguous classes, mask crops)."""
        height, width = answer["image_size"]
        records = answer["instances"]
        xywh = np.array([r["bbox"] for r in records], np.float64).reshape(-1, 4)
        xywh[:, 2:] += xywh[:, :2]
        rles = [{"size": r["segmentation"]["size"], "counts": r["segmentation"]["counts"].encode()}
                for r in records]
        full = mask_util.decode(rles).transpose(2, 0, 1) if rles else np.zeros((0, height, width), np.uint8)
        return Instances(
            (height, width),
            pred_boxes=Boxes(torch.from_numpy(xywh.astype(np.float32))),
            scores=torch.tensor([r["score"] for r in records], dtype=torch.float32),
            pred_classes=torch.tensor([self.class_of_category.get(r["category_id"], r["category_id"])
                                       for r in records], dtype=torch.int64),
            pred_masks=LocalMasks.from_full(np.ascontiguousarray(full).astype(bool)) if rles else LocalMasks(
                [], [], (height, width)))
