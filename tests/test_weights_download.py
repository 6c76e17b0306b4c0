"""Weights by URL against a local HTTP server on 127.0.0.1 (never the internet): a download verified and cached, the
caches users already have, a corrupt and an interrupted download, two processes racing, offline mode, hf://."""

import hashlib
import http.server
import io
import logging
import os
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest
import torch

from adet.checkpoint import DetectionCheckpointer, download, resolve_weight_path
from adet.cli.preflight import check_weights
from adet.errors import WeightFileError
from adet.modeling import build_model

from .conftest import ROOT, make_tiny_cfg


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.files: dict[str, bytes] = {}
        self.requests: Counter = Counter()
        self.release_when: list[str] = []  # /slow/ waits until these files exist (the racing processes' markers)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        server = self.server
        server.requests[self.path] += 1
        kind, _, name = self.path.lstrip("/").partition("/")
        body = server.files.get(name)
        if body is None:
            self.send_error(404, "Not Found")
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if kind == "cut":  # the connection drops halfway
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        if kind == "slow":
            deadline = time.time() + 60
            while not all(os.path.exists(p) for p in server.release_when) and time.time() < deadline:
                time.sleep(0.05)
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server():
    server = Server()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def caches(tmp_path, monkeypatch):
    """Empty caches of ours and of iopath, a working directory without models/, network allowed."""
    monkeypatch.setenv("EMBEDMASK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "iopath"))
    for name in ("EMBEDMASK_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def checkpoint_bytes():
    torch.manual_seed(3)
    model = build_model(make_tiny_cfg())
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict()}, buffer)
    return buffer.getvalue(), model.state_dict()


def test_a_url_is_downloaded_once_verified_cached_and_loads(server, caches, checkpoint_bytes):
    body, state_dict = checkpoint_bytes
    server.files["tiny.pth"] = body
    url = f"{server.url}/files/tiny.pth#sha256={hashlib.sha256(body).hexdigest()}"
    check_weights(url, required=True)  # what every command checks first: this downloads
    path = resolve_weight_path(url)
    assert path == os.path.join(str(caches / "cache"), f"127.0.0.1:{server.server_address[1]}", "files", "tiny.pth")
    assert open(path, "rb").read() == body and server.requests["/files/tiny.pth"] == 1
    assert sorted(os.listdir(os.path.dirname(path))) == ["tiny.pth", "tiny.pth.lock"]  # no partial file
    model = build_model(make_tiny_cfg())
    DetectionCheckpointer(model).load(url)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state_dict.items())
    assert server.requests["/files/tiny.pth"] == 1  # from the cache since


def test_detectron2_names_use_models_then_the_iopath_cache_then_download(server, caches, monkeypatch, caplog):
    server.files["R-50.pkl"] = b"pickle bytes"
    monkeypatch.setattr(download, "D2_DOWNLOAD_ROOT", f"{server.url}/files/")
    name = "detectron2://R-50.pkl"
    iopath = caches / "iopath" / "files" / "R-50.pkl"  # iopath keeps a URL's file under its path
    iopath.parent.mkdir(parents=True)
    iopath.write_bytes(b"from iopath")
    assert resolve_weight_path(name) == str(iopath)
    (caches / "models").mkdir()
    (caches / "models" / "R-50.pkl").write_bytes(b"from models")
    assert resolve_weight_path(name) == os.path.join("models", "R-50.pkl")
    assert server.requests["/files/R-50.pkl"] == 0
    os.remove(iopath)
    os.remove(caches / "models" / "R-50.pkl")
    with caplog.at_level(logging.INFO, logger="adet.checkpoint.download"):
        path = resolve_weight_path(name)
    assert open(path, "rb").read() == b"pickle bytes" and server.requests["/files/R-50.pkl"] == 1
    digest = hashlib.sha256(b"pickle bytes").hexdigest()
    assert f"sha256 {digest} (not known in advance: pin it with #sha256={digest})" in caplog.text


