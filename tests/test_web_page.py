"""``embedmask demo``, the model's web page, driven in a real headless Chromium (Debian's chromium and
chromium-driver, through Selenium) and through its API with ``gradio_client``: the page's detections equal
``embedmask predict --json``'s, the threshold slider redraws with fewer rows, nothing is fetched from another host;
``--write-space`` writes a Space whose app runs from the wheel it built."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from adet.cli import main as embedmask

from .conftest import ROOT
from .test_serve import assert_same_detections, call, free_port, tiny_model_files, wait_until_up

gradio_client = pytest.importorskip("gradio_client")
pytestmark = pytest.mark.slow

ARTIFACTS = os.environ.get("EMBEDMASK_TEST_ARTIFACTS", os.path.join(ROOT, "build", "test-artifacts"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return tiny_model_files(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def reference(files, tmp_path_factory):
    """``embedmask predict --json`` (default threshold, 0.5) of the images, by file name."""
    path = tmp_path_factory.mktemp("reference") / "results.json"
    assert embedmask(["predict", "--weights", files["weights"], "--input", files["folder"], "--json", str(path),
                      "--workers", "0", "--device", "cpu"]) == 0
    by_name = {os.path.basename(p): [] for p in files["images"]}
    for record in json.loads(path.read_text()):
        by_name[os.path.basename(record["file_name"])].append(record)
    return by_name


def start(command: list[str], env: dict, cwd: str, port: int, page: str = "/") -> subprocess.Popen:
    """A page server started by ``command``, once its page (at ``page``) answers."""
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=dict(os.environ, OMP_NUM_THREADS="1", GRADIO_ANALYTICS_ENABLED="False", **env))
    wait_until_up(process, f"http://127.0.0.1:{port}{page}")
    return process


@pytest.fixture(scope="module")
def second_weights(files):
    """Another checkpoint of the tiny model (other class biases): the page's model to compare."""
    import torch

    checkpoint = torch.load(files["weights"], weights_only=False)
    bias = checkpoint["model"]["proposal_generator.fcos_head.cls_logits.bias"]
    bias.normal_(0, 2, generator=torch.Generator().manual_seed(7))
    path = os.path.join(os.path.dirname(files["weights"]), "tiny_b.pth")
    torch.save(checkpoint, path)
    return path


@pytest.fixture(scope="module")
def page(files, second_weights):
    port = free_port()
    process = start([sys.executable, "-m", "adet", "demo", "--weights", files["weights"], second_weights, "--device",
                     "cpu", "--port", str(port)], {"PYTHONPATH": ROOT}, ROOT, port)
    yield f"http://127.0.0.1:{port}"
    process.terminate()
    process.communicate(timeout=30)


def browser():
    from selenium import webdriver

    driver_path = shutil.which("chromedriver")
    chromium = shutil.which("chromium")
    if driver_path is None or chromium is None:
        reason = "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
        if os.environ.get("EMBEDMASK_REQUIRE_BROWSER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1200"):
        options.add_argument(flag)
    return webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_path), options=options)


