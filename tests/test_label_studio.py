"""The Label Studio ML backend (``embedmask label-studio``) spoken to as Label Studio speaks to it, against a
stand-in for Label Studio's file server on 127.0.0.1 (the real Label Studio: ``test_label_studio_server.py``):
regions equal to ``adet.load``'s masks in both forms, tasks answered in their order, Label Studio's tokens, and
hostile task URLs refused with one line and nothing fetched."""

import base64
import http.server
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse

import numpy as np
import pytest

import adet
from adet.integrations.label_studio.label_config import LabelConfigError, region_target
from adet.integrations.label_studio.regions import brush_rle
from adet.integrations.label_studio.task_images import TaskImageError, TaskImages

from .conftest import ROOT
from .test_serve import call, free_port, tiny_model_files, wait_until_up

pytest.importorskip("fastapi")

POLYGON_CONFIG = """<View><Image name="img" value="$picture"/>
<PolygonLabels name="outline" toName="img"><Label value="Cat"/><Label value="Dog" predicted_values="dog, puppy"/>
</PolygonLabels></View>"""
BRUSH_CONFIG = """<View><Image name="photo" value="$image"/>
<BrushLabels name="paint" toName="photo"><Label value="cat"/><Label value="dog"/><Label value="bird"/></BrushLabels>
</View>"""


def decode_brush(rle: list[int]) -> np.ndarray:
    """Label Studio's brush RLE decoded from its format's definition (label_studio_sdk's decoder, restated): the
    flat RGBA values."""
    bits = "".join(f"{b:08b}" for b in rle)
    position = 0

    def read(n: int) -> int:
        nonlocal position
        position += n
        return int(bits[position - n:position], 2)

    count, word = read(32), read(5) + 1
    sizes = [read(4) + 1 for _ in range(4)]
    out, i = np.zeros(count, np.uint8), 0
    while i < count:
        repeated = read(1)
        end = i + 1 + read(sizes[read(2)])
        if repeated:
            out[i:end] = read(word)
            i = end
        else:
            while i < end:
                out[i], i = read(word), i + 1
    return out


def test_the_label_config_names_the_control_and_the_labels():
    polygon = region_target(POLYGON_CONFIG)
    assert (polygon.region_type, polygon.from_name, polygon.to_name, polygon.data_key) == (
        "polygonlabels", "outline", "img", "picture")
    assert [polygon.label(n) for n in ("Cat", "cat", "dog", "puppy", "Dog", "bird")] == [
        "Cat", None, "Dog", "Dog", "Dog", None]
    brush = region_target(BRUSH_CONFIG)
    assert (brush.region_type, brush.from_name, brush.to_name, brush.data_key) == ("brushlabels", "paint", "photo",
                                                                                   "image")
    with pytest.raises(LabelConfigError, match="no <PolygonLabels> or <BrushLabels>"):
        region_target('<View><Image name="i" value="$image"/><RectangleLabels name="r" toName="i"/></View>')
    with pytest.raises(LabelConfigError, match="not valid XML"):
        region_target("<View><Image")


