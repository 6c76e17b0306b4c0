"""``embedmask serve`` started for real on 127.0.0.1 and spoken to over HTTP: answers equal to ``embedmask predict
--json``, concurrent requests batched, every bad input answered with its status and one line (and the server still
serving), a failing model and a slow one (500, 504), the API key, SIGTERM with requests in flight; and the remote
predictor (``adet.load("http://...")``) equal to the local one."""

import base64
import http.client
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from PIL import Image

import adet
from adet.cli import main as embedmask
from adet.engine.inference.remote import RemoteBackend, RemoteError, is_server_url
from adet.modeling import build_model

from .conftest import ROOT, make_tiny_cfg, shapes_image

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")

CLASSES, CATEGORY_IDS = ["cat", "dog", "bird"], [3, 7, 9]
SIZES = [(96, 128), (120, 100), (64, 200), (150, 90)]


def tiny_model_files(root) -> dict:
    """A tiny model with varied scores (saved as training saves it) and images of four sizes, PNG and JPEG, in
    ``root``: ``weights``, ``images`` (paths), ``folder``, ``root``."""
    cfg = make_tiny_cfg()
    torch.manual_seed(0)
    state = build_model(cfg).state_dict()
    state["proposal_generator.fcos_head.bbox_pred.bias"] += 1.5
    state["proposal_generator.fcos_head.cls_logits.bias"].normal_(0, 2, generator=torch.Generator().manual_seed(0))
    weights = root / "tiny.pth"
    torch.save({"model": state, "config": cfg.dump(), "class_names": CLASSES, "category_ids": CATEGORY_IDS}, weights)
    images = root / "images"
    images.mkdir()
    for i, (height, width) in enumerate(SIZES):
        cv2.imwrite(str(images / f"{i:012d}.{'jpg' if i == 3 else 'png'}"), shapes_image(height, width, seed=i)[0])
    return {"weights": str(weights), "images": sorted(str(p) for p in images.iterdir()), "folder": str(images),
            "root": root}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return tiny_model_files(tmp_path_factory.mktemp("serve"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(method: str, url: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def post_image(url: str, data: bytes, query: str = "", content_type: str = "image/png") -> tuple[int, bytes]:
    return call("POST", f"{url}/predict{query}", data, {"Content-Type": content_type})


def start_server(weights: str, *options: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "adet", "serve", "--weights", weights, "--port", str(port), "--device", "cpu",
         *options], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1"))
    url = f"http://127.0.0.1:{port}"
    wait_until_up(process, f"{url}/health")
    return process, url


def wait_until_up(process: subprocess.Popen, url: str, up=lambda status, body: status == 200) -> None:
    """Polls ``url`` until ``up(status, body)`` (a 200 by default), for two minutes at most; the process's output
    in the failure if it exits or never gets there."""
    deadline = time.time() + 120
    while time.time() < deadline:
        assert process.poll() is None, process.stdout.read()
        try:
            if up(*call("GET", url)):
                return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.2)
    process.kill()
    raise AssertionError(f"{url} did not come up: {process.communicate()[0]}")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
        process.wait(10)
    process.stdout.close()


@pytest.fixture(scope="module")
def server(files):
    process, url = start_server(files["weights"], "--confidence-threshold", "0.3", "--max-body-mb", "1",
                                "--max-pixels", "2e6", "--batch-timeout", "0.05", "--max-batch-size", "8")
    yield url
    stop(process)


@pytest.fixture(scope="module")
def reference(files, tmp_path_factory):
    """``embedmask predict --json`` of the images, by file."""
    path = tmp_path_factory.mktemp("reference") / "results.json"
    assert embedmask(["predict", "--weights", files["weights"], "--input", files["folder"], "--json", str(path),
                      "--confidence-threshold", "0.3", "--workers", "0", "--device", "cpu"]) == 0
    by_file = {name: [] for name in files["images"]}
    for record in json.loads(path.read_text()):
        by_file[record["file_name"]].append(record)
    assert sum(map(len, by_file.values())) > 20 and all(by_file.values())  # detections on every image
    return by_file


def assert_same_detections(answer: list[dict], expected: list[dict]) -> None:
    assert len(answer) == len(expected) > 0
    for got, want in zip(answer, expected):
        assert (got["category_id"], got["category_name"]) == (want["category_id"], want["category_name"])
        assert got["score"] == pytest.approx(want["score"], abs=1e-6)
        assert got["bbox"] == pytest.approx(want["bbox"], abs=1e-4)
        assert got["segmentation"] == want["segmentation"]


def metric(url: str, name: str) -> float:
    text = call("GET", f"{url}/metrics")[1].decode()
    found = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
    assert found, f"{name} not in /metrics"
    return float(found.group(1))


def test_health_and_info_describe_the_model(server, files):
    assert call("GET", f"{server}/health") == (200, b"ok\n")
    status, body = call("GET", f"{server}/info")
    info = json.loads(body)
    digest = subprocess.run(["sha256sum", files["weights"]], capture_output=True, text=True).stdout.split()[0]
    assert status == 200 and info["service"] == "embedmask"
    assert info["model_version"] == f"sha256:{digest[:16]}"
    assert info["classes"] == [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}, {"id": 9, "name": "bird"}]
    assert info["limits"]["max_pixels"] == 2_000_000 and info["limits"]["confidence_threshold"] == 0.3
    assert info["input"]["min_size_test"] == 96


def test_answers_equal_predict_json_in_every_body_format(server, files, reference):
    for path in files["images"]:
        data = open(path, "rb").read()
        status, body = post_image(server, data, content_type="image/jpeg" if path.endswith("jpg") else "image/png")
        answer = json.loads(body)
        assert status == 200 and answer["image_size"] == list(cv2.imread(path).shape[:2])
        assert_same_detections(answer["instances"], reference[path])
    path = files["images"][1]
    data = open(path, "rb").read()
    as_json = json.dumps({"image": "data:image/png;base64," + base64.b64encode(data).decode()}).encode()
    boundary = "embedmask-test-boundary"
    multipart = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n"
                 f"Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    for body, content_type in ((as_json, "application/json"), (multipart, f"multipart/form-data; boundary={boundary}"),
                               (data, "application/x-www-form-urlencoded")):  # curl --data-binary's default type
        status, answer = post_image(server, body, content_type=content_type)
        assert status == 200, answer
        assert_same_detections(json.loads(answer)["instances"], reference[path])
    # A higher threshold drops the lower scores, nothing else.
    answer = json.loads(post_image(server, data, "?threshold=0.6")[1])["instances"]
    assert_same_detections(answer, [r for r in reference[path] if r["score"] >= 0.6])


