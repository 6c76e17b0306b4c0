#!/usr/bin/env python
"""The prediction store's bookkeeping at scale, without a model: a results folder of N images' shard lines (two
shards, as two processes write them), then what a resumed ``embedmask predict --resume --json`` does besides
predicting: find the images still to do among N inputs, and assemble the ``--json``. Ours (an on-disk index built
from each line's head, detections copied as text) against the store as it was (every line parsed with
``json.loads`` into an in-memory map, at the start and again for the assembly), each in its own process; time and
the growth of peak RSS (from the kernel) over what the process held before the bookkeeping (interpreter, imports,
the input list), in one table.

    python benchmarks/prediction_store.py                  # 100,000 images, 5 detections each
    python benchmarks/prediction_store.py --images 1000000 --detections 2
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

OURS = """
import resource, sys, time
from adet.engine.inference.prediction_shards import DoneIndex, assemble_json
folder, count = sys.argv[1], int(sys.argv[2])
paths = [f"/data/images/{i:012d}.jpg" for i in range(count)]
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the interpreter, imports and the inputs
start = time.perf_counter()
with DoneIndex(folder) as done:
    remaining = [path for path, where in done.in_order(paths) if where is None]
index_s = time.perf_counter() - start
start = time.perf_counter()
detections = assemble_json(folder, paths, folder + "/out.json")
print(index_s, time.perf_counter() - start, len(remaining), detections,
      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - baseline)
"""

# The store before the on-disk index: every line parsed, the done map in memory, the head parsed again to assemble.
EARLIER = """
import glob, json, resource, sys, time
folder, count = sys.argv[1], int(sys.argv[2])
paths = [f"/data/images/{i:012d}.jpg" for i in range(count)]
KEY = b', "detections": ['
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

def done_images():
    done = {}
    for path in sorted(glob.glob(folder + "/predictions.rank*.jsonl")):
        with open(path, "rb") as f:
            offset = 0
            for line in f:
                if line.endswith(b"\\n"):
                    done.setdefault(json.loads(line)["file"], (path, offset))
                offset += len(line)
    return done

start = time.perf_counter()
done = done_images()
remaining = [p for p in paths if p not in done]
index_s = time.perf_counter() - start
start = time.perf_counter()
done, total, handles = done_images(), 0, {}
with open(folder + "/out_earlier.json", "wb") as out:
    out.write(b"[")
    for source in paths:
        shard, offset = done[source]
        handle = handles.get(shard) or handles.setdefault(shard, open(shard, "rb"))
        handle.seek(offset)
        line = handle.readline().rstrip(b"\\n")
        cut = line.index(KEY) + len(KEY)
        if line[cut:-2]:
            out.write((b"," if total else b"") + line[cut:-2])
            total += json.loads(line[:cut - len(KEY)] + b"}")["count"]
    out.write(b"]")
print(index_s, time.perf_counter() - start, len(remaining), total,
      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - baseline)
"""


def write_store(folder: str, images: int, detections: int) -> None:
    """Two shards, the images alternating between them, each line as ShardWriter writes it (COCO records with an
    RLE of a ~60x60 px mask)."""
    record = {"image_id": 0, "category_id": 1, "bbox": [10.5, 20.25, 60.0, 58.75], "score": 0.87,
              "segmentation": {"size": [480, 640], "counts": "Y`o08h>4L3M2N2N1O1O0O100O0100O0O2O0O2N2N3M4L5J_Sd7"}}
    shards = [open(os.path.join(folder, f"predictions.rank{r}.jsonl"), "w") for r in range(2)]
    for i in range(images):
        line = {"file": f"/data/images/{i:012d}.jpg", "count": detections, "detections": [record] * detections}
        shards[i % 2].write(json.dumps(line) + "\n")
    for shard in shards:
        shard.close()


def run(program: str, folder: str, images: int) -> list[float]:
    done = subprocess.run([sys.executable, "-c", program, folder, str(images)], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=ROOT), check=True)
    return [float(x) for x in done.stdout.split()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--detections", type=int, default=5, help="per image")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        write_store(folder, args.images, args.detections)
        size_mb = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder)) / 2**20
        ours, earlier = run(OURS, folder, args.images), run(EARLIER, folder, args.images)
        same = open(os.path.join(folder, "out.json"), "rb").read() == open(
            os.path.join(folder, "out_earlier.json"), "rb").read()
    print(f"{args.images:,} images x {args.detections} detections, shards {size_mb:.0f} MB; same --json: {same}")
    print(f"{'store':28}{'find remaining s':>18}{'assemble s':>12}{'remaining':>11}{'detections':>12}"
          f"{'RSS growth MB':>15}")
    for name, row in (("ours (index on disk)", ours), ("earlier (parsed, in memory)", earlier)):
        print(f"{name:28}{row[0]:>18.2f}{row[1]:>12.2f}{int(row[2]):>11}{int(row[3]):>12}{row[4]:>15.1f}")
    print(f"ratio (ours / earlier): find {ours[0] / earlier[0]:.2f}x, assemble {ours[1] / earlier[1]:.2f}x, "
          f"RSS growth {ours[4] / max(earlier[4], 0.1):.2f}x")


if __name__ == "__main__":
    main()
