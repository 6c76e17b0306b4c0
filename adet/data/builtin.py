"""COCO 2017 datasets registered under detectron2's names, rooted at ``$DETECTRON2_DATASETS`` (default
``./datasets``) in detectron2's layout::

    $DETECTRON2_DATASETS/coco/annotations/instances_{train,val}2017.json
    $DETECTRON2_DATASETS/coco/{train,val}2017/*.jpg
"""

from __future__ import annotations

import os

from .catalog import DatasetCatalog
from .coco import register_coco_instances
from .synthetic import register_synthetic

# (COCO category id, name) of the 80 thing classes, in contiguous-id order.
COCO_CATEGORIES = [
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"), (7, "train"),
    (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"), (13, "stop sign"), (14, "parking meter"),
    (15, "bench"), (16, "bird"), (17, "cat"), (18, "dog"), (19, "horse"), (20, "sheep"), (21, "cow"),
    (22, "elephant"), (23, "bear"), (24, "zebra"), (25, "giraffe"), (27, "backpack"), (28, "umbrella"),
    (31, "handbag"), (32, "tie"), (33, "suitcase"), (34, "frisbee"), (35, "skis"), (36, "snowboard"),
    (37, "sports ball"), (38, "kite"), (39, "baseball bat"), (40, "baseball glove"), (41, "skateboard"),
    (42, "surfboard"), (43, "tennis racket"), (44, "bottle"), (46, "wine glass"), (47, "cup"), (48, "fork"),
    (49, "knife"), (50, "spoon"), (51, "bowl"), (52, "banana"), (53, "apple"), (54, "sandwich"), (55, "orange"),
    (56, "broccoli"), (57, "carrot"), (58, "hot dog"), (59, "pizza"), (60, "donut"), (61, "cake"), (62, "chair"),
    (63, "couch"), (64, "potted plant"), (65, "bed"), (67, "dining table"), (70, "toilet"), (72, "tv"),
    (73, "laptop"), (74, "mouse"), (75, "remote"), (76, "keyboard"), (77, "cell phone"), (78, "microwave"),
    (79, "oven"), (80, "toaster"), (81, "sink"), (82, "refrigerator"), (84, "book"), (85, "clock"), (86, "vase"),
    (87, "scissors"), (88, "teddy bear"), (89, "hair drier"), (90, "toothbrush"),
]

COCO_SPLITS = {
    "coco_2017_train": ("coco/train2017", "coco/annotations/instances_train2017.json"),
    "coco_2017_val": ("coco/val2017", "coco/annotations/instances_val2017.json"),
    "coco_2017_test-dev": ("coco/test2017", "coco/annotations/image_info_test-dev2017.json"),
}


def datasets_root() -> str:
    return os.path.expanduser(os.environ.get("DETECTRON2_DATASETS", "datasets"))


def coco_metadata() -> dict:
    return {"thing_classes": [name for _, name in COCO_CATEGORIES],
            "thing_dataset_id_to_contiguous_id": {cid: i for i, (cid, _) in enumerate(COCO_CATEGORIES)}}


def register_all_coco(root: str | None = None) -> None:
    """Register the COCO splits (paths are only checked when a split is loaded)."""
    root = datasets_root() if root is None else root
    for name, (image_dir, json_file) in COCO_SPLITS.items():
        if name in DatasetCatalog:
            continue
        register_coco_instances(name, coco_metadata(), os.path.join(root, json_file), os.path.join(root, image_dir))


register_all_coco()


def register_all_synthetic() -> None:
    register_synthetic(datasets_root)


register_all_synthetic()
