"""The Python API: adet.load on a checkpoint alone, every input type, results, and the README's example as written."""

import os
import re

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import adet
from adet.api import image_id_from_name, mask_to_polygons
from adet.modeling import build_model

from .conftest import ROOT, make_tiny_cfg, shapes_image


def save_checkpoint(path, class_names=("cat", "dog", "bird"), category_ids=(3, 7, 9)):
    cfg = make_tiny_cfg()
    torch.manual_seed(0)
    state = build_model(cfg).state_dict()
    state["proposal_generator.fcos_head.bbox_pred.bias"] += 1.5
    state["proposal_generator.fcos_head.cls_logits.bias"].normal_(0, 2, generator=torch.Generator().manual_seed(0))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save({"model": state, "config": cfg.dump(), "class_names": list(class_names),
                "category_ids": list(category_ids)}, path)
    return path


def test_readme_example_runs_as_written(tmp_path, monkeypatch):
    readme = open(os.path.join(ROOT, "README.md")).read()
    example = re.search(r"## Python API\s+```python\n(.*?)```", readme, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    save_checkpoint("models/EmbedMask_synthetic.pth")
    os.makedirs("datasets/synthetic/held_out")
    cv2.imwrite("datasets/synthetic/held_out/synthetic_0.png", shapes_image(96, 128)[0])
    namespace = {}
    exec(compile(example, "README.md", "exec"), namespace)
    result = namespace["result"]
    assert len(result) > 0 and (result.scores >= 0.5).all()
    assert cv2.imread("demo/outputs/api_example.png").shape == (96, 128, 3)
    assert len(namespace["coco_results"]) == len(result)


def test_paths_pil_images_and_arrays_give_the_same_result(tmp_path):
    model = adet.load(save_checkpoint(str(tmp_path / "w.pth")), confidence=0.3, device="cpu")
    image = shapes_image(96, 128, seed=4)[0]
    cv2.imwrite(str(tmp_path / "000000000042.png"), image)
    from_path = model(str(tmp_path / "000000000042.png"))
    from_bgr = model(image)
    from_rgb = model(np.ascontiguousarray(image[:, :, ::-1]), format="RGB")
    from_pil = model(Image.open(tmp_path / "000000000042.png"))
    assert len(from_path) > 0
    for other in (from_bgr, from_rgb, from_pil):
        np.testing.assert_array_equal(other.scores, from_path.scores)
        np.testing.assert_array_equal(other.masks, from_path.masks)
    both = model([image, image])
    assert isinstance(both, list) and len(both) == 2
    # Names and dataset ids come from the checkpoint; JSON uses the COCO-style file name as image id.
    assert set(from_path.class_names) <= {"cat", "dog", "bird"}
    assert from_path.category_ids.tolist() == [(3, 7, 9)[c] for c in from_path.class_ids]
    records = from_path.to_json()
    assert {r["image_id"] for r in records} == {42} and len(records) == len(from_path)
    assert records[0]["category_id"] == from_path.category_ids[0] and "counts" in records[0]["segmentation"]
    assert from_path.draw().shape == image.shape
    with pytest.raises(TypeError, match="file path, a PIL image or an"):
        model(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="format must be 'BGR' or 'RGB'"):
        model(image, format="bgr")


def test_polygons_outline_the_masks_and_rasterise_back_to_them():
    import cv2
    import pycocotools.mask as mask_util

    def drawn(polygons, height, width):
        return mask_util.decode(mask_util.merge(mask_util.frPyObjects(polygons, height, width))).astype(bool)

    mask = np.zeros((40, 50), bool)
    mask[5:15, 10:30] = True  # a 10 x 20 rectangle
    mask[25:35, 35:45] = True  # and a separate 10 x 10 square
    polygons = mask_to_polygons(mask)
    # On the pixels' corners: the rectangle's outline is its edges, at whole coordinates.
    assert sorted(polygons) == [[10.0, 5.0, 10.0, 15.0, 30.0, 15.0, 30.0, 5.0], [35.0, 25.0, 35.0, 35.0, 45.0, 35.0,
                                                                               45.0, 25.0]]
    assert (drawn(polygons, 40, 50) == mask).all()
    line, dot = np.zeros((40, 50), bool), np.zeros((40, 50), bool)
    line[20, 5:40], dot[3, 3] = True, True  # one pixel wide, one pixel
    assert mask_to_polygons(line) == [[5.0, 20.0, 5.0, 21.0, 40.0, 21.0, 40.0, 20.0]]
    assert mask_to_polygons(dot) == [[3.0, 3.0, 4.0, 3.0, 4.0, 4.0, 3.0, 4.0]]
    # Shapes of 100 pixels and more (unions of random ellipses, holes filled: outer outlines) come back at IoU >= 0.9
    # (exactly, here); outlines through the pixels' centres lost about 1/r of it (0.71 for a disc of 109 pixels).
    rng, ious = np.random.default_rng(0), []
    while len(ious) < 200:
        canvas = np.zeros((60, 60), np.uint8)
        for _ in range(3):
            cv2.ellipse(canvas, (int(rng.integers(10, 50)), int(rng.integers(10, 50))), (int(rng.integers(2, 15)),
                        int(rng.integers(2, 15))), float(rng.uniform(0, 180)), 0, 360, 1, -1)
        outer, _ = cv2.findContours(canvas, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        shape = cv2.drawContours(np.zeros_like(canvas), outer, -1, 1, -1).astype(bool)
        if shape.sum() >= 100:
            back = drawn(mask_to_polygons(shape), 60, 60)
            ious.append((back & shape).sum() / (back | shape).sum())
    assert min(ious) >= 0.9 and np.mean(ious) > 0.99
    # A crop's outlines placed by its offset are the full mask's.
    assert mask_to_polygons(mask[5:15, 10:30], (5, 10)) == [[10.0, 5.0, 10.0, 15.0, 30.0, 15.0, 30.0, 5.0]]


def test_image_ids_from_file_names():
    assert image_id_from_name("val2017/000000397133.jpg") == 397133
    assert image_id_from_name("photos/holiday_1.jpg") == "holiday_1.jpg"


def test_a_checkpoint_without_config_uses_the_given_one(tmp_path):
    cfg = make_tiny_cfg()
    torch.save({"model": build_model(cfg).state_dict()}, tmp_path / "official.pth")  # official: weights only
    (tmp_path / "tiny.yaml").write_text(cfg.dump())
    model = adet.load(str(tmp_path / "official.pth"), config=str(tmp_path / "tiny.yaml"), device="cpu")
    assert model.cfg.MODEL.RESNETS.DEPTH == 18 and model.cfg.MODEL.WEIGHTS == str(tmp_path / "official.pth")
