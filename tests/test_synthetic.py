import json

import numpy as np
import pycocotools.mask as mask_util

from adet.data import DatasetCatalog, MetadataCatalog
from adet.data.synthetic import CLASSES, ensure_split, generate_image, write_split


def test_generation_is_deterministic_with_consistent_masks():
    first = generate_image(np.random.default_rng(5), 128, 160)
    second = generate_image(np.random.default_rng(5), 128, 160)
    assert np.array_equal(first[0], second[0]) and first[1] == second[1]
    image, annotations = first
    assert image.shape == (128, 160, 3) and image.dtype == np.uint8
    for ann in annotations:
        rle = mask_util.merge(mask_util.frPyObjects(ann["segmentation"], 128, 160))
        x, y, w, h = ann["bbox"]
        bx, by, bw, bh = mask_util.toBbox(rle)
        # the polygons trace the visible mask: same box within a pixel, similar area
        assert abs(bx - x) <= 1 and abs(by - y) <= 1 and abs(bw - w) <= 2 and abs(bh - h) <= 2
        assert abs(mask_util.area(rle) - ann["area"]) <= 0.2 * ann["area"] + 20
        assert 0 <= ann["category"] < len(CLASSES)


def test_occlusion_and_several_classes_occur():
    rng = np.random.default_rng(0)
    classes, occluded = set(), 0
    for _ in range(40):
        _, annotations = generate_image(rng, 128, 160)
        classes |= {a["category"] for a in annotations}
        occluded += sum(len(a["segmentation"]) > 1 or a["area"] < 0.6 * a["bbox"][2] * a["bbox"][3] for a in
                        annotations)
    assert classes == set(range(len(CLASSES))) and occluded > 0


def test_split_files_and_registered_names(tmp_path, monkeypatch):
    json_file = write_split(str(tmp_path), "mini", 6, seed=3)
    data = json.load(open(json_file))
    assert len(data["images"]) == 6 and [c["name"] for c in data["categories"]] == CLASSES
    assert (tmp_path / "mini" / "00006.png").exists()
    monkeypatch.setattr("adet.data.synthetic.SPLITS", {"synthetic_val": (5, 2)})
    json_val, image_root = ensure_split(str(tmp_path), "synthetic_val")
    stamp = (tmp_path / "synthetic" / "synthetic_val.json").stat().st_mtime_ns
    ensure_split(str(tmp_path), "synthetic_val")  # present and current: not rewritten
    assert (tmp_path / "synthetic" / "synthetic_val.json").stat().st_mtime_ns == stamp
    assert "synthetic_train" in DatasetCatalog and "synthetic_val" in DatasetCatalog
    assert MetadataCatalog.get("synthetic_train").thing_classes == CLASSES
