"""What ``POST /predict`` reads and answers. A request body is the image's bytes (any ``Content-Type`` but the two
below: ``image/*``, ``application/octet-stream``, or curl's ``--data-binary`` default), multipart form data with the
file in the field ``image``, or JSON ``{"image": "<base64>"}`` (a ``data:image/...;base64,`` prefix is allowed).
The answer: ``{"model_version", "image_size": [h, w], "instances": [...]}``, each instance as ``embedmask predict
--json`` writes it (dataset ``category_id``, ``category_name``, ``score``, ``bbox`` XYWH, ``segmentation``) with the
mask as COCO RLE or as polygons.

Every problem is a :class:`RequestError`: an HTTP status and one line that says what is wrong.
"""

from __future__ import annotations

import base64
import binascii
import json

import numpy as np

from adet.api import Prediction
from adet.data.image_io import decode_image
from adet.errors import ImageReadError, ImageTooLargeError
from adet.structures import Instances

MASK_FORMATS = ("rle", "polygons")


class RequestError(Exception):
    """A request the server refuses: ``status`` (400, 401, 413, ...) and a one-line ``message``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def body_limit_error(size: int | str, max_bytes: int) -> RequestError:
    return RequestError(413, f"request body of {size} bytes is over the limit of {max_bytes / 2**20:g} MB "
                             "(--max-body-mb)")


def image_bytes_from_json(body: bytes) -> bytes:
    """The image of a JSON body ``{"image": "<base64>"}``."""
    try:
        document = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RequestError(400, f"JSON body: not valid JSON ({e})") from None
    if not isinstance(document, dict) or "image" not in document:
        keys = ", ".join(map(str, document)) if isinstance(document, dict) else type(document).__name__
        raise RequestError(400, f'JSON body: expected an object with the field "image" (base64), got {keys or "{}"}')
    encoded = document["image"]
    if not isinstance(encoded, str):
        raise RequestError(400, f'JSON body: field "image" must be a base64 string, got {type(encoded).__name__}')
    if encoded.startswith("data:"):  # a data URL, as a browser's FileReader gives
        encoded = encoded.partition(",")[2]
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as e:
        raise RequestError(400, f'JSON body: field "image" is not valid base64 ({e})') from None


def image_of(data: bytes, what: str, max_pixels: int) -> np.ndarray:
    """The BGR pixels of an uploaded image; 413 for too many pixels (from its header), 400 if it is no image."""
    try:
        return decode_image(data, what, max_pixels)
    except ImageTooLargeError as e:
        raise RequestError(413, f"{e} (--max-pixels)") from None
    except ImageReadError as e:
        raise RequestError(400, str(e)) from None


def parse_threshold(text: str | None, server_threshold: float) -> float:
    """The ``threshold`` query: a score in [``server_threshold``, 1] (lower scores were never kept by the model);
    0 when not given (the model's own threshold applies)."""
    if text is None or text == "":
        return 0.0
    try:
        value = float(text)
    except ValueError:
        raise RequestError(400, f"query threshold={text}: not a number") from None
    if not server_threshold <= value <= 1:
        raise RequestError(400, f"query threshold={text}: must be between the server's --confidence-threshold "
                                f"{server_threshold:g} and 1")
    return value


def parse_mask_format(text: str | None) -> str:
    value = text or "rle"
    if value not in MASK_FORMATS:
        raise RequestError(400, f"query format={value}: must be one of {', '.join(MASK_FORMATS)}")
    return value


def prediction_payload(instances: Instances, class_names: list[str] | None, category_ids: list[int] | None,
                       model_version: str, min_score: float, mask_format: str) -> dict:
    """The answer to one image: its detections scoring at least ``min_score`` (0: all the model kept), masks in
    ``mask_format``."""
    if min_score > 0:
        instances = instances[instances.scores >= min_score]
    height, width = instances.image_size
    prediction = Prediction(instances, np.empty((height, width, 0), np.uint8), class_names, category_ids)
    records = prediction.to_json(image_id=0)
    polygons = prediction.polygons if mask_format == "polygons" else None
    for k, record in enumerate(records):
        del record["image_id"]
        if polygons is not None:
            record["segmentation"] = polygons[k]
    return {"model_version": model_version, "image_size": [height, width], "instances": records}
