#!/usr/bin/env python
"""``embedmask serve`` under load: 1, 4 and 16 concurrent clients posting a fixed image set, against the in-process
batched throughput of the same model measured in the same run (the service's limit), and the server's memory over
thousands of requests.

    python benchmarks/serve_load.py                          # the quickstart model and R-50 at 800x1333, CPU
    python benchmarks/serve_load.py --models quickstart --rss-requests 3000

Models: ``quickstart`` is models/EmbedMask_synthetic.pth (``python tools/quickstart.py`` trains it) on synthetic
images at its test size (128x160); ``r50`` is the official R-50 architecture with the deterministic reference weights
(tests/fixtures/reference, 100 detections per image as trained weights give) on demo/images resized to 800x1333.

In-process: the same work as the server without HTTP, on one thread of control: decode the JPEG, preprocess, the
model on batches of ``--max-batch-size`` images, the answer encoded (COCO RLE) as the server encodes it; "model
only" leaves decoding and encoding out. The server is ``embedmask serve`` in its own process with the same threads;
each client sends the JPEG bytes over a kept-alive connection and reads the answer. RSS is the server's (VmRSS and
VmHWM from /proc).
"""

from __future__ import annotations

import argparse
import gc
import http.client
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import cv2
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

QUICKSTART_WEIGHTS = os.path.join(ROOT, "models", "EmbedMask_synthetic.pth")
R50_CONFIG = "EmbedMask/MS_R_50_1x.yaml"
# (requests at 1, 4, 16 clients; images in-process; repeats, the best kept) per model: seconds of work each for the
# quickstart model, whose short runs a busy moment of the machine can halve (hence the repeats), minutes for R-50
REQUESTS = {"quickstart": (100, 200, 400, 400, 3), "r50": (4, 8, 32, 16, 1)}


def model_files(name: str, folder: str) -> tuple[list[str], list[bytes]]:
    """(the weights options of ``embedmask serve``, the JPEG images) of a benchmark model."""
    if name == "quickstart":
        from adet.data.synthetic import IMAGE_SIZE, generate_image

        if not os.path.isfile(QUICKSTART_WEIGHTS):
            sys.exit(f"error: {QUICKSTART_WEIGHTS}: no such file; `python tools/quickstart.py` trains it")
        rng = np.random.default_rng(0)
        images = [generate_image(rng, *IMAGE_SIZE)[0] for _ in range(16)]
        return ["--weights", QUICKSTART_WEIGHTS], [cv2.imencode(".jpg", im)[1].tobytes() for im in images]
    from inference import reference_weights

    images = []
    for file in sorted(os.listdir(os.path.join(ROOT, "demo", "images"))):
        image = cv2.imread(os.path.join(ROOT, "demo", "images", file))
        images.append(cv2.imencode(".jpg", cv2.resize(image, (1333, 800)), [cv2.IMWRITE_JPEG_QUALITY, 95])[1])
    return ["--weights", reference_weights(folder), "--config-file", R50_CONFIG], [im.tobytes() for im in images]


def in_process(weights_options: list[str], images: list[bytes], count: int, batch_size: int,
               threshold: float, repeats: int) -> tuple[float, float]:
    """(images/s end to end, images/s of the model alone) over ``count`` images, in batches of ``batch_size``; the
    best of ``repeats`` runs."""
    import adet
    from adet.data.image_io import decode_image
    from adet.serve.payloads import prediction_payload

    options = dict(zip(weights_options[::2], weights_options[1::2]))
    model = adet.load(options["--weights"], options.get("--config-file"), device="cpu", confidence=threshold)
    backend = model.predictor
    backend.predict_batch([backend.preprocess(decode_image(images[0]))])  # warm up
    best = (0.0, 0.0)
    for _ in range(repeats):
        model_seconds, tic = 0.0, time.perf_counter()
        for start in range(0, count, batch_size):
            batch = [backend.preprocess(decode_image(images[k % len(images)]))
                     for k in range(start, min(count, start + batch_size))]
            model_tic = time.perf_counter()
            outputs = backend.predict_batch(batch)
            model_seconds += time.perf_counter() - model_tic
            for instances in outputs:
                prediction_payload(instances, model.class_names, model.category_ids, "v", model.min_score, "rle")
        best = max(best, (count / (time.perf_counter() - tic), count / model_seconds))
    del model, backend
    gc.collect()
    return best


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(weights_options: list[str], batch_size: int, threshold: float) -> tuple[subprocess.Popen, int]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "adet", "serve", *weights_options, "--port", str(port),
                                "--device", "cpu", "--max-batch-size", str(batch_size), "--confidence-threshold",
                                str(threshold)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=dict(os.environ, PYTHONPATH=ROOT))
    deadline = time.time() + 300
    while time.time() < deadline:
        if process.poll() is not None:
            sys.exit(f"error: embedmask serve exited with {process.returncode}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return process, port
        except OSError:
            pass
        time.sleep(0.25)
    process.kill()
    sys.exit("error: the server did not become healthy in 300 s")


def load(port: int, images: list[bytes], clients: int, requests: int) -> tuple[float, list[float]]:
    """(images/s, latencies in s) of ``requests`` requests from ``clients`` concurrent clients."""
    latencies: list[float] = []
    counter = iter(range(requests))
    lock = threading.Lock()

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        while True:
            with lock:
                k = next(counter, None)
            if k is None:
                return
            tic = time.perf_counter()
            connection.request("POST", "/predict", images[k % len(images)], {"Content-Type": "image/jpeg"})
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}")
            with lock:
                latencies.append(time.perf_counter() - tic)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    tic = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - tic
    if len(latencies) != requests:
        raise RuntimeError(f"{requests - len(latencies)} requests failed")
    return requests / seconds, latencies


