#!/usr/bin/env python
"""Sliced inference on one 10,000 x 10,000 image: time and peak memory against the number of tiles.

The image is a mosaic of synthetic_val images, each scaled 4x (cells of 512 x 640 pixels, ~1,200 objects); the
model is ``embedmask quickstart``'s (test size 128: each tile is resized to it). Every row runs in its own process
(``adet.load(..., slice=(h, w))``, the Python API a user calls) and reports the seconds of the prediction, the
detections kept, and the growth of peak RSS over the process's size with the image loaded. The last column is what
the masks alone would take as full-size (N, H, W) bool arrays, the representation the crops replaced.

    embedmask quickstart                        # trains models/EmbedMask_synthetic.pth (once)
    python benchmarks/sliced_large.py           # 10,000 x 10,000; tiles of 512x640 up to 4096x5120
    python benchmarks/sliced_large.py --size 3000 --tiles 512x640 1024x1280
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

ROW = """
import json, resource, sys, time
import cv2, torch
torch.set_num_threads(int(sys.argv[5]))
import adet
from adet.engine.inference.sliced import tile_windows
weights, image_file, overlap = sys.argv[1], sys.argv[2], float(sys.argv[4])
tile = tuple(map(int, sys.argv[3].split("x")))
model = adet.load(weights, device="cpu", slice=tile, overlap=overlap)
image = cv2.imread(image_file)
model(image[:256, :320])  # warm-up (lazy initialisation of the model and the threads)
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
start = time.perf_counter()
result = model(image)
seconds = time.perf_counter() - start
print(json.dumps({"tiles": len(tile_windows(*image.shape[:2], tile, overlap)), "seconds": seconds,
                  "detections": len(result), "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                  - baseline}))
"""


def mosaic(path: str, size: int, scale: int) -> int:
    """A size x size BGR mosaic of synthetic_val images scaled ``scale`` times, written to ``path``; returns the
    number of ground-truth objects in it."""
    import cv2
    import numpy as np

    from adet.data import DatasetCatalog

    records = DatasetCatalog.get("synthetic_val")
    height, width = records[0]["height"] * scale, records[0]["width"] * scale
    canvas = np.zeros((size, size, 3), np.uint8)
    objects, k = 0, 0
    for top in range(0, size, height):
        for left in range(0, size, width):
            record = records[k % len(records)]
            k += 1
            cell = cv2.resize(cv2.imread(record["file_name"]), (width, height), interpolation=cv2.INTER_LINEAR)
            h, w = min(height, size - top), min(width, size - left)
            canvas[top:top + h, left:left + w] = cell[:h, :w]
            objects += len(record["annotations"])
    cv2.imwrite(path, canvas)
    return objects


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=os.path.join("models", "EmbedMask_synthetic.pth"))
    parser.add_argument("--size", type=int, default=10000, help="image height and width (pixels)")
    parser.add_argument("--scale", type=int, default=4, help="how much each synthetic_val cell is enlarged")
    parser.add_argument("--tiles", nargs="+", default=["512x640", "1024x1280", "2048x2560", "4096x5120"])
    parser.add_argument("--overlap", type=float, default=None, help="default: the config's TEST.SLICE.OVERLAP")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not os.path.isfile(args.weights):
        raise SystemExit(f"{args.weights} is missing: run `embedmask quickstart` first (it trains that model)")
    if args.overlap is None:
        from adet.config import get_cfg

        args.overlap = get_cfg().TEST.SLICE.OVERLAP
    with tempfile.TemporaryDirectory() as folder:
        image = os.path.join(folder, "large.png")
        objects = mosaic(image, args.size, args.scale)
        print(f"\n{args.size} x {args.size} image ({objects} objects), model {args.weights}, overlap {args.overlap}, "
              f"{args.threads} threads")
        print("| tile | tiles | detections | seconds | ms/tile | peak RSS growth (MB) | "
              "full-size masks would be (MB) |")
        print("|---|---|---|---|---|---|---|")
        for tile in args.tiles:
            out = subprocess.run([sys.executable, "-c", ROW, args.weights, image, tile, str(args.overlap),
                                  str(args.threads)], capture_output=True, text=True, cwd=ROOT)
            if out.returncode:
                raise SystemExit(f"tiles {tile}: {out.stderr.strip().splitlines()[-1]}")
            row = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"| {tile} | {row['tiles']} | {row['detections']} | {row['seconds']:.1f} | "
                  f"{1000 * row['seconds'] / row['tiles']:.0f} | {row['peak_mb']:.0f} | "
                  f"{row['detections'] * args.size * args.size / 2**20:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
