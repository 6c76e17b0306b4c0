"""Our YOLO-seg files read by Ultralytics' own dataset code, and Ultralytics' COCO converter's output read by us.

Ultralytics requires opencv-python, which fights opencv-python-headless over ``cv2``: it never goes into an extra.
The test installs it with ``--no-deps`` into a scratch virtual environment over this interpreter's packages (the
registry is the one network access, as for the install test) and runs it there."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from adet.data.convert import write_yolo
from adet.data.sources import read_source
from adet.data.synthetic import write_split

pytestmark = pytest.mark.slow

READ = """
import json, sys
from ultralytics.data.dataset import YOLODataset
from ultralytics.data.utils import check_det_dataset
data = check_det_dataset(sys.argv[1])
dataset = YOLODataset(img_path=data["train"], data=data, task="segment", augment=False, imgsz=160, cache=False)
print("LABELS " + json.dumps([{"file": os.path.basename(label["im_file"]), "classes": label["cls"].reshape(-1)
      .astype(int).tolist(), "segments": [s.reshape(-1).tolist() for s in label["segments"]]}
      for label in dataset.labels]))
""".replace("import json, sys", "import json, os, sys")

CONVERT = """
import sys
from ultralytics.data.converter import convert_coco
convert_coco(labels_dir=sys.argv[1], save_dir=sys.argv[2], use_segments=True, cls91to80=False)
"""


@pytest.fixture(scope="module")
def ultralytics_python(tmp_path_factory):
    venv = tmp_path_factory.mktemp("ultralytics") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=300)
    done = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-deps", "ultralytics>=8.3"],
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        pytest.skip(f"ultralytics could not be installed: {done.stderr.strip().splitlines()[-1:]}")
    return str(venv / "bin" / "python")


def run(python, script, *args, cwd):
    env = dict(os.environ, YOLO_CONFIG_DIR=str(cwd / "ultralytics_settings"), OMP_NUM_THREADS="1")
    done = subprocess.run([python, "-c", script, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("interop")
    json_file = write_split(str(root), "shapes", 6, seed=3)
    return root, json_file


def test_ultralytics_reads_our_yolo_export_with_the_same_instances(ultralytics_python, dataset, tmp_path):
    root, json_file = dataset
    data, image_root = read_source(json_file, images=str(root / "shapes"))
    write_yolo(data, image_root, str(tmp_path / "yolo"), "train")
    out = run(ultralytics_python, READ, tmp_path / "yolo" / "data.yaml", cwd=tmp_path)
    theirs = {label["file"]: label for label in json.loads(out.split("LABELS ", 1)[1])}
    assert len(theirs) == len(data["images"]) == 6
    single = 0
    for image in data["images"]:  # against the source, not our own reading of the files
        source = [a for a in data["annotations"] if a["image_id"] == image["id"]]
        label = theirs[image["file_name"]]
        assert label["classes"] == [a["category_id"] - 1 for a in source]  # COCO ids 1..4: classes 0..3
        for annotation, segment in zip(source, label["segments"]):
            if len(annotation["segmentation"]) == 1:  # parts are bridged into one polygon
                single += 1
                pixels = np.asarray(segment).reshape(-1, 2) * (image["width"], image["height"])
                assert np.allclose(pixels.reshape(-1), annotation["segmentation"][0], atol=1e-3)
    assert single > 10


def test_we_read_what_ultralytics_converter_writes(ultralytics_python, dataset, tmp_path):
    root, json_file = dataset
    (tmp_path / "annotations").mkdir()
    shutil.copyfile(json_file, tmp_path / "annotations" / "shapes.json")
    run(ultralytics_python, CONVERT, tmp_path / "annotations", tmp_path / "converted", cwd=tmp_path)
    shutil.copytree(root / "shapes", tmp_path / "converted" / "images" / "shapes")  # its labels' images
    (tmp_path / "converted" / "data.yaml").write_text(
        "train: images/shapes\nval: images/shapes\nnames: [circle, square, triangle, star]\n")  # from here
    theirs, _ = read_source(str(tmp_path / "converted" / "data.yaml"))
    source, _ = read_source(json_file, images=str(root / "shapes"))
    assert len(theirs["images"]) == 6 and len(theirs["annotations"]) == len(source["annotations"]) > 10
    for a, b in zip(source["annotations"], theirs["annotations"]):
        assert a["category_id"] - 1 == b["category_id"]  # COCO ids 1..4 are Ultralytics' classes 0..3
        assert np.allclose(a["bbox"][:2], b["bbox"][:2], atol=1.0)