def memory_kb(pid: int) -> dict[str, int]:
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                fields[line.split(":")[0]] = int(line.split()[1])
    return fields


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def benchmark_model(name: str, folder: str, batch_size: int, threshold: float) -> list[str]:
    options, images = model_files(name, folder)
    one, four, sixteen, local_count, repeats = REQUESTS[name]
    local, model_only = in_process(options, images, local_count, batch_size, threshold, repeats)
    process, port = start_server(options, batch_size, threshold)
    rows = []
    try:
        load(port, images, 2, 4)  # warm up
        for clients, requests in ((1, one), (4, four), (16, sixteen)):
            throughput, latencies = max((load(port, images, clients, requests) for _ in range(repeats)),
                                        key=lambda run: run[0])
            rows.append(f"| {name} | {clients} | {requests} | {throughput:.2f} | {local:.2f} | "
                        f"{throughput / local:.2f}x | {model_only:.2f} | {statistics.median(latencies) * 1000:.0f} | "
                        f"{percentile(latencies, 99) * 1000:.0f} | {memory_kb(process.pid)['VmHWM'] / 1024:.0f} |")
            print(rows[-1], flush=True)
    finally:
        process.terminate()
        process.wait(60)
    return rows


def rss_growth(folder: str, requests: int, batch_size: int, threshold: float) -> str:
    """The server's RSS after request 500 and after request ``requests`` (4 clients, the quickstart model)."""
    options, images = model_files("quickstart", folder)
    process, port = start_server(options, batch_size, threshold)
    try:
        load(port, images, 4, 500)
        at_500 = memory_kb(process.pid)["VmRSS"]
        load(port, images, 4, requests - 500)
        at_end = memory_kb(process.pid)["VmRSS"]
    finally:
        process.terminate()
        process.wait(60)
    return (f"| quickstart | {at_500 / 1024:.1f} | {at_end / 1024:.1f} | {(at_end / at_500 - 1) * 100:+.1f}% | "
            f"< +5% |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["quickstart", "r50"], choices=sorted(REQUESTS))
    parser.add_argument("--max-batch-size", type=int, default=4, help="the server's and the in-process batch")
    parser.add_argument("--confidence-threshold", type=float, default=0.5)
    parser.add_argument("--rss-requests", type=int, default=3000, help="requests of the memory run (0: skip it)")
    args = parser.parse_args()
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    header = ("| model | clients | requests | served img/s | in-process img/s | served / in-process | model-only img/s "
              "| p50 ms | p99 ms | server peak RSS MB |\n|---|---|---|---|---|---|---|---|---|---|")
    print(header)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            rows += benchmark_model(name, folder, args.max_batch_size, args.confidence_threshold)
        memory = rss_growth(folder, args.rss_requests, args.max_batch_size, args.confidence_threshold) \
            if args.rss_requests > 500 and "quickstart" in args.models else ""
    print("\n" + header + "\n" + "\n".join(rows))
    if memory:
        print(f"\n| model | RSS after 500 requests MB | after {args.rss_requests} MB | growth | target |\n"
              f"|---|---|---|---|---|\n{memory}")


if __name__ == "__main__":
    main()
