import hashlib
import json
import os

import cv2
import numpy as np
import pytest
from PIL import Image

from adet.data import (
    DatasetCatalog,
    DatasetError,
    DatasetMapper,
    ImageReadError,
    MetadataCatalog,
    load_coco_json,
    read_image,
    register_coco_instances,
)
from adet.data.transforms import HFlipTransform, ResizeShortestEdge, ResizeTransform, shortest_edge_size

from .conftest import REFERENCE, make_tiny_cfg


@pytest.mark.parametrize("hw,expected", [
    ((480, 640), (800, 1067)),   # 1066.67 rounds half up
    ((427, 640), (800, 1199)),   # the spec's example (1199.06)
    ((512, 512), (800, 800)),
    ((100, 1000), (133, 1333)),  # long side capped at 1333
    ((640, 480), (1067, 800)),
])
def test_shortest_edge_sizes(hw, expected):
    assert shortest_edge_size(*hw, 800, 1333) == expected


@pytest.mark.parametrize("name,digest", [
    ("astronaut", "793f1ff61cf239bff575826ffa6085bcf56677e806ef57a7c22942a5b7c58ff1"),
    ("coffee", "9194db33bb2c92563899d848d2b92254674dfb6581c96c4ef15ee267f56dc1b6"),
])
def test_test_resize_is_bit_identical_to_detectron2(name, digest):
    """sha256 of the official pipeline's resized input (shared/reference/images/resized_800_1333)."""
    image = cv2.imread(os.path.join(REFERENCE, "images", f"{name}.png"), cv2.IMREAD_COLOR)
    resized = ResizeShortestEdge(800, 1333, "choice").get_transform(image).apply_image(image)
    assert hashlib.sha256(np.ascontiguousarray(resized).tobytes()).hexdigest() == digest


def test_coordinate_transforms():
    resize = ResizeTransform(100, 200, 50, 400)
    assert resize.apply_coords(np.array([[10.0, 20.0]])).tolist() == [[20.0, 10.0]]
    flip = HFlipTransform(400)
    assert flip.apply_box(np.array([[10.0, 5.0, 30.0, 25.0]])).tolist() == [[370.0, 5.0, 390.0, 25.0]]
    assert flip.apply_polygons([np.array([0.0, 0.0, 400.0, 1.0, 100.0, 2.0])])[0].tolist() == [
        400.0, 0.0, 0.0, 1.0, 300.0, 2.0]


def test_read_image_formats_exif_and_errors(tmp_path):
    gray = (np.arange(12 * 20) % 256).astype(np.uint8).reshape(12, 20)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    image = read_image(str(tmp_path / "gray.png"))
    assert image.shape == (12, 20, 3) and (image[:, :, 0] == gray).all()
    rgb = np.zeros((10, 30, 3), np.uint8)
    rgb[..., 0] = 255  # red
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    Image.fromarray(rgb).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    rotated = read_image(str(tmp_path / "rotated.jpg"), "BGR")
    assert rotated.shape == (30, 10, 3) and rotated[..., 2].mean() > 200 and rotated[..., 0].mean() < 50
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 garbage")
    with pytest.raises(ImageReadError, match="broken.jpg"):
        read_image(str(tmp_path / "broken.jpg"))
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(str(tmp_path / "missing.png"))


def write_coco(tmp_path, images, annotations, categories):
    (tmp_path / "images").mkdir(exist_ok=True)
    for info in images:
        cv2.imwrite(str(tmp_path / "images" / info["file_name"]), np.zeros((info["height"], info["width"], 3),
                                                                          np.uint8))
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return str(path), str(tmp_path / "images")


def test_load_coco_json_maps_ids_and_drops_bad_polygons(tmp_path, caplog):
    images = [{"id": 3, "file_name": "a.png", "height": 20, "width": 30}]
    annotations = [
        {"id": 1, "image_id": 3, "category_id": 7, "bbox": [1, 2, 5, 6], "iscrowd": 0,
         "segmentation": [[1, 2, 6, 2, 6, 8], [1, 2, 3, 4]]},  # second polygon has 2 points
        {"id": 2, "image_id": 3, "category_id": 2, "bbox": [0, 0, 1, 1], "iscrowd": 0, "segmentation": [[0, 0]]},
    ]
    json_file, root = write_coco(tmp_path, images, annotations, [{"id": 7, "name": "b"}, {"id": 2, "name": "a"}])
    dicts = load_coco_json(json_file, root, "test_coco_load")
    assert len(dicts) == 1 and dicts[0]["image_id"] == 3 and dicts[0]["file_name"].endswith("a.png")
    objects = dicts[0]["annotations"]
    assert len(objects) == 1 and objects[0]["category_id"] == 1 and objects[0]["segmentation"] == [[1, 2, 6, 2, 6, 8]]
    meta = MetadataCatalog.get("test_coco_load")
    assert meta.thing_classes == ["a", "b"] and meta.thing_dataset_id_to_contiguous_id == {2: 0, 7: 1}
    assert "1 annotation dropped: 1 without a valid polygon (>= 3 points, non-zero area) (ids 2)" in caplog.text
    assert "invalid polygons removed from an instance that has valid ones (ids 1)" in caplog.text
    with pytest.raises(DatasetError, match="does not exist"):
        load_coco_json(str(tmp_path / "nope.json"), root)
    with pytest.raises(DatasetError, match="image folder"):
        load_coco_json(json_file, str(tmp_path / "no_images"))