def test_brush_rle_by_hand_and_round_trip():
    # One row [inside, outside]: 8 RGBA bytes, two runs of 4. Header: 8 values (32 bits), word size 8 (00111), run
    # fields 3, 4, 8, 16 bits (0010 0011 0111 1111); each run: 1, field 0 (00), 4 - 1 (011), its value (8 bits).
    bits = f"{8:032b}" + "00111" + "0010001101111111" + "1" + "00" + "011" + "11111111" + "1" + "00" + "011" + "0" * 8
    bits += "0" * (-len(bits) % 8)
    assert brush_rle(np.array([[True, False]])) == list(int(bits, 2).to_bytes(len(bits) // 8, "big"))
    rng = np.random.default_rng(0)
    masks = [rng.random((37, 53)) > 0.5, np.zeros((300, 400), bool), np.ones((200, 400), bool)]
    masks[1][100:250, 30:390] = True  # runs longer than one 16-bit block
    for mask in masks:
        flat = decode_brush(brush_rle(mask))
        assert flat.size == mask.size * 4 and np.array_equal(flat.reshape(*mask.shape, 4)[..., 3], mask * 255)


class FakeLabelStudio(http.server.ThreadingHTTPServer):
    """Label Studio's file routes: /data/upload/... and /data/local-files/?d=... (with its token), /api/token/refresh
    (a personal access token for a short-lived access token), and a redirect; it counts every request."""

    def __init__(self, folder: str, token: str, personal_token: str = ""):
        self.folder, self.token, self.personal_token, self.paths = folder, token, personal_token, []
        self.access = jwt({"token_type": "access", "exp": int(time.time()) + 3600})
        self.redirect_to = ""
        super().__init__(("127.0.0.1", 0), FakeLabelStudioHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class FakeLabelStudioHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def answer(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        self.server.paths.append(self.path)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/api/token/refresh" and body.get("refresh") == self.server.personal_token:
            return self.answer(200, json.dumps({"access": self.server.access}).encode())
        self.answer(401)

    def do_GET(self):
        self.server.paths.append(self.path)
        if self.path.startswith("/redirect"):
            return self.answer(302, headers={"Location": self.server.redirect_to})
        if self.headers.get("Authorization") not in (f"Token {self.server.token}", f"Bearer {self.server.access}"):
            return self.answer(401)
        parts = urllib.parse.urlsplit(self.path)
        if parts.path.startswith("/data/upload/"):
            name = os.path.basename(parts.path)
        elif parts.path == "/data/local-files/":
            name = urllib.parse.parse_qs(parts.query)["d"][0]
        else:
            return self.answer(404)
        path = os.path.join(self.server.folder, name)
        if not os.path.isfile(path):
            return self.answer(404)
        self.answer(200, open(path, "rb").read(), {"Content-Type": "image/png"})


def jwt(claims: dict) -> str:
    def part(document: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(document).encode()).rstrip(b"=").decode()
    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return tiny_model_files(tmp_path_factory.mktemp("label-studio"))


@pytest.fixture(scope="module")
def label_studio(files):
    server = FakeLabelStudio(files["folder"], "legacy-token-123")
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def elsewhere(files):
    """Another host (localhost, not 127.0.0.1) with the same files: a backend must not call it."""
    server = FakeLabelStudio(files["folder"], "legacy-token-123")
    server.url_here = f"http://localhost:{server.server_address[1]}"
    yield server
    server.shutdown()


def start_backend(weights: str, env: dict, *options: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "adet", "label-studio", "--weights", weights, "--port", str(port), "--device", "cpu",
         *options], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1", **env))
    url = f"http://127.0.0.1:{port}"
    wait_until_up(process, f"{url}/health", lambda status, body: status == 200 and json.loads(body)["status"] == "UP")
    return process, url


def post_json(url: str, document: dict) -> tuple[int, dict | str]:
    status, body = call("POST", url, json.dumps(document).encode(), {"Content-Type": "application/json"})
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode()


def polygon_mask(points: list[list[float]], height: int, width: int) -> np.ndarray:
    """A polygon region rasterised as Label Studio's COCO export does (percent to pixels, then the polygon's
    inside)."""
    import pycocotools.mask as mask_util
    flat = [v for x, y in points for v in (x * width / 100.0, y * height / 100.0)]
    return mask_util.decode(mask_util.frPyObjects([flat], height, width)).max(axis=2).astype(bool)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_the_backend_pre_labels_polygons_and_brushes_like_the_local_model(files, label_studio, elsewhere):
    names = [os.path.basename(path) for path in files["images"]]
    process, url = start_backend(files["weights"], {"LABEL_STUDIO_URL": label_studio.url,
                                                    "LABEL_STUDIO_API_KEY": "legacy-token-123"},
                                 "--confidence-threshold", "0.3", "--local-root", files["folder"])
    try:
        status, info = post_json(f"{url}/setup", {"project": "3.1700000000", "schema": BRUSH_CONFIG})
        assert status == 200 and info["model_version"].startswith("sha256:")
        tasks = [{"id": 1, "data": {"image": f"/data/upload/3/{names[0]}"}},
                 {"id": 2, "data": {"image": f"{elsewhere.url_here}/data/upload/3/{names[2]}"}},  # refused
                 {"id": 3, "data": {"image": f"/data/local-files/?d={names[1]}"}},  # read from --local-root
                 {"id": 4, "data": {"image": f"{label_studio.url}/data/upload/3/{names[3]}"}},
                 {"id": 5, "data": {"image": "/data/local-files/?d=../../etc/passwd"}}]  # refused
        local = adet.load(files["weights"], device="cpu", confidence=0.3)
        expected = [local(files["images"][k]) for k in (0, 2, 1, 3)]
        # Brush regions (the /setup label config), one entry per task in the tasks' order.
        status, answer = post_json(f"{url}/predict", {"tasks": tasks, "project": "3.1700000000"})
        assert status == 200 and len(answer["results"]) == 5, answer
        results = [entry["result"] for entry in answer["results"]]
        assert results[1] == [] and results[4] == [] and answer["results"][1]["score"] == 0.0
        for result, prediction in zip([results[0], results[2], results[3]], [expected[0], expected[2], expected[3]]):
            shown = [k for k, mask in enumerate(prediction.masks) if mask.any()]  # an empty mask is no region
            assert len(result) == len(shown) > 0
            height, width = prediction.instances.image_size
            for region, k in zip(result, shown):
                mask, name, score = prediction.masks[k], prediction.class_names[k], prediction.scores[k]
                assert (region["from_name"], region["to_name"], region["type"]) == ("paint", "photo", "brushlabels")
                assert (region["original_width"], region["original_height"]) == (width, height)
                assert region["value"]["brushlabels"] == [name] and region["score"] == pytest.approx(score)
                painted = decode_brush(region["value"]["rle"]).reshape(height, width, 4)[..., 3] == 255
                assert np.array_equal(painted, mask)  # identical pixels
        # Polygon regions (the request's own label config): "cat" is the project's "Kitten" by predicted_values.
        status, answer = post_json(f"{url}/predict", {"tasks": [{"id": 7, "data": {"picture": tasks[0]["data"][
            "image"]}}], "label_config": POLYGON_CONFIG.replace('"Cat"', '"Kitten" predicted_values="cat"')})
        regions, prediction = answer["results"][0]["result"], expected[0]
        kept = [k for k, mask in enumerate(prediction.masks) if mask.any()]
        assert status == 200 and len(regions) == len(kept) > 0
        height, width = prediction.instances.image_size
        for region, k in zip(regions, kept):
            assert region["value"]["polygonlabels"] == ["Kitten"] and prediction.class_names[k] == "cat"
            assert region["value"]["closed"] and all(0 <= v <= 100 for p in region["value"]["points"] for v in p)
            assert mask_iou(polygon_mask(region["value"]["points"], height, width), prediction.masks[k]) >= 0.9
        # A project without a label for the model's classes ("Cat" is not "cat"): nothing, and a count in the log.
        status, answer = post_json(f"{url}/predict", {"tasks": [{"id": 8, "data": {"picture": tasks[0]["data"][
            "image"]}}], "label_config": POLYGON_CONFIG})
        assert status == 200 and answer["results"][0]["result"] == [] and len(prediction) > 0
        # Bad requests: a status and one line, and the backend serves on.
        for document, words in (({"tasks": "x", "label_config": BRUSH_CONFIG}, 'list "tasks"'),
                                ({"tasks": [], "label_config": "<View/>"}, "no <PolygonLabels>"),
                                ({"tasks": [], "project": "99"}, "no label_config")):
            status, text = post_json(f"{url}/predict", document)
            assert status == 400 and words in text and text.count("\n") == 1, (document, text)
        assert post_json(f"{url}/webhook", {"action": "ANNOTATION_CREATED", "project": {"id": 3}})[0] == 201
        assert call("GET", f"{url}/health")[0] == 200
    finally:
        process.kill()
        log = process.communicate(timeout=30)[0]
    assert elsewhere.paths == []  # the other host was never called
    assert not any("passwd" in p for p in label_studio.paths)
    # Each task left without a prediction has its one-line reason in the log, and left-out classes are counted.
    assert "task 2: task image http://localhost:" in log and "task 5: task image /data/local-files/" in log, log
    assert f"task 8: {len(prediction)} detection(s) of classes the project has no label for left out (cat x" \
        f"{len(prediction)})" in log, log


def test_hostile_task_urls_are_refused_with_one_line_and_nothing_fetched(files, label_studio, elsewhere, tmp_path):
    name = os.path.basename(files["images"][0])
    images = TaskImages(label_studio.url, "legacy-token-123", files["folder"],
                        (f"{elsewhere.url_here}/public/",))
    before_here, before_there = len(label_studio.paths), len(elsewhere.paths)
    label_studio.redirect_to = f"{elsewhere.url_here}/data/upload/3/{name}"
    secret = tmp_path / "secret.png"
    secret.write_bytes(open(files["images"][0], "rb").read())
    hostile = [
        (f"{elsewhere.url_here}/data/upload/3/{name}", "neither LABEL_STUDIO_URL nor under an --allow-url-prefix"),
        (f"{elsewhere.url_here}/publicity/{name}", "neither LABEL_STUDIO_URL"),  # a prefix matches at a boundary
        (f"file://{secret}", "scheme file://"),
        (f"/data/local-files/?d=../{secret.parent.name}/secret.png", "not under --local-root"),
        (f"/data/local-files/?d={secret}", "not under --local-root"),
        ("s3://bucket/key.png", "scheme s3://"),
        ("/admin/users", "relative URL other than Label Studio's /data/"),
    ]
    for url, words in hostile:
        with pytest.raises(TaskImageError) as refused:
            images.fetch(url)
        assert words in str(refused.value) and "\n" not in str(refused.value), url
    assert len(label_studio.paths) == before_here and len(elsewhere.paths) == before_there  # nothing fetched
    with pytest.raises(TaskImageError, match="neither LABEL_STUDIO_URL"):  # a redirect out of the rules
        images.fetch(f"{label_studio.url}/redirect")
    assert label_studio.paths[-1] == "/redirect" and len(elsewhere.paths) == before_there
    # What the rules allow: Label Studio's files with its token, the allowed prefix without it, redirects within.
    image = open(files["images"][0], "rb").read()
    assert images.fetch(f"/data/upload/3/{name}") == image
    label_studio.redirect_to = f"/data/upload/3/{name}"
    assert images.fetch(f"{label_studio.url}/redirect") == image
    with pytest.raises(TaskImageError, match="answered 401"):  # the other host has no token of ours
        images.fetch(f"{elsewhere.url_here}/public/x.png")
    assert elsewhere.paths[-1] == "/public/x.png"


def test_a_personal_access_token_is_exchanged_for_an_access_token(files, label_studio):
    name = os.path.basename(files["images"][1])
    personal = jwt({"token_type": "refresh", "exp": int(time.time()) + 86400})
    label_studio.personal_token = personal
    images = TaskImages(label_studio.url, personal)
    assert images.fetch(f"/data/upload/3/{name}") == open(files["images"][1], "rb").read()
    assert label_studio.paths[-2:] == ["/api/token/refresh", f"/data/upload/3/{name}"]
    with pytest.raises(TaskImageError, match="refused to refresh the personal access token"):
        TaskImages(label_studio.url, jwt({"token_type": "refresh", "exp": 0})).fetch(f"/data/upload/3/{name}")
    with pytest.raises(TaskImageError, match="answered 401"):
        TaskImages(label_studio.url, "wrong-token").fetch(f"/data/upload/3/{name}")


def test_label_studio_command_errors_are_one_line(files, capsys):
    from adet.cli import main as embedmask
    assert embedmask(["label-studio", "--weights", files["weights"], "--local-root", "/no/such/folder"]) != 0
    assert "--local-root /no/such/folder: no such folder" in capsys.readouterr().err
    assert embedmask(["label-studio", "--weights", files["weights"], "--allow-url-prefix", "ftp://x"]) != 0
    assert "--allow-url-prefix ftp://x: not an http(s) URL" in capsys.readouterr().err
