"""A CVAT auto-annotation function: EmbedMask pre-labels a CVAT task with masks (or polygons).

    pip install 'embedmask[cvat]'
    cvat-cli --server-host https://app.cvat.ai --auth USER task auto-annotate 42 \\
        --function-module adet.integrations.cvat -p weights=str:output/x/model_final.pth [-p device=str:cuda] \\
        [--conf-threshold 0.5] [--conv-mask-to-poly]

cvat-sdk's detection-function interface: :func:`create` (the ``-p`` parameters) returns an object whose ``spec``
declares the model's classes as mask labels (CVAT matches them to the task's labels by name) and whose ``detect``
answers one image. Scores are those of ``embedmask predict`` (``--conf-threshold`` as ``--confidence-threshold``;
none given: 0.5, ``predict``'s default).
"""

from __future__ import annotations

import math

import numpy as np
import PIL.Image

try:
    import cvat_sdk.auto_annotation as cvataa
    from cvat_sdk.masks import encode_mask
except ImportError as e:  # the function runs inside cvat-cli, so cvat-sdk is there; imported elsewhere, say why
    raise ImportError(f"adet.integrations.cvat needs cvat-sdk: pip install 'embedmask[cvat]' ({e})") from None

from adet.api import load

from .label_studio.regions import largest_polygon

DEFAULT_CONFIDENCE = 0.5  # embedmask predict --confidence-threshold's default


class EmbedMaskFunction:
    """The detection function of one model (``weights``, optional ``config`` and ``device``)."""

    def __init__(self, weights: str, config: str = "", device: str = "cpu"):
        self.model = load(weights, config=config or None, device=device)
        self.spec = cvataa.DetectionFunctionSpec(labels=[cvataa.label_spec(name, k, type="mask")
                                                         for k, name in enumerate(self.model.class_names)])

    def detect(self, context, image: PIL.Image.Image) -> list:
        threshold = DEFAULT_CONFIDENCE if context.conf_threshold is None else context.conf_threshold
        prediction = self.model(np.asarray(image.convert("RGB")), format="RGB")
        crops = prediction.local_masks.numpy_crops()
        polygons = prediction.polygons if context.conv_mask_to_poly else None
        shapes = []
        for k, (score, class_id) in enumerate(zip(prediction.scores.tolist(), prediction.class_ids.tolist())):
            crop, top, left = crops[k]
            if score < threshold or not crop.any():
                continue
            if polygons is not None:
                shapes.append(cvataa.polygon(class_id, largest_polygon(polygons[k])))
                continue
            # encode_mask keeps the bitmap inside [x1, y1, x2, y2) (x2, y2 exclusive): the detection's box, grown
            # to hold every pixel of its mask (a mask may reach past its box by a pixel or so).
            height, width = prediction.instances.image_size
            mask = np.zeros((height, width), bool)
            mask[top:top + crop.shape[0], left:left + crop.shape[1]] = crop
            rows, cols = np.flatnonzero(crop.any(1)) + top, np.flatnonzero(crop.any(0)) + left
            x1, y1, x2, y2 = prediction.boxes[k].tolist()
            box = [max(0, min(math.floor(x1), cols[0])), max(0, min(math.floor(y1), rows[0])),
                   min(width, max(math.ceil(x2), cols[-1] + 1)), min(height, max(math.ceil(y2), rows[-1] + 1))]
            shapes.append(cvataa.mask(class_id, encode_mask(mask, [int(v) for v in box])))
        return shapes


def create(weights: str, config: str = "", device: str = "cpu") -> EmbedMaskFunction:
    """cvat-cli's ``-p weights=str:W [-p config=str:C] [-p device=str:D]``."""
    return EmbedMaskFunction(weights, config, device)
