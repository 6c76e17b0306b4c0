"""``embedmask predict --input ...``: many images, batched and prefetched, in one or several processes
(``--num-gpus``, torchrun, SLURM: each a disjoint share of the images), with results streamed to per-process shards
in the results folder (``--output``, or ``<--json>.parts`` without it) and the ``--json`` assembled at the end. A
rerun with ``--resume`` (or a restarted torchrun/SLURM job) skips the images already done; without it, the run
starts afresh (``adet/engine/inference/prediction_shards.py``)."""

from __future__ import annotations

import argparse
import hashlib
import logging
import os

import numpy as np
from tqdm import tqdm

from adet.api import Model, Prediction
from adet.engine.inference import prediction_shards as shards
from adet.engine.inference.batch_predict import ImageFile, default_batch_size, predict_files
from adet.structures import Instances
from adet.utils import comm

from .results import JsonResults, output_path

logger = logging.getLogger(__name__)


def results_folder(args: argparse.Namespace, num_inputs: int) -> str:
    """Where the shards go: the --output folder, or beside --json; "" when nothing is saved."""
    if args.output and output_path(args.output, "x", num_inputs) != args.output:
        return args.output
    return f"{args.json}.parts" if args.json else ""


def run_settings(cfg_or_onnx, args: argparse.Namespace) -> dict:
    """What the results depend on: the model by content (weights and config; not their paths), the threshold and
    the ground truth (not the device, batch size or number of processes)."""
    if isinstance(cfg_or_onnx, str):
        model = {"onnx_sha256": shards.file_sha256(cfg_or_onnx),
                 "slice": [args.slice, args.overlap, args.no_full_image]}
    elif hasattr(cfg_or_onnx, "model_version"):  # a served model (RemoteBackend): its server's content hash
        model = {"served_model": cfg_or_onnx.model_version, "slice": [args.slice, args.overlap, args.no_full_image]}
    else:
        cfg = cfg_or_onnx.clone()
        cfg.defrost()
        weights, cfg.MODEL.WEIGHTS, cfg.MODEL.DEVICE = cfg.MODEL.WEIGHTS, "", ""
        model = {"weights_sha256": shards.file_sha256(weights),
                 "config_sha256": hashlib.sha256(cfg.dump().encode()).hexdigest()}
    return {**model, "confidence_threshold": args.confidence_threshold,
            "ground_truth": os.path.abspath(args.ground_truth) if args.ground_truth else ""}


def remaining_images(folder: str, paths: list[str], model_source, args: argparse.Namespace) -> list[str]:
    """The images still to predict: all of them in a fresh run; with --resume, those no earlier run of the same
    settings finished (every process reads the shards before any writes again)."""
    if not folder:
        return paths
    if comm.is_main_process():
        shards.prepare_folder(folder, run_settings(model_source, args), resume=args.resume)
    comm.synchronize()
    if not args.resume:
        return paths
    with shards.DoneIndex(folder) as done:
        remaining = [path for path, where in done.in_order(paths) if where is None]
    if len(remaining) < len(paths) and comm.is_main_process():
        logger.info("%d of %d images were predicted by an earlier run into %s: skipping them", len(paths) -
                    len(remaining), len(paths), folder)
    comm.synchronize()
    return remaining


def predict_images(model: Model, args: argparse.Namespace, paths: list[str], model_source) -> dict:
    """This process's share of ``paths``; on the main process, once all are done, the --json. Returns counts.
    ``model_source``: the config, the ONNX file or the served model's backend (what the results folder records)."""
    folder = results_folder(args, len(paths))
    mine = remaining_images(folder, paths, model_source, args)[comm.get_rank()::comm.get_world_size()]
    writer = None
    if folder:
        shards.repair_shards(folder, comm.get_rank(), comm.get_world_size())
        writer = shards.ShardWriter(folder, comm.get_rank())
    json_results = JsonResults(args.ground_truth)
    bar = tqdm(total=len(mine), unit="img", dynamic_ncols=True, disable=None if comm.is_main_process() else True)
    counts = {"images": len(mine), "skipped": 0}

    def save(source: str, prediction: Prediction | None) -> None:
        if prediction is not None and args.output:
            prediction.save(output_path(args.output, source, len(paths)))
        if writer is not None:
            writer.write(source, json_results.records(prediction, source) if prediction is not None else [])
        bar.update(1)

    def handle(item: ImageFile, instances: Instances) -> None:
        if model.min_score > 0:  # what the model's own threshold leaves (THRESH_WITH_CTR False)
            instances = instances[instances.scores >= model.min_score]
        image = item.original if item.original is not None else np.empty((item.input.height, item.input.width, 0),
                                                                          np.uint8)
        save(item.path, Prediction(instances, image, model.class_names, model.category_ids, item.path))

    def skip(source: str, reason: str) -> None:
        counts["skipped"] += 1
        tqdm.write(f"skipped {reason}")
        save(source, None)

    # A sliced image is many model calls already (TEST.SLICE.BATCH_SIZE tiles each): one image at a time.
    batch_size = 1 if model.cfg.TEST.SLICE.ENABLED else args.batch_size or default_batch_size(model.cfg.MODEL.DEVICE)
    try:
        timing = predict_files(model.predictor, mine, handle, skip, batch_size, args.workers,
                               keep_original=bool(args.output))
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    counts.update(timing)
    comm.synchronize()
    if args.json and comm.is_main_process():
        counts["detections"] = shards.assemble_json(folder, paths, args.json)
        print(f"{counts['detections']} detections saved to {args.json}")
    return counts