def table_rows(driver) -> list[list[str]]:
    """The detections table's rows as shown (Gradio 6's data grid), read in one step: it re-renders while read."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#detections [role=row].virtual-row')).map("
        "r => Array.from(r.querySelectorAll('[role=gridcell]')).map(c => c.innerText.trim()))")


def thresholds_between_scores(scores: list[float]) -> tuple[float, float]:
    """Two slider values (steps of 0.01) keeping a few detections (all rows in view) and fewer."""
    picks = []
    for t in [v / 100 for v in range(99, 50, -1)]:
        count = sum(s >= t for s in scores)
        if 0 < count <= 10 and (not picks or count > picks[-1][1]):
            picks.append((t, count))
    assert len(picks) >= 2, scores
    return picks[-1][0], picks[0][0]


def set_threshold(driver, value: float) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.CSS_SELECTOR, "#threshold input[type=number]")  # the slider's own number box
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(str(value), Keys.ENTER)


def test_the_page_in_a_browser_shows_predicts_detections(page, files, reference):
    pytest.importorskip("selenium")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    path = files["images"][1]
    want = reference[os.path.basename(path)]  # predict --json at 0.5: every detection the page can show
    some, fewer = thresholds_between_scores([w["score"] for w in want])
    driver = browser()
    try:
        driver.get(page)
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "input[type=file]"))
        driver.find_elements(By.CSS_SELECTOR, "input[type=file]")[0].send_keys(path)  # the page's first file input
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#overlay img") and table_rows(d))
        # At a threshold keeping a few detections, the table is predict's detections at that threshold.
        set_threshold(driver, some)
        shown = [w for w in want if w["score"] >= some]
        wait.until(lambda d: len(table_rows(d)) == len(shown))
        rows = table_rows(driver)
        assert [(row[1], float(row[2])) for row in rows] == [(w["category_name"], round(w["score"], 3))
                                                            for w in shown]
        for row, w in zip(rows, shown):  # the box: x y width height in pixels
            assert [float(v) for v in row[3:7]] == pytest.approx(w["bbox"], abs=0.051)
        # A higher threshold redraws with fewer rows, without running the model again.
        set_threshold(driver, fewer)
        expected = sum(w["score"] >= fewer for w in want)
        wait.until(lambda d: len(table_rows(d)) == expected)
        assert 0 < expected < len(shown)
        legend = driver.find_elements(By.CSS_SELECTOR, "#overlay .legend-item")
        os.makedirs(ARTIFACTS, exist_ok=True)
        assert driver.save_screenshot(os.path.join(ARTIFACTS, "demo_page.png"))
        # Everything the page loaded came from this server: fonts and scripts ship with the package, no CDN.
        loaded = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert loaded and all(url.startswith(page) for url in loaded), [u for u in loaded if not u.startswith(page)]
    finally:
        driver.quit()
    assert len(legend) == expected  # one overlay annotation per row, named on the image


def test_the_pages_api_gives_predicts_detections_and_one_line_errors(page, files, reference, tmp_path):
    client = gradio_client.Client(page, verbose=False)
    for path in files["images"][:2]:
        want = reference[os.path.basename(path)]
        got = client.predict(gradio_client.handle_file(path), api_name="/detect")  # threshold 0.5, first model
        assert_same_detections(got, want)
        # predict --confidence-threshold T keeps the detections scoring at least T: so does the API.
        higher = [w for w in want if w["score"] >= 0.75]
        assert 0 < len(higher) < len(want)
        assert_same_detections(client.predict(gradio_client.handle_file(path), 0.75, "tiny.pth", api_name="/detect"),
                        higher)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(gradio_client.exceptions.AppError) as error:
        client.predict(gradio_client.handle_file(str(text)), 0.5, api_name="/detect")
    assert str(error.value) == "notes.png: not a readable image (cannot identify image file 'notes.png')"


def test_the_page_compares_two_checkpoints_and_filters_classes(page, files, reference, second_weights):
    """The page's own handler (what a new image runs), called as the browser calls it."""
    import adet

    path = files["images"][0]
    client = gradio_client.Client(page, verbose=False)
    other = adet.load(second_weights, device="cpu")(path)
    want = [w for w in reference[os.path.basename(path)] if w["score"] >= 0.72]
    outputs = client.predict(gradio_client.handle_file(path), "tiny.pth", "tiny_b.pth", 0.72, ["cat", "dog", "bird"],
                             False, 640, 0.2, False, api_name="/page")
    overlay, rows, timing, png, coco, overlay_2, rows_2, timing_2 = outputs
    with open(coco) as f:
        assert_same_detections(json.load(f), want)  # the COCO JSON download is predict --json's
    assert [row[1] for row in rows["data"]] == [w["category_name"] for w in want]
    assert len(overlay["value"]["annotations"]) == len(want) and "tiny.pth" in timing and "model" in timing
    import cv2
    assert cv2.imread(png).shape[:2] == cv2.imread(path).shape[:2]  # the overlay PNG of the whole image
    kept_2 = [(name, round(float(s), 3)) for name, s in zip(other.class_names, other.scores) if s >= 0.72]
    assert [(row[1], row[2]) for row in rows_2["data"]] == kept_2 and "tiny_b.pth" in timing_2
    assert len(overlay_2["value"]["annotations"]) == len(kept_2) > 0
    assert kept_2 != [(w["category_name"], round(w["score"], 3)) for w in want]  # a different model, another answer
    # The class filter keeps only the classes asked for, in both models' views.
    for classes in (["cat"], ["bird"]):
        filtered = client.predict(gradio_client.handle_file(path), "tiny.pth", "tiny_b.pth", 0.72, classes, False,
                                  640, 0.2, False, api_name="/page")
        assert [row[1] for row in filtered[1]["data"]] == [w["category_name"] for w in want
                                                           if w["category_name"] in classes]
        assert [row[1] for row in filtered[6]["data"]] == [name for name, _ in kept_2 if name in classes]
        assert len(filtered[1]["data"]) + len(filtered[6]["data"]) < len(want) + len(kept_2)  # something left out