def test_register_and_catalog_errors(tmp_path):
    images = [{"id": 1, "file_name": "a.png", "height": 8, "width": 8}]
    json_file, root = write_coco(tmp_path, images, [], [{"id": 1, "name": "thing"}])
    register_coco_instances("test_registered", {}, json_file, root)
    try:
        assert len(DatasetCatalog.get("test_registered")) == 1
        assert MetadataCatalog.get("test_registered").json_file == json_file
        with pytest.raises(KeyError, match="did you mean 'test_registered'"):
            DatasetCatalog.get("test_registerd")
    finally:
        DatasetCatalog.remove("test_registered")
        MetadataCatalog.remove("test_registered")


def test_mapper_train_resizes_flips_and_drops_crowd_and_empty(tmp_path):
    cv2.imwrite(str(tmp_path / "img.png"), np.zeros((50, 100, 3), np.uint8))
    record = {"file_name": str(tmp_path / "img.png"), "height": 50, "width": 100, "image_id": 1, "annotations": [
        {"bbox": [10, 10, 20, 10], "bbox_mode": 1, "category_id": 2, "iscrowd": 0,
         "segmentation": [[10, 10, 30, 10, 30, 20, 10, 20]]},
        {"bbox": [0, 0, 5, 5], "bbox_mode": 1, "category_id": 1, "iscrowd": 1, "segmentation": [[0, 0, 5, 0, 5, 5]]},
        {"bbox": [200, 0, 5, 5], "bbox_mode": 1, "category_id": 0, "iscrowd": 0,  # outside the image
         "segmentation": [[200, 0, 205, 0, 205, 5]]},
    ]}
    mapper = DatasetMapper(ResizeShortestEdge((100,), 1000, "choice"), is_train=True, horizontal_flip=True, seed=0)
    flips = set()
    for _ in range(8):
        out = mapper(record)
        assert out["image"].shape == (3, 100, 200)
        instances = out["instances"]
        assert len(instances) == 1 and instances.gt_classes.tolist() == [2]
        box = instances.gt_boxes.tensor[0].tolist()
        assert box in ([20.0, 20.0, 60.0, 40.0], [140.0, 20.0, 180.0, 40.0])
        flips.add(box[0] == 140.0)
        assert instances.gt_masks.get_bounding_boxes().tensor[0].tolist() == box
    assert flips == {True, False}
    test_mapper = DatasetMapper.from_config(make_tiny_cfg(), is_train=False)
    out = test_mapper(record)
    assert out["image"].shape == (3, 80, 160) and "instances" not in out and out["height"] == 50


def test_a_process_holding_a_loader_iterator_still_exits():
    """The loaders' workers ignore SIGTERM (the trainer stops them itself), which is what multiprocessing ends them
    with at exit: an iterator kept alive to the end (by a traceback, a global) must not make the exit wait forever."""
    import subprocess
    import sys

    program = ("from adet.data.build import DataLoader, leave_stop_signals_to_the_trainer\n"
               "loader = DataLoader(range(1000), num_workers=2, worker_init_fn=leave_stop_signals_to_the_trainer)\n"
               "held = iter(loader)\n"
               "held.cycle = held\n"  # only a garbage collection would free it, and none comes before the exit
               "print(int(next(held)))\n")
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0 and done.stdout.strip() == "0", done.stderr[-2000:]


def test_the_exit_hook_ends_only_our_own_loader_workers():
    """The hook SIGKILLs our loader's workers left running, those still starting too (their init function has not
    run yet: the race that once hung the exit), and not a daemonic child of the host program that ignores SIGTERM
    too (which it once did)."""
    import subprocess
    import sys

    program = ("import multiprocessing, os, signal, time\n"
               "from adet.data import build\n"
               "def other(): signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)\n"
               "theirs = multiprocessing.Process(target=other, daemon=True); theirs.start()\n"
               "time.sleep(0.5)\n"  # the other child ignores SIGTERM by now, as our workers do
               "init = build.leave_stop_signals_to_the_trainer\n"
               "running = iter(build.DataLoader(range(1000), num_workers=2, worker_init_fn=init)); next(running)\n"
               "starting = iter(build.DataLoader(range(1000), num_workers=2, worker_init_fn=init))\n"
               "build._end_workers_left_running()\n"  # at once: the second loader's workers are still starting
               "ours = running._workers + starting._workers\n"
               "for w in ours: w.join(10)\n"
               "print([w.is_alive() for w in ours], theirs.is_alive())\n"
               "theirs.kill()\n")
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[0] == "[False, False, False, False] True"
