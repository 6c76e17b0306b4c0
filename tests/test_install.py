"""A non-editable install (``pip install .``) into a fresh virtual environment, used from another directory: what a
user of a wheel gets must train, predict from the checkpoint alone, and write results pycocotools scores."""

import json
import os
import subprocess
import sys

import cv2
import pytest

from .conftest import ROOT, shapes_image

pytestmark = pytest.mark.slow


def run(command, cwd, env, timeout=900):
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(map(str, command))}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def test_wheel_install_trains_predicts_and_writes_scorable_json(tmp_path):
    venv = tmp_path / "venv"
    # The dependencies (torch...) come from this interpreter's site-packages; the package itself is built and
    # installed non-editable, without network.
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=300)
    python, embedmask = venv / "bin" / "python", venv / "bin" / "embedmask"
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist",
         ROOT], tmp_path, None)
    wheel = next((tmp_path / "dist").glob("embedmask-*.whl"))
    # --force-reinstall: an editable install of the same version in the system site-packages would count as
    # already installed, and the venv would import the checkout.
    run([python, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", wheel], tmp_path, None)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "data"), OMP_NUM_THREADS="2")
    env.pop("PYTHONPATH", None)
    location = run([python, "-c", "import adet; print(adet.__file__)"], work, env).stdout.strip()
    assert location.startswith(str(venv)), location  # the installed copy, not the checkout

    run([embedmask, "train", "--config-file", "EmbedMask/Synthetic.yaml", "SOLVER.MAX_ITER", "3",
         "SOLVER.IMS_PER_BATCH", "2", "DATASETS.TEST", "()", "OUTPUT_DIR", "out", "DATALOADER.NUM_WORKERS", "0"],
        work, env)
    assert (work / "out" / "model_final.pth").is_file() and (work / "out" / "config.yaml").is_file()

    images = work / "val2017"
    images.mkdir()
    gt_images = []
    for image_id in (632, 724):
        name = f"{image_id:012d}.jpg"
        cv2.imwrite(str(images / name), shapes_image(128, 160, seed=image_id)[0])
        gt_images.append({"id": image_id, "file_name": name, "height": 128, "width": 160})
    gt = {"images": gt_images, "annotations": [
        {"id": 1, "image_id": 632, "category_id": 2, "bbox": [10, 10, 40, 50], "area": 2000.0, "iscrowd": 0,
         "segmentation": [[10, 10, 50, 10, 50, 60, 10, 60]]}],
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(["circle", "square", "triangle", "star"])]}
    (work / "gt.json").write_text(json.dumps(gt))
    run([embedmask, "predict", "--weights", "out/model_final.pth", "--input", "val2017", "--output", "drawn",
         "--json", "results.json", "--confidence-threshold", "0"], work, env)
    drawn = sorted(os.listdir(work / "drawn"))  # with the result shards a rerun resumes from
    assert drawn == ["000000000632.jpg", "000000000724.jpg", "predictions.rank0.jsonl", "predictions.run.json"]
    check = ("from pycocotools.coco import COCO; import json; gt = COCO('gt.json'); "
             "res = json.load(open('results.json')); gt.loadRes(res); "
             "print(json.dumps({'count': len(res), 'images': sorted({r['image_id'] for r in res}), "
             "'categories': sorted({r['category_id'] for r in res})}))")
    summary = json.loads(run([python, "-c", check], work, env).stdout.strip().splitlines()[-1])
    assert summary["count"] > 0 and set(summary["images"]) <= {632, 724} and set(summary["categories"]) <= {1, 2, 3, 4}

    # The documentation's five lines of the Python API (train, val, export), with a few iterations.
    page = open(os.path.join(ROOT, "docs", "train.md")).read()
    block = page.split("<!-- five-lines -->")[1].split("<!-- /five-lines -->")[0]
    code = block.split("```python")[1].split("```")[0]
    assert len(code.strip().splitlines()) == 5 and "iterations=1500" in code
    # 80 iterations and threshold 0: the fewest for a model that finds some shapes (segm AP ~0.2, bbox ~1.5), so
    # that the AP printed is about detections, not 0 == 0.
    (work / "five_lines.py").write_text(code.replace(
        "iterations=1500", "iterations=80, batch=4, workers=0, **{'MODEL.FCOS.INFERENCE_TH_TEST': 0.0}"))
    done = run([python, "five_lines.py"], work, env)
    printed = [line for line in done.stdout.splitlines() if line.replace(".", "", 1).isdigit()]  # print(AP)
    # The printed segm AP is pycocotools' on the results val wrote (masks alone, as detectron2 scores them).
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    truth = COCO(str(tmp_path / "data" / "synthetic" / "synthetic_val.json"))
    written = json.load(open(work / "output" / "val" / "inference" / "coco_instances_results.json"))
    assert len(written) > 1000  # up to 100 detections on each of the 100 images
    check = COCOeval(truth, truth.loadRes([{k: v for k, v in r.items() if k != "bbox"} for r in written]), "segm")
    check.evaluate()
    check.accumulate()
    check.summarize()
    assert len(printed) == 1 and float(printed[0]) == pytest.approx(100 * check.stats[0], abs=1e-9)
    assert check.stats[0] > 0 and check.stats[8] > 0  # AP and AR@100: the detections found objects
    assert {"model_final.pth", "model.onnx"} <= set(os.listdir(work / "output" / "api"))
