"""``embedmask predict`` at dataset scale: batches of one padded size, shards over processes, results streamed per
image, a killed run finished by a rerun with ``--resume`` with the same detections as an uninterrupted one, and a
results folder that knows its weights by content (retrain into the same file, predict again: fresh results)."""

import json
import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

from adet.cli import main as embedmask
from adet.engine.inference.backend import ImageInput
from adet.engine.inference.batch_predict import ImageFile, SizeBuckets
from adet.engine.inference.prediction_shards import DoneIndex, ShardWriter, assemble_json, repair_shards
from adet.errors import InputError
from adet.modeling import build_model

from .conftest import ROOT, make_tiny_cfg, shapes_image

CLASSES, CATEGORY_IDS = ["circle", "square", "triangle"], [1, 2, 3]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny model with varied scores, and 24 images of two sizes (so batches would mix them)."""
    root = tmp_path_factory.mktemp("scale")
    cfg = make_tiny_cfg()
    torch.manual_seed(0)
    state = build_model(cfg).state_dict()
    state["proposal_generator.fcos_head.bbox_pred.bias"] += 1.5
    state["proposal_generator.fcos_head.cls_logits.bias"].normal_(0, 2, generator=torch.Generator().manual_seed(0))
    weights = root / "tiny.pth"
    torch.save({"model": state, "config": cfg.dump(), "class_names": CLASSES, "category_ids": CATEGORY_IDS}, weights)
    images = root / "images"
    images.mkdir()
    for i in range(24):
        height, width = (96, 128) if i % 3 else (120, 100)
        cv2.imwrite(str(images / f"{i:012d}.jpg"), shapes_image(height, width, seed=i)[0])
    return {"weights": str(weights), "images": str(images), "root": root}


def predict(setup, json_path, *extra):
    code = embedmask(["predict", "--weights", setup["weights"], "--input", setup["images"], "--json", str(json_path),
                      "--confidence-threshold", "0.3", "--workers", "0", "--batch-size", "1", *extra])
    assert code == 0
    return json.loads(open(json_path).read())


def one_image_at_a_time(setup):
    """Today's path: the Python API, one image per call."""
    import adet

    model = adet.load(setup["weights"], device="cpu", confidence=0.3)
    records = []
    for name in sorted(os.listdir(setup["images"])):
        path = os.path.join(setup["images"], name)
        for record in model(path).to_json():
            record["file_name"] = path
            records.append(record)
    return records


def by_image(records):
    grouped = {}
    for record in records:
        grouped.setdefault(record["file_name"], []).append(record)
    return grouped


def assert_same_records(got, expected):
    """The same detections per image; boxes and scores to float rounding (a process of another thread count sums
    convolutions in another order: ~1e-6 px, and detections tied in score may swap), everything else equal."""
    assert len(got) == len(expected) and len(expected) > 100

    def same(a, b):
        return ({k: v for k, v in a.items() if k not in ("bbox", "score")} ==
                {k: v for k, v in b.items() if k not in ("bbox", "score")} and abs(a["score"] - b["score"]) < 1e-6
                and np.allclose(a["bbox"], b["bbox"], atol=1e-3))

    got_by_image = by_image(got)
    for name, records in by_image(expected).items():
        unmatched = list(got_by_image.get(name, []))
        assert len(unmatched) == len(records), name
        for record in records:
            match = next((i for i, candidate in enumerate(unmatched) if same(candidate, record)), None)
            assert match is not None, (name, record)
            unmatched.pop(match)


@pytest.fixture(scope="module")
def reference(setup):
    return one_image_at_a_time(setup)


