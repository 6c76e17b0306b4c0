"""Datasets as they come: Ultralytics YOLO-seg and LabelMe read into the same dicts as the same data in COCO, the
conversions between the three (embedmask convert), and bad label rows reported by file and line."""

import json
import logging
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest

from adet.cli import main as embedmask
from adet.data import DatasetCatalog, MetadataCatalog
from adet.data.convert import join_parts, write_labelme, write_yolo
from adet.data.register import register_datasets_from_args
from adet.data.sources import read_source
from adet.data.synthetic import write_split
from adet.structures.masks import segmentation_to_rle


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    root = tmp_path_factory.mktemp("formats")
    json_file = write_split(str(root), "shapes", 8, seed=21)  # polygons, some instances in 2-3 parts (occlusion)
    return {"root": root, "json": json_file, "images": str(root / "shapes")}


def masks_by_image(data, image_root):
    """{image file's base name: [(class name, mask), ...] in annotation order}."""
    names = {c["id"]: c["name"] for c in data["categories"]}
    found = {}
    for image in data["images"]:
        base = os.path.splitext(os.path.basename(image["file_name"]))[0]
        found[base] = [(names[a["category_id"]], mask_util.decode(segmentation_to_rle(
            a["segmentation"], image["height"], image["width"])).astype(bool))
            for a in data["annotations"] if a["image_id"] == image["id"]]
    return found


def iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


@pytest.mark.parametrize("writer, reread", [(write_yolo, lambda out: str(out / "data.yaml")),
                                            (write_labelme, lambda out: str(out))])
def test_yolo_and_labelme_give_the_dicts_of_the_same_data_in_coco(coco, tmp_path, writer, reread):
    original, root = read_source(coco["json"], images=coco["images"])
    report = writer(original, root, str(tmp_path / "out"), "train")
    assert report["images"] == 8 and report["instances"] == len(original["annotations"]) > 20
    again, _ = read_source(reread(tmp_path / "out"))
    order = [c["name"] for c in sorted(again["categories"], key=lambda c: c["id"])]
    # YOLO keeps the class order (names); LabelMe has no class list: its labels, sorted.
    assert order == (["circle", "square", "triangle", "star"] if writer is write_yolo else
                     ["circle", "square", "star", "triangle"])
    before, after = masks_by_image(original, root), masks_by_image(again, "")
    assert before.keys() == after.keys() and len(before) == 8
    single = 0
    for base, instances in before.items():
        assert [name for name, _ in after[base]] == [name for name, _ in instances], base
        for (_, expected), (_, got) in zip(instances, after[base]):
            assert iou(expected, got) >= 0.99, base  # multi-part instances: bridged (YOLO) or grouped (LabelMe)
    # Single-polygon instances keep their vertices to 1e-4 of the image size.
    for a, b in zip(original["annotations"], again["annotations"]):
        if len(a["segmentation"]) == 1:
            single += 1
            delta = np.abs(np.subtract(a["segmentation"][0], b["segmentation"][0])).max()
            assert delta <= 1e-4 * 160
    assert single > 20


def test_training_dicts_are_those_of_coco_through_dataset_specs(coco, tmp_path):
    original, root = read_source(coco["json"], images=coco["images"])
    write_yolo(original, root, str(tmp_path / "yolo"), "train")
    write_labelme(original, root, str(tmp_path / "labelme"))
    names = register_datasets_from_args([f"as_coco={coco['json']}:{coco['images']}",
                                         f"as_yolo={tmp_path / 'yolo' / 'data.yaml'}:val",
                                         f"as_labelme={tmp_path / 'labelme'}"])
    dicts = {name: DatasetCatalog.get(name) for name in names}
    classes = {name: MetadataCatalog.get(name).thing_classes for name in names}
    for name in ("as_yolo", "as_labelme"):
        assert len(dicts[name]) == len(dicts["as_coco"]) == 8
        for ours, theirs in zip(dicts[name], dicts["as_coco"]):
            assert (ours["height"], ours["width"]) == (theirs["height"], theirs["width"])
            assert [classes[name][a["category_id"]] for a in ours["annotations"]] == [
                classes["as_coco"][a["category_id"]] for a in theirs["annotations"]]
            # The boxes: the polygons' extent here, the pixels' in the generator's json (up to 1 px larger).
            assert np.allclose([a["bbox"] for a in ours["annotations"]], [a["bbox"] for a in theirs["annotations"]],
                               atol=1.0)


