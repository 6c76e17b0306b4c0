"""``embedmask label-studio`` connected to a real Label Studio (1.23.2, SQLite, on 127.0.0.1) and driven with
Label Studio's own client library: a user creates a project, uploads images, connects the backend and retrieves
predictions; what Label Studio stores equals ``adet.load``'s detections (brush pixels identical after the SDK's own
decoder, polygons with IoU >= 0.9).

Label Studio pins half the world, so it lives in its own virtual environment ($EMBEDMASK_LABEL_STUDIO_VENV, default
~/.cache/embedmask/label-studio-1.23.2), made here with pip on first use (a minute or two); without a package index
the test skips, unless EMBEDMASK_REQUIRE_LABEL_STUDIO=1 (.ci/run) makes that a failure.
"""

import json
import os
import subprocess
import sys
import time
import urllib.error

import numpy as np
import pytest

import adet

from .conftest import ROOT
from .test_label_studio import BRUSH_CONFIG, POLYGON_CONFIG, mask_iou, polygon_mask, start_backend
from .test_serve import call, free_port, tiny_model_files

pytest.importorskip("fastapi")
pytestmark = pytest.mark.slow

LABEL_STUDIO = "label-studio==1.23.2"
TOKEN = "embedmask-test-token-0123456789"  # the default user's legacy API token (--user-token)


def label_studio_venv() -> str:
    venv = os.environ.get("EMBEDMASK_LABEL_STUDIO_VENV") or os.path.expanduser(
        "~/.cache/embedmask/label-studio-1.23.2")
    if os.path.exists(os.path.join(venv, "bin", "label-studio")):
        return venv
    made = subprocess.run(f"{sys.executable} -m venv {venv} && {venv}/bin/pip install -q {LABEL_STUDIO}",
                          shell=True, capture_output=True, text=True, timeout=1200)
    if made.returncode != 0:
        reason = f"could not install {LABEL_STUDIO} into {venv}: {(made.stderr or made.stdout).strip()[-300:]}"
        if os.environ.get("EMBEDMASK_REQUIRE_LABEL_STUDIO") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return venv


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    """A fresh Label Studio with one user whose legacy token is TOKEN; yields (venv, url)."""
    venv = label_studio_venv()
    data = tmp_path_factory.mktemp("label-studio")
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", HOME=str(data), LATEST_VERSION_CHECK="false",
               # The ML backend runs on this machine: Label Studio 1.23 refuses a backend on a loopback or private
               # address unless ML_BLOCK_LOCAL_IP=false, and fails connecting it (the training webhook it adds) unless
               # SSRF_PROTECTION_ENABLED=false, as docs/prelabelling.md tells a user running both on one network.
               ML_BLOCK_LOCAL_IP="false", SSRF_PROTECTION_ENABLED="false",
               LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true")
    process = subprocess.Popen(
        [f"{venv}/bin/label-studio", "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port),
         "--data-dir", str(data), "--username", "annotator@example.com", "--password", "embedmask-test",
         "--user-token", TOKEN, "--log-level", "WARNING"],
        cwd=str(data), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 240  # the first start migrates a new SQLite database
    while True:
        assert process.poll() is None, process.stdout.read()[-3000:]
        try:
            if call("GET", f"{url}/health")[0] == 200:
                break
        except (urllib.error.URLError, ConnectionError):
            pass
        if time.time() > deadline:
            process.kill()
            raise AssertionError(f"Label Studio did not start: {process.communicate()[0][-3000:]}")
        time.sleep(0.5)
    yield venv, url
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


def stored_predictions(venv: str, url: str, backend: str, config: str, images: list[str], folder) -> tuple:
    """Label Studio's stored predictions for a new project with ``config`` and ``images``, and their brush masks."""
    config_file, out = folder / "config.xml", folder / "predictions.npz"
    config_file.write_text(config)
    subprocess.run([f"{venv}/bin/python", os.path.join(ROOT, "tests", "label_studio_driver.py"), url, TOKEN,
                    backend, str(config_file), str(out), *images], check=True, timeout=300,
                   env=dict(os.environ, OMP_NUM_THREADS="1"))
    arrays = np.load(out)
    return json.loads(str(arrays["predictions"])), arrays


def test_label_studio_stores_the_models_regions(label_studio, tmp_path):
    venv, url = label_studio
    files = tiny_model_files(tmp_path)
    process, backend = start_backend(files["weights"], {"LABEL_STUDIO_URL": url, "LABEL_STUDIO_API_KEY": TOKEN},
                                     "--confidence-threshold", "0.3")
    try:
        local = adet.load(files["weights"], device="cpu", confidence=0.3)
        expected = {os.path.basename(p): local(p) for p in files["images"]}
        # Brush regions: identical pixels.
        (tmp_path / "brush").mkdir()
        predictions, masks = stored_predictions(venv, url, backend, BRUSH_CONFIG, files["images"], tmp_path / "brush")
        assert sorted(p["image"] for p in predictions) == sorted(expected)  # one prediction per uploaded image
        compared = {"brush": 0, "polygon": 0}
        for i, stored in enumerate(predictions):
            prediction = expected[stored["image"]]
            shown = [k for k, mask in enumerate(prediction.masks) if mask.any()]
            assert stored["model_version"].startswith("sha256:") and len(stored["result"]) == len(shown)
            for j, (region, k) in enumerate(zip(stored["result"], shown)):
                assert region["value"]["brushlabels"] == [prediction.class_names[k]]
                assert region["score"] == pytest.approx(prediction.scores[k])
                assert np.array_equal(masks[f"mask_{i}_{j}"], prediction.masks[k])
                compared["brush"] += 1
        # Polygon regions, "cat" mapped to the project's "Kitten" by predicted_values: IoU >= 0.9.
        (tmp_path / "polygon").mkdir()
        config = POLYGON_CONFIG.replace('"Cat"', '"Kitten" predicted_values="cat"')
        predictions, _ = stored_predictions(venv, url, backend, config, files["images"][:2], tmp_path / "polygon")
        assert sorted(p["image"] for p in predictions) == sorted(os.path.basename(p) for p in files["images"][:2])
        for stored in predictions:
            prediction = expected[stored["image"]]
            height, width = prediction.instances.image_size
            kept = [k for k, mask in enumerate(prediction.masks) if mask.any()]
            assert len(stored["result"]) == len(kept)
            for region, k in zip(stored["result"], kept):
                assert region["value"]["polygonlabels"] == ["Kitten"] and prediction.class_names[k] == "cat"
                assert mask_iou(polygon_mask(region["value"]["points"], height, width), prediction.masks[k]) >= 0.9
                compared["polygon"] += 1
        assert compared["brush"] >= 10 and compared["polygon"] >= 5, compared
    finally:
        process.kill()
        log = process.communicate(timeout=30)[0]
    assert "Traceback" not in log, log
