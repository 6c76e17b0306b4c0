"""Serving a model over HTTP (``embedmask serve``): FastAPI + uvicorn, dynamic batching over the inference
contract. Needs the ``serve`` extra. The client side is :class:`adet.engine.inference.remote.RemoteBackend`
(``adet.load("http://host:8000")``)."""

from .app import ModelInfo, ServeSettings, Service, create_app
from .payloads import RequestError

__all__ = ["ModelInfo", "RequestError", "ServeSettings", "Service", "create_app"]
