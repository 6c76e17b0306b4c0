"""``embedmask demo``: the model's web page (``adet/demo``), in a browser at http://127.0.0.1:7860.

    embedmask demo                                        # the quickstart model (trained first if missing)
    embedmask demo --weights output/a/model_final.pth output/b/model_final.pth   # compare two checkpoints
    embedmask demo --weights models/x.pth --write-space my-space/                # a Hugging Face Space to push

Needs ``pip install 'embedmask[demo]'``.
"""

from __future__ import annotations

import importlib.util
import os

from adet.data.builtin import datasets_root
from adet.errors import PreflightError

from .options import ArgumentParser
from .quickstart import quickstart_model, write_held_out_images


def build_parser(prog: str | None = None) -> ArgumentParser:
    parser = ArgumentParser(prog=prog, description="The model's web page: drop an image, see every mask (Gradio)")
    parser.add_argument("--weights", nargs="+", default=[], metavar="CKPT",
                        help="checkpoints to show (the first by default, the others to compare; hf:// and URLs as "
                             "predict takes them); default: the quickstart model in models/, trained if missing")
    parser.add_argument("--config-file", default=None, metavar="FILE",
                        help="a config for checkpoints that carry none (official ones)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: a GPU if there is one)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860, Gradio's)")
    parser.add_argument("--examples", nargs="+", default=None, metavar="IMAGE",
                        help="images offered as examples (default: synthetic shapes for the quickstart model, none "
                             "for other weights)")
    parser.add_argument("--write-space", default="", metavar="DIR",
                        help="write a Hugging Face Space (app.py, requirements.txt, README.md, this package's "
                             "wheel, the weights unless hf://) into DIR instead of serving")
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    if importlib.util.find_spec("gradio") is None:
        raise PreflightError("embedmask demo needs gradio: pip install 'embedmask[demo]'")
    if not 0 < args.port < 65536:
        raise PreflightError(f"--port {args.port}: not a port number")
    for path in args.weights:
        if "://" not in path and not os.path.isfile(path):
            raise PreflightError(f"--weights {path}: no such file")
    for path in args.examples or []:
        if not os.path.isfile(path):
            raise PreflightError(f"--examples {path}: no such file")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # the page reports nothing to Gradio's servers
    weights = args.weights or [quickstart_model()]  # trained first if missing (about 6 minutes on 2 CPU cores)
    examples = args.examples if args.examples is not None else [] if args.weights else example_images()
    if args.write_space:
        from adet.demo.space import write_space  # gradio, checked above

        for line in write_space(args.write_space, weights, args.config_file, examples):
            print(line)
        return 0
    from adet.demo.page import LocalDetector, build_page  # gradio, checked above

    page = build_page(LocalDetector(weights, args.device, args.config_file), examples=examples)
    print(f"EmbedMask demo of {', '.join(weights)} on http://{args.host}:{args.port}", flush=True)
    page.queue().launch(server_name=args.host, server_port=args.port, show_error=True, quiet=True)
    return 0


def example_images() -> list[str]:
    """The page's examples: held-out synthetic images (made on first use, no download)."""
    return write_held_out_images(os.path.join(datasets_root(), "synthetic", "held_out"))[:4]