def test_bridges_join_parts_into_one_polygon_that_fills_as_their_union():
    left, right = [0, 0, 4, 0, 4, 4, 0, 4], [10, 0, 14, 0, 14, 4, 10, 4]
    joined = join_parts([left, right])
    assert len(joined) == 2 * (4 + 5 + 1)  # 4 corners, the other part's 4 plus its closing vertex, the way back
    union = mask_util.decode(segmentation_to_rle([left, right], 8, 16))
    assert np.array_equal(mask_util.decode(segmentation_to_rle([joined], 8, 16)), union)


def test_bad_label_rows_are_skipped_and_named_by_file_and_line(coco, tmp_path, caplog):
    original, root = read_source(coco["json"], images=coco["images"])
    write_yolo(original, root, str(tmp_path / "yolo"), "train")
    labels = sorted((tmp_path / "yolo" / "labels" / "train").iterdir())
    good = labels[0].read_text().splitlines()
    labels[0].write_text("\n".join(good + ["1 0.1 0.2 0.3", "9 0.1 0.1 0.2 0.1 0.2 0.2", "0 0.1 0.1 1.5 0.1 0.2 0.2",
                                           "x y"]) + "\n")
    os.remove(tmp_path / "yolo" / "images" / "train" / sorted(os.listdir(tmp_path / "yolo" / "images" / "train"))[-1])
    with caplog.at_level(logging.WARNING, logger="adet"):
        data, _ = read_source(str(tmp_path / "yolo" / "data.yaml"))
    assert len(data["images"]) == 7 and len(data["annotations"]) > 15
    message = next(r.getMessage() for r in caplog.records if "skipped" in r.getMessage())
    assert "4 label line(s) or image(s) skipped" in message  # the removed image is simply not listed
    assert f"{labels[0]}:{len(good) + 1}: 3 coordinates" in message
    assert f"{labels[0]}:{len(good) + 2}: class id 9 not in names (0..3)" in message
    assert f"{labels[0]}:{len(good) + 3}: coordinates outside [0, 1]" in message