def test_batch_size_one_is_the_one_image_path_and_larger_batches_round_only(setup, reference, tmp_path):
    drawn = tmp_path / "drawn"
    assert predict(setup, tmp_path / "b1.json", "--batch-size", "1", "--workers", "2", "--output", str(drawn)) == \
        reference
    images = sorted(f for f in os.listdir(drawn) if f.endswith(".jpg"))
    assert images == sorted(os.listdir(setup["images"]))  # drawn; the shards are in --output too
    assert cv2.imread(str(drawn / images[0])).shape == cv2.imread(os.path.join(setup["images"], images[0])).shape
    assert os.path.isfile(drawn / "predictions.rank0.jsonl")
    batched = by_image(predict(setup, tmp_path / "b4.json", "--batch-size", "4"))
    expected = by_image(reference)
    assert batched.keys() == expected.keys() and sum(map(len, expected.values())) > 1000
    for name, records in expected.items():
        got = batched[name]
        assert len(got) == len(records)
        # The same detections: scores to float rounding (ties may come in another order), masks but for the odd
        # pixel at the threshold (the mask-IoU of two empty masks is 0: equal RLEs count as 1).
        assert np.allclose(sorted(r["score"] for r in got), sorted(r["score"] for r in records), atol=1e-5)
        ious = mask_util.iou([r["segmentation"] for r in records], [r["segmentation"] for r in got],
                             [0] * len(got))
        ious[[[a["segmentation"] == b["segmentation"] for b in got] for a in records]] = 1.0  # empty masks too
        same = [[a["category_id"] == b["category_id"] and abs(a["score"] - b["score"]) < 1e-5 for b in got]
                for a in records]
        best = np.where(same, ious, 0).max(axis=1)
        assert (best >= 0.75).all() and (best == 1).mean() >= 0.9  # these masks are tiny: one pixel is 10%


def test_size_buckets_batch_one_padded_size_and_hold_few_images():
    item = lambda h, w: ImageFile(f"{h}x{w}.jpg", ImageInput(np.zeros((3, h, w), np.uint8), h, w))  # noqa: E731
    buckets = SizeBuckets(batch_size=2, size_divisibility=32)
    assert buckets.add(item(96, 128)) == [] and buckets.add(item(120, 100)) == []
    ready = buckets.add(item(90, 110))  # pads to 96 x 128 as the first one: a full batch
    assert [[x.input.image.shape[1:] for x in batch] for batch in ready] == [[(96, 128), (90, 110)]]
    assert buckets.add(item(64, 64)) == [] and buckets.add(item(200, 200)) == []
    assert buckets.add(item(300, 300)) == []
    (batch,) = buckets.add(item(330, 330))  # more than 2 batches' worth waiting: the fullest (first) goes
    assert [x.input.image.shape[1:] for x in batch] == [(120, 100)]
    assert sum(len(b) for b in buckets.rest()) == 4 and buckets.rest() == []


@pytest.mark.nccl_emulated
def test_two_processes_write_what_one_does(setup, reference, tmp_path):
    records = predict(setup, tmp_path / "two.json", "--num-gpus", "2", "MODEL.DEVICE", "cpu")
    assert records == reference
    shards = sorted(f for f in os.listdir(tmp_path / "two.json.parts") if f.endswith(".jsonl"))
    assert shards == ["predictions.rank0.jsonl", "predictions.rank1.jsonl"]
    lines = [len(open(tmp_path / "two.json.parts" / f).readlines()) for f in shards]
    assert lines == [12, 12]  # disjoint halves


def _shard_lines(folder):
    return sum(len(open(os.path.join(folder, f)).readlines()) for f in os.listdir(folder) if f.endswith(".jsonl"))


