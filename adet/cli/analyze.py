"""``embedmask analyze`` (and ``tools/analyze_model.py``): parameters and FLOPs of each part of the model.

    embedmask analyze --config-file EmbedMask/MS_R_50_1x.yaml --input-size 800x1216
    embedmask analyze --config-file EmbedMask/MS_R_50_1x.yaml --depth 3   # one level deeper into the modules

FLOPs are counted by torch's FlopCounterMode on one inference pass over a random image of the given (padded) size,
2 per multiply-add; operations it has no formula for (activations, normalisation, NMS, element-wise work) are not
counted. The masks' pasting at the end of the model is counted under the model itself.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from adet.errors import ConfigError
from adet.modeling import build_model
from adet.utils.logger import setup_logger

from .options import ArgumentParser, add_config_arguments, resolve_config


def build_parser(prog: str | None = None) -> ArgumentParser:
    parser = ArgumentParser(prog=prog, description="Parameters and FLOPs per module of an EmbedMask config")
    add_config_arguments(parser, weights=False, required=True)
    parser.add_argument("--input-size", default="800x1216", metavar="HxW",
                        help="network input size (padded to a multiple of 32); default 800x1216")
    parser.add_argument("--depth", type=int, default=2, help="module depth of the table (1: model parts)")
    return parser


def parameter_counts(model: nn.Module, depth: int) -> dict[str, tuple[int, int]]:
    """{module path: (parameters, trainable parameters)} down to ``depth`` levels ("" is the whole model)."""
    counts: dict[str, tuple[int, int]] = {}
    for name, module in model.named_modules():
        if name.count(".") + 1 > depth and name:
            continue
        params = list(module.parameters())
        counts[name] = (sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad))
    return counts


def flop_counts(model: nn.Module, height: int, width: int) -> dict[str, int]:
    """{module path: FLOPs} of one inference pass on a (height, width) image ("" is the whole model)."""
    counter = FlopCounterMode(display=False, depth=None)
    image = torch.randint(0, 256, (3, height, width), generator=torch.Generator().manual_seed(0)).float()
    model.eval()
    with torch.no_grad(), counter:
        model([{"image": image.to(model.device)}])
    root = type(model).__name__
    flops = {}
    for name, per_op in counter.get_flop_counts().items():
        path = "" if name in ("Global", root) else name[len(root) + 1:] if name.startswith(root + ".") else None
        if path is not None:
            flops[path] = sum(per_op.values())
    return flops


def flops_of(path: str, flops: dict[str, int]) -> int:
    """FLOPs of a module; a container that is never called itself (a ModuleList) sums its outermost called
    descendants."""
    if path in flops:
        return flops[path]
    inside = [q for q in flops if q.startswith(path + ".")]
    outermost = [q for q in inside if not any(q.startswith(other + ".") for other in inside)]
    return sum(flops[q] for q in outermost)


def format_table(params: dict[str, tuple[int, int]], flops: dict[str, int], size: tuple[int, int]) -> str:
    total_flops = flops.get("", 0)
    lines = [f"{'module':<48}{'params':>12}{'trainable':>12}{'GFLOPs':>10}{'share':>8}",
             "-" * 90]
    for name, (count, trainable) in params.items():
        value = flops_of(name, flops)
        indent = "  " * name.count(".") if name else ""
        label = (indent + (name.rsplit(".", 1)[-1] if name else "model (total)"))[:47]
        share = f"{100 * value / total_flops:.1f}%" if total_flops else "-"
        lines.append(f"{label:<48}{count / 1e6:>11.2f}M{trainable / 1e6:>11.2f}M{value / 1e9:>10.1f}{share:>8}")
    lines.append(f"(input {size[0]}x{size[1]}; FLOPs = 2 x multiply-adds, counted by torch's FlopCounterMode)")
    return "\n".join(lines)


def main(argv: list[str] | None = None, prog: str | None = None) -> str:
    args = build_parser(prog).parse_args(argv)
    setup_logger()
    cfg = resolve_config(args.config_file, "", args.opts)
    cfg.MODEL.DEVICE = "cpu" if not torch.cuda.is_available() else cfg.MODEL.DEVICE
    try:
        height, width = (int(v) for v in args.input_size.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--input-size {args.input_size}: expected HxW, e.g. 800x1216") from None
    model = build_model(cfg)
    table = format_table(parameter_counts(model, args.depth), flop_counts(model, height, width), (height, width))
    print(table)
    return table