def test_polygons_are_the_masks_outlines(server, files):
    path = files["images"][0]
    local = adet.load(files["weights"], device="cpu", confidence=0.3)(path)
    status, body = post_image(server, open(path, "rb").read(), "?format=polygons")
    instances = json.loads(body)["instances"]
    assert status == 200 and len(instances) == len(local) > 0
    assert [r["segmentation"] for r in instances] == local.polygons
    height, width = local.image.shape[:2]
    ious = []
    for record, mask in zip(instances, local.masks):
        if record["segmentation"]:
            drawn = mask_util.decode(mask_util.merge(mask_util.frPyObjects(record["segmentation"], height, width)))
            ious.append((drawn.astype(bool) & mask).sum() / (drawn.astype(bool) | mask).sum())
    assert len(ious) > 10 and np.mean(ious) > 0.95


def test_concurrent_requests_are_batched_and_answered_alike(server, files, reference):
    path = files["images"][0]
    data = open(path, "rb").read()
    batches_before = metric(server, "embedmask_batch_size_count")
    singles_before = metric(server, 'embedmask_batch_size_bucket{le="1.0"}')
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: post_image(server, data), range(32)))
    assert all(status == 200 for status, _ in answers)
    for _, body in answers:
        assert_same_detections(json.loads(body)["instances"], reference[path])
    batches = metric(server, "embedmask_batch_size_count") - batches_before
    singles = metric(server, 'embedmask_batch_size_bucket{le="1.0"}') - singles_before
    assert metric(server, "embedmask_batch_size_sum") >= 32
    assert batches - singles >= 1 and batches < 32  # some model calls held several requests


def truncated_png(path: str) -> bytes:
    data = open(path, "rb").read()
    return data[: len(data) // 2]


def bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A valid PNG header declaring width x height gray pixels, and a tiny compressed stream (never decoded)."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(
        b"IEND", b"")


BAD_REQUESTS = [  # (what, query, body, content type, status, words of the one-line answer)
    ("empty body", "", b"", "image/png", 400, "empty"),
    ("not an image", "", b"hello, world", "image/png", 400, "not an image"),
    ("truncated", "", None, "image/png", 400, "truncated"),
    ("wrong multipart field", "", b"--b\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nxyz\r\n--b--\r\n",
     "multipart/form-data; boundary=b", 400, "no field 'image'"),
    ("JSON without image", "", b'{"picture": "abc"}', "application/json", 400, 'field "image"'),
    ("bad base64", "", b'{"image": "abc!!"}', "application/json", 400, "base64"),
    ("broken JSON", "", b'{"image": ', "application/json", 400, "not valid JSON"),
    ("bad mask format", "?format=bitmap", None, "image/png", 400, "format=bitmap"),
    ("threshold below the server's", "?threshold=0.1", None, "image/png", 400, "threshold=0.1"),
    ("threshold not a number", "?threshold=high", None, "image/png", 400, "not a number"),
    ("decompression bomb", "", bomb_png(), "image/png", 413, "megapixels"),
    ("over --max-pixels", "", bomb_png(3000, 1000), "image/png", 413, "3000 x 1000 pixels is more than the limit"),
    ("body over the limit", "", b"\0" * (2 << 20), "image/png", 413, "over the limit"),
]


