"""``embedmask serve``: the model behind an HTTP endpoint, with dynamic batching (``adet/serve``).

    embedmask serve --weights output/x/model_final.pth                 # http://127.0.0.1:8000
    curl --data-binary @photo.jpg -H "Content-Type: image/jpeg" http://127.0.0.1:8000/predict

The weights resolve as ``predict``'s (a checkpoint with its own config, ``--config-file`` for official ones, URLs,
``hf://``; ``--onnx`` for an exported file). Needs ``pip install 'embedmask[serve]'`` (FastAPI, uvicorn,
python-multipart, prometheus-client).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import os
import socket
import threading

import torch

from adet.api import Model
from adet.checkpoint.weight_files import resolve_weight_path
from adet.engine.inference.prediction_shards import file_sha256
from adet.errors import PreflightError
from adet.utils.logger import setup_logger

from .options import ArgumentParser, add_config_arguments
from .predict import onnx_predictor, predict_config, split_overrides
from .preflight import check_device

logger = logging.getLogger(__name__)

SERVE_MODULES = {"fastapi": "fastapi", "uvicorn": "uvicorn", "python_multipart": "python-multipart",
                 "prometheus_client": "prometheus-client"}


def build_parser(prog: str | None = None) -> ArgumentParser:
    parser = ArgumentParser(prog=prog, description="Serve EmbedMask over HTTP (POST /predict) with dynamic batching")
    add_config_arguments(parser)
    parser.add_argument("--onnx", default="", metavar="FILE.onnx", help="serve an exported model (ONNX Runtime)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                                                            "only; 0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--device", default="auto", help="auto (every GPU, else the CPU), cpu, cuda or cuda:N")
    parser.add_argument("--workers-per-device", type=int, default=1, metavar="K",
                        help="model replicas per device, each running batches (default 1)")
    parser.add_argument("--max-batch-size", type=int, default=0, metavar="N",
                        help="most images per model call (default: 8 on a GPU, 4 on the CPU)")
    parser.add_argument("--batch-timeout", type=float, default=0.01, metavar="S",
                        help="how long the oldest request waits for others of its size to batch with (default 0.01)")
    parser.add_argument("--confidence-threshold", type=float, default=0.5,
                        help="minimum score of a returned detection (default 0.5); a request may ask for more")
    parser.add_argument("--max-body-mb", type=float, default=20.0, help="largest request body (default 20 MB): 413")
    parser.add_argument("--max-pixels", type=float, default=50e6,
                        help="largest image, from its header, before decoding (default 50e6 pixels): 413")
    parser.add_argument("--timeout", type=float, default=60.0, metavar="S",
                        help="a request unanswered after S seconds gets 504 (default 60)")
    parser.add_argument("--api-key", default=os.environ.get("EMBEDMASK_API_KEY", ""),
                        help="require 'Authorization: Bearer KEY' on every route but /health (default: "
                             "$EMBEDMASK_API_KEY; none)")
    parser.add_argument("--grace-period", type=float, default=30.0, metavar="S",
                        help="on SIGTERM, how long the requests in flight may take to finish (default 30)")
    parser.add_argument("--demo", action="store_true",
                        help="also serve the model's web page at /demo (embedmask demo's page, through this "
                             "server's queue and batching; needs the demo extra)")
    return parser


def serve_devices(device: str, workers_per_device: int) -> list[str]:
    """One entry per model replica: ``workers_per_device`` per device; auto and cuda mean every visible GPU."""
    if device not in ("auto", "cpu", "cuda"):
        check_device(device, "--device")
        found = [device]
    elif device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        found = ["cpu"]
    else:
        check_device("cuda", "--device")
        found = [f"cuda:{k}" for k in range(torch.cuda.device_count())]
    return [d for d in found for _ in range(workers_per_device)]


def model_source(args: argparse.Namespace, overrides: list[str]):
    """(a function loading one replica on a device, the content hash of the weights, the config's name)."""
    if args.onnx:
        onnx_predictor(args, overrides)  # checks the file and options now, not in a worker
        return (lambda device: onnx_predictor(args, overrides)), f"sha256:{file_sha256(args.onnx)[:16]}", "onnx"
    args.device = None if args.device == "auto" else args.device.split(":")[0]
    cfg = predict_config(args, overrides)
    version = file_sha256(resolve_weight_path(cfg.MODEL.WEIGHTS))

    def load(device: str) -> Model:
        replica = cfg.clone()
        replica.MODEL.DEVICE = device
        return Model(replica, min_score=args.min_score)

    return load, f"sha256:{version[:16]}", args.config_file or os.path.basename(cfg.MODEL.WEIGHTS)


def check_arguments(args: argparse.Namespace) -> None:
    missing = [package for module, package in SERVE_MODULES.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise PreflightError(f"embedmask serve needs {', '.join(missing)}: pip install 'embedmask[serve]'")
    if not 0 <= args.confidence_threshold <= 1:
        raise PreflightError(f"--confidence-threshold {args.confidence_threshold}: a score threshold is between 0 "
                             "and 1")
    for option, value in (("--workers-per-device", args.workers_per_device), ("--max-body-mb", args.max_body_mb),
                          ("--max-pixels", args.max_pixels), ("--timeout", args.timeout)):
        if value <= 0:
            raise PreflightError(f"{option} {value}: must be positive")
    if args.max_batch_size < 0 or args.batch_timeout < 0 or args.grace_period < 0:
        raise PreflightError("--max-batch-size, --batch-timeout and --grace-period must not be negative")
    if not 0 < args.port < 65536:
        raise PreflightError(f"--port {args.port}: not a port number (1-65535)")
    if getattr(args, "demo", False):
        if importlib.util.find_spec("gradio") is None:
            raise PreflightError("--demo needs gradio: pip install 'embedmask[demo]'")
        if args.api_key:
            raise PreflightError("--demo with --api-key: a browser sends no Authorization header, so the page could "
                                 "not call the server; put the page behind your proxy's login instead")


def parsed_arguments(parser: ArgumentParser, argv: list[str] | None, check) -> tuple[argparse.Namespace, list[str]]:
    """(the checked arguments, the KEY VALUE overrides) of a serving command, its logger set up."""
    args = parser.parse_args(argv)
    args.input, args.flag_opts = [], []
    overrides = split_overrides(args)
    setup_logger()
    check(args)
    return args, overrides


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args, overrides = parsed_arguments(build_parser(prog), argv, check_arguments)
    devices = serve_devices(args.device, args.workers_per_device)
    load, version, config_name = model_source(args, overrides)
    # The service imports FastAPI and prometheus_client at its top: the serve extra, checked above.
    from adet.serve import ModelInfo, create_app

    app = create_app(load, devices, ModelInfo(version, config_name), serve_settings(args, devices))
    if args.demo:
        mount_demo_page(app, config_name)
    return run_app(app, args, f"serving {config_name} (model {version}) on http://{args.host}:{args.port} with "
                              f"{len(devices)} worker(s) on {', '.join(sorted(set(devices)))}; POST /predict, GET "
                              "/health /info /metrics" + (", the web page at /demo" if args.demo else ""))


def mount_demo_page(app, name: str) -> None:
    """``embedmask demo``'s page at /demo, its detections through the app's service (one model, one port)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # the page reports nothing to Gradio's servers
    import gradio  # the demo extra, checked by check_arguments

    from adet.demo.page import build_page  # gradio
    from adet.demo.served import ServedDetector  # gradio

    gradio.mount_gradio_app(app, build_page(ServedDetector(app.state.service, name)), path="/demo")
    page_app = next(route.app for route in app.routes if getattr(route, "path", "") == "/demo")
    # An open page holds a heartbeat stream that would keep a stopping server waiting for its whole grace period:
    # Gradio ends those streams when its stop event is set, which its own launcher does and a mount does not.
    app.state.on_exit = [page_app.stop_event.set]


def serve_settings(args: argparse.Namespace, devices: list[str]):
    """The service's settings from the command line (whose threads the CPU replicas share)."""
    from adet.serve import ServeSettings  # the serve extra, checked by check_arguments

    if devices[0] == "cpu" and len(devices) > 1:  # the replicas share the cores
        torch.set_num_threads(max(1, torch.get_num_threads() // len(devices)))
    return ServeSettings(
        max_batch_size=args.max_batch_size or (8 if devices[0].startswith("cuda") else 4),
        batch_timeout_s=args.batch_timeout, max_body_mb=args.max_body_mb, max_pixels=int(args.max_pixels),
        timeout_s=args.timeout, confidence_threshold=args.confidence_threshold,
        api_key=getattr(args, "api_key", ""))


def run_app(app, args: argparse.Namespace, banner: str) -> int:
    """Runs ``app`` (made by :func:`adet.serve.create_app`) on --host/--port until SIGTERM or Ctrl-C, which let the
    requests in flight finish within --grace-period; a model that fails to load ends it with that error."""
    import uvicorn  # the serve extra, checked by check_arguments

    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning",
                                           timeout_graceful_shutdown=args.grace_period, access_log=False))
    threading.Thread(target=stop_on_load_failure, args=(app.state.service, server), daemon=True).start()
    on_exit = getattr(app.state, "on_exit", [])
    if on_exit:  # run them in the event loop once uvicorn is told to stop (SIGTERM, Ctrl-C)
        handle_exit = server.handle_exit

        def handle_exit_and_notify(sig, frame) -> None:
            handle_exit(sig, frame)
            loop = asyncio.get_event_loop()
            for callback in on_exit:
                loop.call_soon_threadsafe(callback)

        server.handle_exit = handle_exit_and_notify
    listening = listen(args.host, args.port)
    print(banner, flush=True)
    server.run(sockets=[listening])
    failure = app.state.service.failure()
    if failure is not None:
        raise PreflightError(f"the model failed to load: {failure}")
    return 0


def listen(host: str, port: int) -> socket.socket:
    """The server's socket, bound here so that a taken port is a one-line error before any model loads."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listening = socket.socket(family, socket.SOCK_STREAM)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listening.bind((host, port))
    except OSError as e:
        listening.close()
        raise PreflightError(f"--host {host} --port {port}: cannot listen there ({e.strerror or e})") from None
    listening.listen(2048)
    return listening


def stop_on_load_failure(service, server) -> None:
    """Ends the server when a worker cannot load its model: a server without a model serves nothing."""
    while not server.started or not service.workers:
        if server.should_exit:
            return
        threading.Event().wait(0.1)
    for worker in service.workers:
        worker.ready.wait()
    if service.failure() is not None:
        logger.error("a model worker failed to load: %s", service.failure())
        server.should_exit = True
