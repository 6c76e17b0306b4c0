"""``embedmask convert``: a dataset from one format to another, in the target format's usual layout.

    embedmask convert annotations/instances_val.json --images val2017/ --to yolo --output yolo_val/
    embedmask convert data.yaml --split val --to coco --output coco/
    embedmask convert labelme_folder/ --to yolo --output yolo/
    embedmask convert photos/ --from-predictions results.json --score-threshold 0.6 --to labelme --output review/

The source format is detected: a COCO json (images beside it, or ``--images``), an Ultralytics data.yaml (its
``--split``, default train) or a LabelMe folder. What the target cannot hold (holes of RLE masks, crowd
annotations) is counted in the summary; nothing is dropped silently.
"""

from __future__ import annotations

import os

from adet.data.convert import WRITERS
from adet.data.sources import FORMATS, predictions_to_coco, read_source
from adet.data.yolo import SPLITS
from adet.errors import PreflightError
from adet.utils.logger import setup_logger

from .options import ArgumentParser
from .preflight import check_output_folder


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    parser = ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("source", metavar="SRC", help="a COCO .json, an Ultralytics data.yaml or a LabelMe folder")
    parser.add_argument("--to", required=True, choices=FORMATS, help="the format to write")
    parser.add_argument("--output", required=True, metavar="DIR", help="the folder to write the dataset into")
    parser.add_argument("--images", default="", metavar="DIR", help="a COCO source's images (default: beside it)")
    parser.add_argument("--split", default="", choices=("",) + SPLITS,
                        help="the data.yaml split to read, and the split name written (default train)")
    parser.add_argument("--from-predictions", default="", metavar="RESULTS.json",
                        help="pseudo-labels: the detections of this file (embedmask predict --json) on SRC's images "
                             "(SRC: a dataset, or a folder of images) instead of SRC's annotations")
    parser.add_argument("--score-threshold", type=float, default=0.5, metavar="S",
                        help="with --from-predictions: keep detections scoring at least S (default 0.5)")
    args = parser.parse_args(argv)
    setup_logger()
    if not os.path.exists(args.source):
        raise PreflightError(f"{args.source}: no such file or folder")
    if args.images and not os.path.isdir(args.images):
        raise PreflightError(f"--images {args.images}: no such folder")
    check_output_folder(args.output, "--output")
    if args.from_predictions:
        if not os.path.isfile(args.from_predictions):
            raise PreflightError(f"--from-predictions {args.from_predictions}: no such file")
        data, image_root = predictions_to_coco(args.from_predictions, args.source, args.images, args.split or "train",
                                               args.score_threshold)
    else:
        data, image_root = read_source(args.source, args.split or "train", args.images)
    report = WRITERS[args.to](data, image_root, args.output, args.split or "train")
    lost = "; ".join(f"{n} {what}" for what, n in report["lost"].items())
    print(f"Wrote {report['images']} images and {report['instances']} instances as {args.to}: {report['written']}"
          + (f" ({lost})" if lost else ""))
    return report
