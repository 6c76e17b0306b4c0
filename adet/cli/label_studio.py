"""``embedmask label-studio``: a Label Studio ML backend that pre-labels tasks with EmbedMask
(``adet/integrations/label_studio``), on the serving stack of ``embedmask serve``.

    LABEL_STUDIO_URL=http://localhost:8080 LABEL_STUDIO_API_KEY=... \\
        embedmask label-studio --weights output/x/model_final.pth          # http://127.0.0.1:9090
    # Label Studio: project > Settings > Model > Connect model, URL http://127.0.0.1:9090

Regions are polygons or brush strokes, as the project's label config asks. Needs
``pip install 'embedmask[serve]'``.
"""

from __future__ import annotations

import logging
import os

from adet.errors import PreflightError

from .options import ArgumentParser, add_config_arguments
from .serve import check_arguments as check_serve_arguments
from .serve import model_source, parsed_arguments, run_app, serve_devices, serve_settings

logger = logging.getLogger(__name__)


def build_parser(prog: str | None = None) -> ArgumentParser:
    parser = ArgumentParser(prog=prog, description="A Label Studio ML backend pre-labelling tasks with EmbedMask "
                                                   "(LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY from the environment)")
    add_config_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=9090, help="port (default 9090, Label Studio's convention)")
    parser.add_argument("--device", default="auto", help="auto (every GPU, else the CPU), cpu, cuda or cuda:N")
    parser.add_argument("--local-root", default="", metavar="DIR",
                        help="read /data/local-files/?d=... from DIR (Label Studio's LOCAL_FILES_DOCUMENT_ROOT) "
                             "instead of fetching them from Label Studio; no file outside it is read")
    parser.add_argument("--allow-url-prefix", action="append", default=[], metavar="P",
                        help="also fetch task images whose URL starts with P (repeatable); other hosts than "
                             "LABEL_STUDIO_URL are refused")
    parser.add_argument("--confidence-threshold", type=float, default=0.5,
                        help="minimum score of a pre-labelled region (default 0.5)")
    parser.add_argument("--max-batch-size", type=int, default=0, metavar="N",
                        help="most images per model call (default: 8 on a GPU, 4 on the CPU)")
    return parser


def check_arguments(args) -> None:
    args.onnx, args.workers_per_device, args.batch_timeout, args.grace_period = "", 1, 0.01, 30.0
    args.max_body_mb, args.max_pixels, args.timeout = 64.0, 50e6, 300.0
    check_serve_arguments(args)
    if args.local_root and not os.path.isdir(args.local_root):
        raise PreflightError(f"--local-root {args.local_root}: no such folder")
    url = os.environ.get("LABEL_STUDIO_URL", "")
    if url and not url.startswith(("http://", "https://")):
        raise PreflightError(f"LABEL_STUDIO_URL={url}: not an http(s) URL")


def images_of(args):
    """The task images' fetcher: LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY, --local-root, --allow-url-prefix."""
    from adet.integrations.label_studio.task_images import TaskImages  # its urllib, for this command only

    try:
        return TaskImages(os.environ.get("LABEL_STUDIO_URL", ""), os.environ.get("LABEL_STUDIO_API_KEY", ""),
                          args.local_root, tuple(args.allow_url_prefix))
    except ValueError as e:
        raise PreflightError(str(e)) from None


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args, overrides = parsed_arguments(build_parser(prog), argv, check_arguments)
    # The backend imports FastAPI at its top: the serve extra, checked above.
    from adet.integrations.label_studio.backend import ROUTES, LabelStudioBackend

    # The service likewise.
    from adet.serve import ModelInfo, create_app

    devices = serve_devices(args.device, 1)
    load, version, config_name = model_source(args, overrides)
    app = create_app(load, devices, ModelInfo(version, config_name), serve_settings(args, devices), ROUTES,
                     "EmbedMask Label Studio ML backend")
    app.state.label_studio = LabelStudioBackend(images_of(args), args.confidence_threshold)
    return run_app(app, args, f"Label Studio ML backend: {config_name} (model {version}) on "
                              f"http://{args.host}:{args.port}; connect it in the project's Settings > Model")