@pytest.mark.nccl_emulated
def test_a_killed_sharded_run_is_finished_by_a_rerun_with_nothing_lost_or_twice(setup, reference, tmp_path):
    out = tmp_path / "killed.json"
    folder = str(out) + ".parts"
    command = [sys.executable, "-m", "adet", "predict", "--weights", setup["weights"], "--input", setup["images"],
               "--json", str(out), "--confidence-threshold", "0.3", "--workers", "0", "--batch-size", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    run = subprocess.Popen(command + ["--num-gpus", "2", "MODEL.DEVICE", "cpu"], env=env, start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and (not os.path.isdir(folder) or _shard_lines(folder) < 6):
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGKILL)  # the launcher and both workers, mid-run
    run.wait(timeout=60)
    with DoneIndex(folder) as done:
        done_before = len(done)
    assert 6 <= done_before < 24 and not out.exists()
    with open(os.path.join(folder, "predictions.rank1.jsonl"), "a") as f:
        f.write('{"file": "half a line a kill cut')  # as a kill during a write leaves it
    rerun = subprocess.run(command + ["--resume"], env=env, capture_output=True, text=True, timeout=300)  # 1 process
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"{done_before} of 24 images were predicted by an earlier run" in rerun.stdout + rerun.stderr
    assert_same_records(json.loads(out.read_text()), reference)  # the rerun has one thread, the reference two
    files = [json.loads(line)["file"] for name in os.listdir(folder) if name.endswith(".jsonl")
             for line in open(os.path.join(folder, name))]
    assert sorted(files) == sorted(os.path.join(setup["images"], f) for f in os.listdir(setup["images"]))


def test_a_partial_last_line_is_cut_and_other_settings_are_refused(setup, tmp_path):
    folder = tmp_path / "parts"
    writer = ShardWriter(str(folder), 0)
    writer.write("a.jpg", [{"score": 1.0}])
    writer.close()
    with open(folder / "predictions.rank0.jsonl", "a") as f:
        f.write('{"file": "b.jpg", "detec')
    repair_shards(str(folder), 0, 1)
    expected = '{"file": "a.jpg", "count": 1, "detections": [{"score": 1.0}]}\n'
    assert (folder / "predictions.rank0.jsonl").read_text() == expected

    predict(setup, tmp_path / "x.json")
    code = embedmask(["predict", "--weights", setup["weights"], "--input", setup["images"], "--json",
                      str(tmp_path / "x.json"), "--confidence-threshold", "0.5", "--resume"])
    assert code == 2  # a resume with another threshold would mix results


def test_retrain_into_the_same_weights_file_and_predict_again_into_the_same_output(setup, tmp_path, capsys):
    """Without --resume a run predicts every image afresh into its --output, replacing our own files there and
    nothing else; with --resume it continues only the same weights, known by content, not by path."""
    weights = tmp_path / "model_final.pth"
    weights.write_bytes(open(setup["weights"], "rb").read())
    images = tmp_path / "images"
    images.mkdir()
    for name in sorted(os.listdir(setup["images"]))[:3]:
        os.link(os.path.join(setup["images"], name), images / name)
    out = tmp_path / "drawn"
    out.mkdir()
    (out / "notes.txt").write_text("the user's")
    command = ["predict", "--weights", str(weights), "--input", str(images), "--output", str(out), "--json",
               str(tmp_path / "r.json"), "--confidence-threshold", "0.3", "--workers", "0"]
    assert embedmask(command) == 0
    first = json.loads((tmp_path / "r.json").read_text())
    drawn_first = cv2.imread(str(out / "000000000000.jpg"))

    checkpoint = torch.load(weights, weights_only=False)  # "retrained": other weights at the same path
    checkpoint["model"]["proposal_generator.fcos_head.cls_logits.bias"] += 3.0
    torch.save(checkpoint, weights)
    capsys.readouterr()
    assert embedmask(command + ["--resume"]) == 2
    refusal = capsys.readouterr().err.strip().splitlines()
    assert len(refusal) == 1 and "holds predictions made with other settings (weights_sha256)" in refusal[0]

    assert embedmask(command) == 0
    assert "3 image(s) processed" in capsys.readouterr().out  # none skipped as "done"
    second = json.loads((tmp_path / "r.json").read_text())
    import adet

    def scores(records, image):
        return sorted(r["score"] for r in records if r["file_name"].endswith(image))

    retrained = adet.load(str(weights), device="cpu", confidence=0.3)
    expected = sorted(r["score"] for r in retrained(str(images / "000000000000.jpg")).to_json())
    assert len(expected) > 0 and scores(first, "000000000000.jpg") != pytest.approx(expected, abs=1e-4)
    assert scores(second, "000000000000.jpg") == pytest.approx(expected, abs=1e-4)  # the new weights' results
    assert not np.array_equal(cv2.imread(str(out / "000000000000.jpg")), drawn_first)  # drawn again
    assert (out / "notes.txt").read_text() == "the user's"
    assert sorted(os.listdir(out)) == ["000000000000.jpg", "000000000001.jpg", "000000000002.jpg", "notes.txt",
                                       "predictions.rank0.jsonl", "predictions.run.json"]

    weights.rename(tmp_path / "moved.pth")  # the same weights elsewhere: a resume continues them
    command[command.index("--weights") + 1] = str(tmp_path / "moved.pth")
    assert embedmask(command + ["--resume"]) == 0
    resumed = capsys.readouterr()
    assert "3 of 3 images were predicted by an earlier run" in resumed.out + resumed.err
    assert "0 image(s) processed" in resumed.out


def test_a_score_threshold_means_the_same_whatever_thresh_with_ctr(setup, tmp_path):
    """--confidence-threshold / confidence= keep the detections scoring at least it. With THRESH_WITH_CTR False the
    model's threshold applies to the class probability alone (scores below it pass), so what it leaves is filtered
    after: the result is the THRESH_WITH_CTR True one, through adet.load and predict alike."""
    import adet

    image = os.path.join(setup["images"], "000000000001.jpg")
    with_ctr = adet.load(setup["weights"], device="cpu", confidence=0.73)(image).to_json()
    raw = adet.load(setup["weights"], device="cpu", overrides=["MODEL.FCOS.THRESH_WITH_CTR", False,
                                                                  "MODEL.FCOS.INFERENCE_TH_TEST", 0.73 ** 2])(image)
    assert len(with_ctr) > 0 and (raw.scores < 0.73).sum() > 0  # the class-only threshold lets lower scores through
    without_ctr = adet.load(setup["weights"], device="cpu", confidence=0.73,
                            overrides=["MODEL.FCOS.THRESH_WITH_CTR", False])(image).to_json()
    assert without_ctr == with_ctr
    records = predict(setup, tmp_path / "p.json", "--confidence-threshold", "0.73", "MODEL.FCOS.THRESH_WITH_CTR",
                      "False")
    assert len(records) > 0 and min(r["score"] for r in records) >= 0.73
    assert [r for r in records if r["file_name"] == image] == [dict(r, file_name=image) for r in with_ctr]


def test_the_store_indexes_line_heads_and_copies_detections_as_text(tmp_path):
    """The done index reads each line's head only (first line of an image wins, broken lines are not done), and the
    assembly copies each line's detections byte for byte, without parsing them."""
    folder = tmp_path / "store"
    folder.mkdir()
    (folder / "predictions.rank0.jsonl").write_bytes(
        b'{"file": "a.jpg", "count": 2, "detections": [{"score": 0.50}, {"score": 1e-1 }]}\n'
        b'{"file": "b.jpg", "count": 0, "detections": []}\n'
        b'{"file": "c.jpg", "count": 1, "detec')  # cut by a kill
    (folder / "predictions.rank1.jsonl").write_bytes(
        b'{"file": "a.jpg", "count": 1, "detections": [{"score": 0.9}]}\n'  # a.jpg again: rank0's wins
        b'{"file": "d.jpg", "count": 1, "detections": [not json, copied as it is]}\n')
    with DoneIndex(str(folder)) as done:
        assert len(done) == 3
        assert list(done.in_order(["c.jpg", "a.jpg", "b.jpg"])) == [
            ("c.jpg", None), ("a.jpg", (str(folder / "predictions.rank0.jsonl"), 0, 2)),
            ("b.jpg", (str(folder / "predictions.rank0.jsonl"), 81, 0))]  # after the 81 bytes of line 1
    out = tmp_path / "r.json"
    assert assemble_json(str(folder), ["d.jpg", "b.jpg", "a.jpg"], str(out)) == 3
    assert out.read_bytes() == b'[not json, copied as it is,{"score": 0.50}, {"score": 1e-1 }]'
    with pytest.raises(InputError, match=r"1 image\(s\) have no predictions in .* \(e.g. c.jpg\)"):
        assemble_json(str(folder), ["a.jpg", "c.jpg"], str(out))
