"""Keys a detectron2/AdelaiDet config may carry that this EmbedMask does not read.

A fully resolved official config (an official run's ``config.yaml``) holds every detectron2 and AdelaiDet key, most
of them for other models. They load here and are dropped, so nothing the model ignores reaches a dumped config. The
keys with a single value EmbedMask can honour (``MODEL.FCOS.LOC_LOSS_TYPE giou``...) are among them: this table is
the one place that accepts that value and refuses any other. Each key is dropped

- silently, when the key holds a value under which EmbedMask behaves as it does anyway;
- with a warning naming the key, when it asks for something that would have no effect here;
- with an error naming the key, when it asks for something EmbedMask cannot do.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

import yaml

from adet.errors import ConfigError

logger = logging.getLogger("adet.config")

ANY = object()  # every value is neutral: the key only matters together with another one


def _flatten(prefix: str, values: dict) -> dict[str, Any]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(f"{prefix}{key}.", value))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# full key -> (neutral values, "warn" or "error", what to say when another value is given)
KEYS: dict[str, tuple[Any, str, str]] = {
    "VERSION": ((2,), "warn", "detectron2's config-format version; only version 2 files exist"),
    "MODEL.MASK_ON": ((True,), "warn", "EmbedMask always predicts masks"),
    "MODEL.BACKBONE.ANTI_ALIAS": ((False,), "error", "anti-aliased ResNets are not supported"),
    "MODEL.MOBILENET": ((False,), "error", "MobileNet backbones are not supported"),
    "MODEL.RESNETS.DEFORM_ON_PER_STAGE": (([False] * 4, (False,) * 4), "error",
                                          "deformable convolutions are not supported"),
    "MODEL.RESNETS.DEFORM_MODULATED": (ANY, "warn", ""),
    "MODEL.RESNETS.DEFORM_NUM_GROUPS": (ANY, "warn", ""),
    "MODEL.RESNETS.DEFORM_INTERVAL": ((1,), "error", "deformable convolutions are not supported"),
    "MODEL.PROPOSAL_GENERATOR.NAME": (("FCOS",), "error", "EmbedMask's proposal generator is FCOS"),
    "MODEL.PROPOSAL_GENERATOR.MIN_SIZE": ((0,), "warn", "FCOS keeps boxes of every size"),
    "MODEL.FPN.NORM": (("",), "error", "only the FPN without normalisation (the official one) is supported"),
    "MODEL.FPN.FUSE_TYPE": (("sum",), "error", "only the summing FPN (the official one) is supported"),
    "MODEL.FCOS.USE_DEFORMABLE": ((False,), "error", "deformable convolutions are not supported"),
    "MODEL.FCOS.BOX_QUALITY": (("ctrness",), "error", "only the centerness box quality of EmbedMask is supported"),
    "MODEL.FCOS.LOC_LOSS_TYPE": (("giou",), "error", "only the GIoU box loss of EmbedMask is supported"),
    "MODEL.FCOS.LOSS_NORMALIZER_CLS": (("fg",), "error", "only the foreground-count normaliser of EmbedMask is "
                                                         "supported"),
    "MODEL.FCOS.INFERENCE_TH_TRAIN": ((0.05,), "warn", "EmbedMask trains on every positive location, it does not "
                                                       "select training proposals by score"),
    "MODEL.FCOS.PRE_NMS_TOPK_TRAIN": ((1000,), "warn", "EmbedMask does not run NMS during training"),
    "MODEL.FCOS.POST_NMS_TOPK_TRAIN": ((100,), "warn", "EmbedMask does not run NMS during training (the mask loss "
                                                       "uses MODEL.EMBEDMASK.MAX_PROPOSALS)"),
    "MODEL.FCOS.USE_RELU": ((True,), "error", "only the ReLU box regression of the official model is supported"),
    "MODEL.FCOS.YIELD_PROPOSAL": ((False,), "warn", "EmbedMask's FCOS does not hand proposals to a second stage"),
    "MODEL.EMBEDMASK.BOTTOM_PIXELS_REMOVED": (ANY, "warn", ""),  # in the official defaults, never read there either
    "INPUT.RANDOM_FLIP": (("horizontal",), "warn", "AdelaiDet reads INPUT.HFLIP_TRAIN instead (set it to False to "
                                                   "train without flips)"),
    "INPUT.CROP.ENABLED": ((False,), "error", "random crops are not supported (EmbedMask configs do not use them)"),
    "INPUT.CROP.TYPE": (ANY, "warn", ""),
    "INPUT.CROP.SIZE": (ANY, "warn", ""),
    "INPUT.CROP.CROP_INSTANCE": (ANY, "warn", ""),
    "DATASETS.PROPOSAL_FILES_TRAIN": (((), []), "warn", "FCOS computes its own proposals"),
    "DATASETS.PROPOSAL_FILES_TEST": (((), []), "warn", "FCOS computes its own proposals"),
    "DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TRAIN": (ANY, "warn", ""),
    "DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TEST": (ANY, "warn", ""),
    "DATALOADER.SAMPLER_TRAIN": (("TrainingSampler",), "error", "only detectron2's TrainingSampler is supported"),
    "DATALOADER.REPEAT_THRESHOLD": ((0.0, 0), "error", "the repeat-factor sampler is not supported"),
    "DATALOADER.REPEAT_SQRT": (ANY, "warn", ""),
    "SOLVER.NUM_DECAYS": ((3,), "warn", "only WarmupStepWithFixedGammaLR reads it, which is not supported"),
    "SOLVER.RESCALE_INTERVAL": ((False,), "warn", "only WarmupStepWithFixedGammaLR reads it, which is not supported"),
    "TEST.EXPECTED_RESULTS": (((), []), "warn", "results are not checked against expected values"),
    "TEST.KEYPOINT_OKS_SIGMAS": (((), []), "warn", "EmbedMask has no keypoints"),
    "TEST.DETECTIONS_PER_IMAGE": ((100,), "warn", "EmbedMask keeps MODEL.FCOS.POST_NMS_TOPK_TEST detections per "
                                                  "image; set that instead"),
    "TEST.PRECISE_BN.ENABLED": ((False,), "warn", "precise BatchNorm statistics are not implemented"),
    "TEST.PRECISE_BN.NUM_ITER": (ANY, "warn", ""),
    "VIS_PERIOD": ((0,), "warn", "training visualisations are not written to TensorBoard; use "
                                 "tools/visualize_data.py"),
    "GLOBAL.HACK": (ANY, "warn", ""),
}


@functools.cache
def foreign_keys() -> tuple[dict[str, Any], frozenset[str]]:
    """Keys of other detectron2/AdelaiDet models with the defaults a resolved official config holds, and their
    groups (e.g. MODEL.BLENDMASK); read on first use."""
    with open(os.path.join(os.path.dirname(__file__), "foreign_defaults.yaml")) as f:
        keys = _flatten("", yaml.safe_load(f))
    return keys, frozenset(".".join(key.split(".")[:2]) for key in keys)


def _same(value: Any, neutral: Any) -> bool:
    if isinstance(value, (list, tuple)) and isinstance(neutral, (list, tuple)):
        return len(value) == len(neutral) and all(_same(a, b) for a, b in zip(value, neutral))
    if isinstance(value, bool) or isinstance(neutral, bool):
        return value is neutral
    return value == neutral


def is_known(full_key: str) -> bool:
    """Whether ``full_key`` (a leaf or a group) is a detectron2/AdelaiDet key this model drops."""
    keys, groups = foreign_keys()
    return (full_key in KEYS or full_key in keys or any(key.startswith(full_key + ".") for key in KEYS)
            or any(full_key == group or full_key.startswith(group + ".") for group in groups))


def drop(full_key: str, value: Any, source: str) -> None:
    """Drop a known key (see :func:`is_known`): silently, with a warning, or raising ConfigError."""
    if isinstance(value, dict):
        for key, inner in value.items():
            drop(f"{full_key}.{key}", inner, source)
        return
    if full_key in KEYS:
        neutral, action, why = KEYS[full_key]
        if neutral is ANY or any(_same(value, n) for n in neutral):
            return
        message = f"{source}: {full_key} {value!r} is not used by EmbedMask: {why}"
        if action == "error":
            raise ConfigError(message)
        logger.warning("%s; ignored", message)
        return
    default = foreign_keys()[0].get(full_key, ANY)
    if default is not ANY and _same(value, default):
        return
    if default is ANY and value in (None, "", [], ()):
        return
    logger.warning("%s: %s %r belongs to another detectron2/AdelaiDet model and has no effect on EmbedMask; ignored",
                   source, full_key, value)