def test_write_space_makes_a_space_that_runs_from_its_wheel(files, reference, tmp_path):
    space = tmp_path / "space"
    assert embedmask(["demo", "--weights", files["weights"], "--write-space", str(space)]) == 0
    readme = (space / "README.md").read_text()
    import gradio
    front = readme.split("---")[1]
    assert "sdk: gradio" in front and f"sdk_version: {gradio.__version__}" in front and "app_file: app.py" in front
    index, wheel = (space / "requirements.txt").read_text().split()[-2:]
    assert index == "https://download.pytorch.org/whl/cpu"  # the Space's PyTorch: CPU wheels
    assert wheel.startswith("./embedmask-") and wheel.endswith(".whl") and (space / wheel).is_file()
    app = (space / "app.py").read_text()
    assert "launch()" in app and "7860" not in app and "127.0.0.1" not in app  # Spaces choose host and port
    assert (space / "weights" / "tiny.pth").read_bytes() == open(files["weights"], "rb").read()
    # The Space as Hugging Face runs it: app.py with this package from the wheel alone (not this checkout).
    port = free_port()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    process = start([sys.executable, str(space / "app.py")], {"PYTHONPATH": str(space / wheel),
                                                             "GRADIO_SERVER_PORT": str(port)}, str(elsewhere), port)
    try:
        client = gradio_client.Client(f"http://127.0.0.1:{port}", verbose=False)
        path = files["images"][2]
        assert_same_detections(client.predict(gradio_client.handle_file(path), api_name="/detect"),
                        reference[os.path.basename(path)])
    finally:
        process.terminate()
        log = process.communicate(timeout=30)[0]
    assert "Traceback" not in log, log


def test_the_page_on_the_server_goes_through_its_queue(files, reference):
    port = free_port()
    process = start([sys.executable, "-m", "adet", "serve", "--weights", files["weights"], "--device", "cpu",
                     "--port", str(port), "--demo"], {"PYTHONPATH": ROOT}, ROOT, port, "/demo/")
    url = f"http://127.0.0.1:{port}"
    try:
        while call("GET", f"{url}/health")[0] != 200:
            time.sleep(0.2)

        def model_calls() -> float:
            metrics = call("GET", f"{url}/metrics")[1].decode()
            return float(next(line.split()[-1] for line in metrics.splitlines()
                              if line.startswith("embedmask_batch_size_count")))

        before = model_calls()
        client = gradio_client.Client(f"{url}/demo/", verbose=False)
        path = files["images"][3]
        assert_same_detections(client.predict(gradio_client.handle_file(path), api_name="/detect"),
                        reference[os.path.basename(path)])
        assert model_calls() == before + 1  # the page's image was a batch of the server's model
        assert call("GET", f"{url}/health")[0] == 200
    finally:
        stopping = time.time()
        process.terminate()  # with the client's heartbeat stream still open, as a browser tab holds one
        log = process.communicate(timeout=60)[0]
    assert time.time() - stopping < 10, "SIGTERM waited for the page's open stream"
    assert "Traceback" not in log, log


def test_the_pages_tiles_and_augmentation_are_predicts(files, tmp_path):
    import asyncio

    import torch

    import adet
    from adet.config import CfgNode
    from adet.demo.page import LocalDetector

    # The tiny checkpoint with two augmentation scales in its config (the default nine take long on a CPU).
    checkpoint = torch.load(files["weights"], weights_only=False)
    cfg = CfgNode.load_cfg(checkpoint["config"])
    cfg.TEST.AUG.MIN_SIZES, cfg.TEST.AUG.MAX_SIZE = (96, 160), 400
    checkpoint["config"] = cfg.dump()
    weights = str(tmp_path / "tiny_tta.pth")
    torch.save(checkpoint, weights)
    detector = LocalDetector([weights], device="cpu")
    path = files["images"][0]
    for (tile, overlap, augment), model in (
            ((64, 0.25, False), adet.load(weights, device="cpu", slice=(64, 64), overlap=0.25)),
            ((None, 0.0, True), adet.load(weights, device="cpu", overrides=["TEST.AUG.ENABLED", True]))):
        page = asyncio.run(detector.detect(detector.names[0], path, tile, overlap, augment)).prediction
        plain = asyncio.run(detector.detect(detector.names[0], path, None, 0.0, False)).prediction
        assert page.to_json() != plain.to_json()  # the option changed the answer
        assert_same_detections(page.to_json(), model(path).to_json())


def test_demo_command_errors_are_one_line(files, capsys):
    for argv, words in (
            (["demo", "--weights", "no/such.pth"], "--weights no/such.pth: no such file"),
            (["demo", "--weights", files["weights"], "--examples", "no/such.png"],
             "--examples no/such.png: no such file"),
            (["demo", "--weights", files["weights"], "--port", "0"], "--port 0: not a port number"),
            (["serve", "--weights", files["weights"], "--demo", "--api-key", "k"], "--demo with --api-key")):
        assert embedmask(argv) != 0
        err = capsys.readouterr().err.strip()
        assert words in err and "\n" not in err and "Traceback" not in err, (argv, err)