def test_every_bad_input_gets_its_status_and_one_line(server, files, reference):
    good = open(files["images"][0], "rb").read()
    for what, query, body, content_type, status, words in BAD_REQUESTS:
        body = truncated_png(files["images"][0]) if what == "truncated" else good if body is None else body
        got, answer = post_image(server, body, query, content_type)
        text = answer.decode()
        assert got == status and words in text and text.count("\n") == 1, (what, got, text)
        assert call("GET", f"{server}/health")[0] == 200, what
    # A declared Content-Length over the limit is refused before the body is read.
    connection = http.client.HTTPConnection(*server[len("http://"):].split(":"), timeout=30)
    connection.putrequest("POST", "/predict")
    connection.putheader("Content-Type", "image/png")
    connection.putheader("Content-Length", str(50 << 20))
    connection.endheaders(b"\x89PNG")
    response = connection.getresponse()
    assert response.status == 413 and b"52428800 bytes" in response.read()
    connection.close()
    # Bad requests in the same batches as good ones fail alone.
    bad = truncated_png(files["images"][0])
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda k: post_image(server, good if k % 2 else bad), range(12)))
    assert [status for status, _ in answers] == [400, 200] * 6
    for _, body in answers[1::2]:
        assert_same_detections(json.loads(body)["instances"], reference[files["images"][0]])
    assert metric(server, 'embedmask_requests_total{route="/predict",status="413"}') >= 3


def test_the_remote_predictor_is_the_local_one(server, files, reference, tmp_path):
    remote, local = adet.load(server), adet.load(files["weights"], device="cpu", confidence=0.3)
    assert remote.class_names == local.class_names == CLASSES and remote.category_ids == CATEGORY_IDS
    for path in files["images"]:
        got, want = remote(path), local(path)
        assert len(got) == len(want) > 0 and got.class_names == want.class_names
        np.testing.assert_allclose(got.boxes, want.boxes, atol=1e-4)
        np.testing.assert_allclose(got.scores, want.scores, atol=1e-6)
        assert (got.masks == want.masks).all() and (got.category_ids == want.category_ids).all()
        assert got.polygons == want.polygons and got.draw().shape == want.draw().shape
    pil = Image.open(files["images"][2])  # any input the local model takes
    assert len(remote(pil, format="RGB")) == len(local(pil, format="RGB"))
    # predict over a folder through the server: the same --json as the local model's.
    path = tmp_path / "remote.json"
    assert embedmask(["predict", "--weights", server, "--input", files["folder"], "--json", str(path),
                      "--confidence-threshold", "0.3", "--workers", "0"]) == 0
    by_file = {}
    for record in json.loads(path.read_text()):
        by_file.setdefault(record["file_name"], []).append(record)
    for name, records in reference.items():
        assert_same_detections(by_file[name], records)
    with pytest.raises(RemoteError, match="below the server's --confidence-threshold 0.3"):
        adet.load(server, confidence=0.1)


def test_a_video_through_the_server_is_the_local_one(server, files, tmp_path):
    video = str(tmp_path / "clip.mp4")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"mp4v"), 5, (128, 96))
    for i in range(3):
        writer.write(shapes_image(96, 128, seed=10 + i)[0])
    writer.release()
    results = {}
    for name, weights in (("local", files["weights"]), ("remote", server)):
        results[name] = tmp_path / f"{name}.json"
        assert embedmask(["predict", "--weights", weights, "--video-input", video, "--json", str(results[name]),
                          "--confidence-threshold", "0.3", *(["--device", "cpu"] if name == "local" else [])]) == 0
    local, remote = (json.loads(results[name].read_text()) for name in ("local", "remote"))
    assert {r["file_name"] for r in local} == {f"{video}#{k}" for k in range(3)}
    assert_same_detections(remote, local)


def test_which_urls_are_servers(tmp_path, files, capsys):
    assert is_server_url("http://localhost:8000") and is_server_url("https://models.example.com/embedmask/")
    for weights in ("https://host/x/model_final.pth", "http://host/m.onnx?x=1", "https://host/w#sha256=ab12",
                    "models/x.pth", "hf://user/repo/model.pth"):
        assert not is_server_url(weights), weights
    (tmp_path / "info").write_text("{}")  # an HTTP server, not ours: one line naming the URL
    process = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port := free_port())],
                               cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        with pytest.raises(RemoteError, match=f"http://127.0.0.1:{port}: answers /info but is not an EmbedMask"):
            adet.load(f"http://127.0.0.1:{port}")
    finally:
        process.terminate()
        process.wait(10)
    nobody = f"http://127.0.0.1:{free_port()}"
    assert embedmask(["predict", "--weights", nobody, "--input", files["folder"]]) != 0
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"error: {nobody}: not a weight file") and "not an EmbedMask server" in error
    assert error.count("\n") == 0 and "Traceback" not in error