def test_a_corrupt_download_is_refused_and_nothing_is_kept(server, caches):
    server.files["corrupt.pth"] = b"these are not the bytes you pinned"
    url = f"{server.url}/files/corrupt.pth#sha256={hashlib.sha256(b'the real file').hexdigest()}"
    with pytest.raises(WeightFileError, match="sha256 is .*, expected .*: corrupt or replaced on the server"):
        resolve_weight_path(url)
    folder = caches / "cache" / f"127.0.0.1:{server.server_address[1]}" / "files"
    assert os.listdir(folder) == ["corrupt.pth.lock"]
    # A torch-hub style name carries its sha256 prefix, checked the same way.
    server.files["resnet50-0123abcd.pth"] = b"something else"
    with pytest.raises(WeightFileError, match="expected 0123abcd"):
        resolve_weight_path(f"{server.url}/files/resnet50-0123abcd.pth")


def test_an_interrupted_download_leaves_nothing_and_a_retry_succeeds(server, caches):
    server.files["big.pth"] = os.urandom(300_000)
    with pytest.raises(WeightFileError, match=r"/cut/big.pth: (download failed after|the download stopped at) "):
        resolve_weight_path(f"{server.url}/cut/big.pth")
    folder = caches / "cache" / f"127.0.0.1:{server.server_address[1]}" / "cut"
    assert os.listdir(folder) == ["big.pth.lock"]
    with pytest.raises(WeightFileError, match="the server answered 404 Not Found"):
        resolve_weight_path(f"{server.url}/files/missing.pth")
    path = resolve_weight_path(f"{server.url}/files/big.pth")
    assert open(path, "rb").read() == server.files["big.pth"]


def test_two_processes_download_once(server, caches):
    server.files["shared.pth"] = os.urandom(100_000)
    url = f"{server.url}/slow/shared.pth"
    markers = [str(caches / f"started{i}") for i in range(2)]
    server.release_when = markers  # the server answers once both processes are resolving
    script = ("import os, sys; from adet.checkpoint import resolve_weight_path; open(sys.argv[2], 'w').close(); "
              "print(resolve_weight_path(sys.argv[1]))")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    processes = [subprocess.Popen([sys.executable, "-c", script, url, marker], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for marker in markers]
    outputs = [p.communicate(timeout=300) for p in processes]
    server.release_when = []
    assert [p.returncode for p in processes] == [0, 0], [err[-1000:] for _, err in outputs]
    paths = {out.strip().splitlines()[-1] for out, _ in outputs}
    assert len(paths) == 1 and open(paths.pop(), "rb").read() == server.files["shared.pth"]
    assert server.requests["/slow/shared.pth"] == 1


@pytest.mark.parametrize("variable", ["EMBEDMASK_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_mode_names_the_file_to_put_and_where(server, caches, monkeypatch, variable):
    server.files["offline.pth"] = b"x"
    monkeypatch.setenv(variable, "1")
    with pytest.raises(WeightFileError, match=r"downloads are off .*: download http://127.0.0.1:\d+/files/offline.pth "
                                              r"elsewhere and put it at models/offline.pth"):
        resolve_weight_path(f"{server.url}/files/offline.pth")
    assert server.requests["/files/offline.pth"] == 0


def test_hf_locations_resolve_through_the_hub_cache(caches, monkeypatch):
    pytest.importorskip("huggingface_hub")
    hub = caches / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = hub / "models--owner--repo" / "snapshots" / commit / "weights"
    snapshot.mkdir(parents=True)
    (snapshot / "model.pth").write_bytes(b"hub file")
    (hub / "models--owner--repo" / "refs").mkdir()
    (hub / "models--owner--repo" / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    path = resolve_weight_path("hf://owner/repo/weights/model.pth")
    assert open(path, "rb").read() == b"hub file"
    assert open(resolve_weight_path(f"hf://owner/repo/weights/model.pth@{commit}"), "rb").read() == b"hub file"
    with pytest.raises(WeightFileError, match=r"^hf://owner/repo/other.pth: \w+"):
        resolve_weight_path("hf://owner/repo/other.pth")
    with pytest.raises(WeightFileError, match="expected hf://owner/repo/path/to/file"):
        resolve_weight_path("hf://owner/model.pth")
