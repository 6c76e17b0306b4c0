"""Where ``embedmask predict`` puts drawings, and its COCO results (``--json``)."""

from __future__ import annotations

import json
import os

from adet.api import image_id_from_name
from adet.checkpoint import atomic_write_text
from adet.data.coco import read_coco_json

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def output_path(output: str, input_path: str, num_inputs: int) -> str:
    if num_inputs == 1 and os.path.splitext(output)[1].lower() in IMAGE_EXTENSIONS:
        return output
    return os.path.join(output, os.path.basename(input_path))


class JsonResults:
    """COCO-style results users can score: ``category_id`` the dataset's (COCO ids for COCO models), ``image_id``
    from the ground-truth json when given, else the numeric file stem (COCO's file naming), else the file name; plus
    ``file_name`` and ``category_name`` of each detection."""

    def __init__(self, ground_truth: str = "", path: str = ""):
        self.path, self.records_kept = path, []
        self.ids_by_file: dict[str, int] = {}
        self.category_ids_by_name: dict[str, int] = {}
        if ground_truth:
            data = read_coco_json(ground_truth)
            for image in data["images"]:
                self.ids_by_file.setdefault(os.path.basename(image["file_name"]), image["id"])
            self.category_ids_by_name = {c["name"]: c["id"] for c in data["categories"]}

    def image_id(self, source: str):
        return self.ids_by_file.get(os.path.basename(source), image_id_from_name(source))

    def records(self, prediction, source: str) -> list[dict]:
        """The COCO results of one image's prediction."""
        records = prediction.to_json(self.image_id(source))
        for record in records:
            record["category_id"] = self.category_ids_by_name.get(record["category_name"], record["category_id"])
            record["file_name"] = source
        return records

    def add(self, prediction, source: str) -> None:
        """Keep an image's results for :meth:`save` (video frames; images stream to shards instead)."""
        if self.path:
            self.records_kept.extend(self.records(prediction, source))

    def save(self) -> None:
        if self.path:
            atomic_write_text(json.dumps(self.records_kept), self.path)
            print(f"{len(self.records_kept)} detections saved to {self.path}")