class FaultyBackend:
    """A real backend that fails on images 55 pixels wide and is slow on images 77 pixels wide."""

    def __init__(self, backend):
        self.backend = backend
        self.cfg, self.class_names, self.category_ids = backend.cfg, backend.class_names, backend.category_ids
        self.size_divisibility = backend.size_divisibility

    def preprocess(self, image):
        return self.backend.preprocess(image)

    def predict_batch(self, batch):
        if any(item.width == 55 for item in batch):
            raise RuntimeError("injected failure")
        if any(item.width == 77 for item in batch):
            time.sleep(1.5)
        return self.backend.predict_batch(batch)


def png_of(height: int, width: int) -> bytes:
    return cv2.imencode(".png", shapes_image(height, width, seed=1)[0])[1].tobytes()


def test_a_failing_or_slow_model_answers_500_or_504_and_serves_on(files):
    import uvicorn

    from adet.serve import ModelInfo, ServeSettings, create_app

    model = adet.load(files["weights"], device="cpu", confidence=0.3)
    model.predictor = FaultyBackend(model.predictor)
    app = create_app(lambda device: model, ["cpu", "cpu"], ModelInfo("sha256:test", "tiny"),
                     ServeSettings(timeout_s=1.0, confidence_threshold=0.3))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            if server.started and call("GET", f"{url}/health")[0] == 200:
                break
            time.sleep(0.05)
        assert post_image(url, png_of(60, 80))[0] == 200
        status, body = post_image(url, png_of(60, 55))
        assert status == 500 and body == b"prediction failed: RuntimeError: injected failure\n"
        status, body = post_image(url, png_of(60, 77))
        assert status == 504 and body == b"no answer within --timeout 1 s\n"
        assert call("GET", f"{url}/health")[0] == 200 and post_image(url, png_of(60, 80))[0] == 200
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.mark.slow
def test_api_key_and_sigterm_with_requests_in_flight(files):
    process, url = start_server(files["weights"], "--api-key", "s3cret", "--batch-timeout", "1.5",
                                "--max-batch-size", "8", "--grace-period", "20")
    try:
        assert call("GET", f"{url}/info")[0] == 401 and call("GET", f"{url}/metrics")[0] == 401
        assert call("GET", f"{url}/info", headers={"Authorization": "Bearer wrong"})[0] == 401
        assert call("GET", f"{url}/info", headers={"Authorization": "Bearer s3cret"})[0] == 200
        assert post_image(url, png_of(60, 80))[0] == 401
        remote = RemoteBackend(url, api_key="s3cret")
        assert len(remote.predict_batch([remote.preprocess(shapes_image(60, 80)[0])])) == 1
        with pytest.raises(RemoteError, match="HTTP 401: missing or wrong API key"):
            RemoteBackend(url, api_key="")
        data = png_of(60, 80)
        # One client is still uploading: the queued requests wait (up to 1.5 s) for it to batch with.
        uploading = http.client.HTTPConnection("127.0.0.1", int(url.rsplit(":", 1)[1]), timeout=30)
        uploading.putrequest("POST", "/predict")
        for header, value in (("Content-Type", "image/png"), ("Content-Length", str(len(data))),
                              ("Authorization", "Bearer s3cret")):
            uploading.putheader(header, value)
        uploading.endheaders(data[:100])
        with ThreadPoolExecutor(4) as pool:
            answers = [pool.submit(call, "POST", f"{url}/predict", data, {"Content-Type": "image/png",
                                                                          "Authorization": "Bearer s3cret"})
                       for _ in range(4)]
            time.sleep(0.5)
            assert not any(f.done() for f in answers)  # in flight
            tic = time.time()
            process.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            with pytest.raises((urllib.error.URLError, ConnectionError)):
                call("GET", f"{url}/health")  # no longer accepting
            uploading.send(data[100:])  # the upload in flight at SIGTERM finishes and is answered
            response = uploading.getresponse()
            assert response.status == 200 and json.loads(response.read())["instances"]
            assert [f.result()[0] for f in answers] == [200] * 4
        process.wait(20)
        assert time.time() - tic < 10 and process.returncode in (0, -signal.SIGTERM), process.returncode
        assert "Traceback" not in process.stdout.read()
    finally:
        stop(process)