def test_convert_writes_each_layout_and_reports_what_it_cannot_hold(coco, tmp_path, capsys):
    data = json.load(open(coco["json"]))
    first = data["annotations"][0]
    mask = mask_util.decode(segmentation_to_rle(first["segmentation"], 128, 160))
    mask[:, :] = 0
    mask[20:60, 20:60] = 1
    mask[35:45, 35:45] = 0  # a hole
    rle = mask_util.encode(np.asfortranarray(mask))
    first["segmentation"] = {"size": [128, 160], "counts": rle["counts"].decode()}
    first["bbox"] = [20.0, 20.0, 40.0, 40.0]
    data["annotations"][1]["iscrowd"] = 1
    data["annotations"][1]["segmentation"] = mask_util.encode(np.asfortranarray(mask)) | {}
    data["annotations"][1]["segmentation"]["counts"] = data["annotations"][1]["segmentation"]["counts"].decode()
    (tmp_path / "edited.json").write_text(json.dumps(data))
    assert embedmask(["convert", str(tmp_path / "edited.json"), "--images", coco["images"], "--to", "yolo",
                      "--output", str(tmp_path / "yolo")]) == 0
    out = capsys.readouterr().out
    assert f"as yolo: {tmp_path / 'yolo' / 'data.yaml'}" in out
    assert "1 crowd annotations (not in the format)" in out and "1 masks with holes" in out
    assert sorted(os.listdir(tmp_path / "yolo")) == ["data.yaml", "images", "labels"]
    assert embedmask(["convert", str(tmp_path / "yolo" / "data.yaml"), "--to", "coco",
                      "--output", str(tmp_path / "coco")]) == 0
    written = json.load(open(tmp_path / "coco" / "annotations" / "train.json"))
    assert len(written["images"]) == 8 and len(written["annotations"]) == len(data["annotations"]) - 1
    assert sorted(os.listdir(tmp_path / "coco" / "images" / "train")) == sorted(os.listdir(coco["images"]))
    assert embedmask(["convert", str(tmp_path / "missing.json"), "--to", "yolo", "--output", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'missing.json'}: no such file or folder"


def test_training_on_yolo_and_labelme_folders_gives_the_coco_runs_losses(coco, tmp_path):
    """`train --data` on the same data in the three formats: equal losses (the COCO file here has the boxes and
    class order the other formats can hold: polygon extents, classes by name)."""
    from .conftest import load_tool
    from .test_train import read_losses, tiny_train_args

    data = json.load(open(coco["json"]))
    order = {c["id"]: rank for rank, c in enumerate(sorted(data["categories"], key=lambda c: c["name"]))}
    data["categories"] = [{"id": order[c["id"]], "name": c["name"]} for c in data["categories"]]
    for a in data["annotations"]:
        xs = [v for p in a["segmentation"] for v in p[0::2]]
        ys = [v for p in a["segmentation"] for v in p[1::2]]
        a["bbox"] = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
        a["category_id"] = order[a["category_id"]]
    canonical = tmp_path / "coco" / "shapes.json"
    os.makedirs(canonical.parent)
    canonical.write_text(json.dumps(data))
    for name in os.listdir(coco["images"]):  # images beside the json: `--data ann.json` finds them
        os.symlink(os.path.join(coco["images"], name), canonical.parent / name)
    assert embedmask(["convert", str(canonical), "--to", "yolo", "--output", str(tmp_path / "yolo")]) == 0
    assert embedmask(["convert", str(canonical), "--to", "labelme", "--output", str(tmp_path / "labelme")]) == 0
    train_net = load_tool("tools/train_net.py")
    losses = {}
    for kind, path in (("coco", canonical), ("yolo", tmp_path / "yolo" / "data.yaml"),
                       ("labelme", tmp_path / "labelme")):
        args = tiny_train_args({"dataset": f"unused_{kind}={coco['json']}:{coco['images']}"}, tmp_path / kind / "out",
                               "SOLVER.MAX_ITER", "3", "TEST.EVAL_PERIOD", "0")
        train_net.cli(args + ["--data", str(path)])
        losses[kind] = read_losses(tmp_path / kind / "out")
    assert len(losses["coco"]) == 3
    for kind in ("yolo", "labelme"):
        for iteration, expected in losses["coco"].items():
            assert losses[kind][iteration] == pytest.approx(expected, rel=1e-4), (kind, iteration)


def test_the_python_api_takes_dataset_paths(coco, tmp_path):
    from adet.errors import DatasetError
    from adet.training_api import split_data

    original, root = read_source(coco["json"], images=coco["images"])
    write_yolo(original, root, str(tmp_path / "yolo"), "train")
    write_labelme(original, root, str(tmp_path / "labelme"))
    yaml_path = str(tmp_path / "yolo" / "data.yaml")
    assert split_data(yaml_path) == (f"{yaml_path}:train", f"{yaml_path}:val")
    assert split_data({"train": str(tmp_path / "labelme"), "val": yaml_path}) == (str(tmp_path / "labelme"),
                                                                                  f"{yaml_path}:val")
    assert len(DatasetCatalog.get(f"{yaml_path}:val")) == 8 and len(DatasetCatalog.get(str(tmp_path / "labelme"))) == 8
    with pytest.raises(DatasetError, match="no such registered dataset or dataset path"):
        split_data(str(tmp_path / "nowhere.yaml"))


def predicted_photos(tmp_path, *options):
    """A tiny model that detects, three photos of shapes and its ``predict --json`` results (tmp_path/r.json)."""
    import cv2

    from .conftest import shapes_image
    from .test_api import save_checkpoint

    weights = save_checkpoint(str(tmp_path / "w.pth"))
    photos = tmp_path / "photos"
    photos.mkdir()
    for k in range(3):
        cv2.imwrite(str(photos / f"photo_{k}.png"), shapes_image(96, 128, seed=k)[0])
    assert embedmask(["predict", "--weights", weights, "--input", str(photos), "--json", str(tmp_path / "r.json"),
                      "--device", "cpu", *options]) == 0
    return weights, photos


def test_predictions_become_a_dataset_of_pseudo_labels(tmp_path):
    weights, photos = predicted_photos(tmp_path, "--confidence-threshold", "0.3")
    results = json.load(open(tmp_path / "r.json"))
    threshold = sorted(r["score"] for r in results)[len(results) // 2]  # keeps about half
    kept = [r for r in results if r["score"] >= threshold and mask_util.area(segmentation_to_rle(
        r["segmentation"], 96, 128)) > 0]  # a detection with an empty mask is no label
    assert len(results) // 2 > len(kept) > 3
    assert embedmask(["convert", str(photos), "--from-predictions", str(tmp_path / "r.json"), "--score-threshold",
                      str(threshold), "--to", "labelme", "--output", str(tmp_path / "review")]) == 0
    labelled, _ = read_source(str(tmp_path / "review"))
    assert len(labelled["images"]) == 3 and len(labelled["annotations"]) == len(kept)
    by_file = {os.path.basename(i["file_name"]): i for i in labelled["images"]}
    for image_name in by_file:
        expected = [r for r in kept if os.path.basename(r["file_name"]) == image_name]
        got = [a for a in labelled["annotations"] if a["image_id"] == by_file[image_name]["id"]]
        assert len(got) == len(expected)
        for r, a in zip(expected, got):
            assert iou(mask_util.decode(r["segmentation"]).astype(bool),
                       mask_util.decode(segmentation_to_rle(a["segmentation"], 96, 128)).astype(bool)) >= 0.95


def test_evaluation_on_each_format_of_the_same_data_gives_the_same_ap(tmp_path):
    """A model's own confident detections as ground truth, written in the three formats: `eval --data` scores the
    model alike on each (high AP: the truth is what it finds)."""
    from adet.cli.train import eval_main

    weights, photos = predicted_photos(tmp_path)
    results = {}
    for kind in ("coco", "yolo", "labelme"):
        assert embedmask(["convert", str(photos), "--from-predictions", str(tmp_path / "r.json"), "--score-threshold",
                          "0.7", "--to", kind, "--output", str(tmp_path / kind)]) == 0
        path = {"coco": tmp_path / "coco" / "annotations" / "train.json", "yolo": tmp_path / "yolo" / "data.yaml",
                "labelme": tmp_path / "labelme"}[kind]
        if kind == "coco":  # `--data ann.json` takes the images beside it
            for name in os.listdir(tmp_path / "coco" / "images" / "train"):
                os.symlink(tmp_path / "coco" / "images" / "train" / name, path.parent / name)
        results[kind] = eval_main(["--weights", weights, "--data", str(path), "MODEL.DEVICE", "cpu",
                                   "OUTPUT_DIR", str(tmp_path / f"eval_{kind}")])
    aps = {kind: next(iter(r.values()))["segm"]["AP"] for kind, r in results.items()}
    assert aps["coco"] > 50
    for kind in ("yolo", "labelme"):
        assert aps[kind] == pytest.approx(aps["coco"], abs=1e-6), kind


def test_labelme_shapes_groups_embedded_images_and_masks(tmp_path, caplog):
    import base64
    import io

    from PIL import Image

    image = np.zeros((40, 60, 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    mask = np.zeros((10, 20), np.uint8)
    mask[2:8, 5:15] = 1
    mask_png = io.BytesIO()
    Image.fromarray(mask * 255).save(mask_png, format="PNG")
    shapes = [
        {"label": "cat", "points": [[5, 5], [15, 5], [15, 15]], "group_id": 1, "shape_type": "polygon"},
        {"label": "cat", "points": [[30, 5], [40, 5], [40, 15]], "group_id": 1, "shape_type": "polygon"},
        {"label": "box", "points": [[50, 30], [42, 22]], "group_id": None, "shape_type": "rectangle"},
        {"label": "blob", "points": [[10, 20], [29, 29]], "group_id": None, "shape_type": "mask",
         "mask": base64.b64encode(mask_png.getvalue()).decode()},
        {"label": "cat", "points": [[1, 1], [3, 3]], "group_id": None, "shape_type": "circle"},
        {"label": "", "points": [[1, 1], [3, 1], [3, 3]], "group_id": None, "shape_type": "polygon"},
    ]
    (tmp_path / "a.json").write_text(json.dumps({"shapes": shapes, "imagePath": None, "imageHeight": 40,
                                                 "imageWidth": 60,
                                                 "imageData": base64.b64encode(buffer.getvalue()).decode()}))
    with caplog.at_level(logging.WARNING, logger="adet"):
        data, _ = read_source(str(tmp_path))
    assert [c["name"] for c in data["categories"]] == ["blob", "box", "cat"]
    by_class = {data["categories"][a["category_id"]]["name"]: a for a in data["annotations"]}
    assert len(data["annotations"]) == 3  # the two cat polygons are one instance
    assert len(by_class["cat"]["segmentation"]) == 2 and by_class["box"]["bbox"] == [42, 22, 8, 8]
    blob = mask_util.decode(segmentation_to_rle(by_class["blob"]["segmentation"], 40, 60))
    assert blob.sum() == 60 and blob[22:28, 15:25].all()  # the mask placed at its top-left corner (10, 20)
    assert os.path.isfile(data["images"][0]["file_name"])  # imageData written out once
    message = next(r.getMessage() for r in caplog.records if "skipped" in r.getMessage())
    assert "2 LabelMe shape(s) or file(s) skipped" in message and "a circle shape" in message


def test_a_split_listed_in_a_txt_file_reports_a_missing_image_and_resolves_like_ultralytics(coco, tmp_path, caplog,
                                                                                            monkeypatch):
    original, root = read_source(coco["json"], images=coco["images"])
    write_yolo(original, root, str(tmp_path / "yolo"), "train")
    images = sorted(os.listdir(tmp_path / "yolo" / "images" / "train"))
    (tmp_path / "yolo" / "val.txt").write_text("".join(f"./images/train/{n}\n" for n in images[:3]) +
                                              "./images/train/gone.png\n")
    # Roboflow's layout: no path, splits as ../x from the yaml's folder
    (tmp_path / "yolo" / "sub").mkdir()
    (tmp_path / "yolo" / "sub" / "data.yaml").write_text(
        "train: ../images/train\nval: ../val.txt\nnames: [a, b, c, d]\n")
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING, logger="adet"):
        val, _ = read_source(str(tmp_path / "yolo" / "sub" / "data.yaml"), "val")
    assert len(val["images"]) == 3
    assert any("images/train/gone.png: missing or unreadable image" in r.getMessage() for r in caplog.records)
    train, _ = read_source(str(tmp_path / "yolo" / "sub" / "data.yaml"), "train")
    assert len(train["images"]) == 8
    # Roboflow writes "../train/images" beside the yaml: Ultralytics retries without the "../"
    (tmp_path / "yolo" / "roboflow.yaml").write_text("train: ../images/train\nnames: [a, b, c, d]\n")
    assert len(read_source(str(tmp_path / "yolo" / "roboflow.yaml"), "train")[0]["images"]) == 8
