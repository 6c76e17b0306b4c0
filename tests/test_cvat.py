"""The CVAT auto-annotation function (``adet.integrations.cvat``) run as cvat-cli runs it: loaded by module name,
``create(**params)``, its spec and shapes checked by cvat-sdk's own validation (the driver's mapper), masks and
polygons decoded by cvat-sdk equal to the model's, ``conf_threshold`` honoured."""

import importlib
import logging

import numpy as np
import pycocotools.mask as mask_util
import pytest
from PIL import Image

import adet

from .test_serve import tiny_model_files

cvataa = pytest.importorskip("cvat_sdk.auto_annotation")
from cvat_sdk import models  # noqa: E402
from cvat_sdk.auto_annotation.driver import _AnnotationMapper, _DetectionFunctionContextImpl  # noqa: E402
from cvat_sdk.masks import decode_mask  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return tiny_model_files(tmp_path_factory.mktemp("cvat"))


def cvat_shapes(function, image_path: str, conf_threshold, conv_mask_to_poly: bool) -> list:
    """The function's shapes for one image, validated and remapped to a task's label ids as cvat-cli's driver
    does."""
    context = _DetectionFunctionContextImpl(frame_name="frame.png", conf_threshold=conf_threshold,
                                            conv_mask_to_poly=conv_mask_to_poly)
    shapes = function.detect(context, Image.open(image_path))
    task_labels = [models.Label(name=name, id=100 + k, type="any", attributes=[], sublabels=[])
                   for k, name in enumerate(["bird", "dog", "cat", "person"])]  # the task's own ids and order
    mapper = _AnnotationMapper(logging.getLogger("cvat"), function.spec.labels, task_labels,
                               allow_unmatched_labels=False, conv_mask_to_poly=conv_mask_to_poly)
    _, remapped = mapper.validate_and_remap(shapes, ds_frame=0)
    return remapped


def test_the_cvat_function_gives_the_models_masks_and_polygons(files):
    module = importlib.import_module("adet.integrations.cvat")  # cvat-cli --function-module
    function = module.create(weights=files["weights"], device="cpu")  # -p weights=str:... -p device=str:cpu
    assert [(label.name, label.id, label.type) for label in function.spec.labels] == [
        ("cat", 0, "mask"), ("dog", 1, "mask"), ("bird", 2, "mask")]
    local = adet.load(files["weights"], device="cpu")
    compared = 0
    counts = {0.72: 0, None: 0, 0.75: 0}
    for path in files["images"]:
        prediction = local(path)
        height, width = prediction.instances.image_size
        for threshold, default in ((0.72, False), (None, True), (0.75, False)):
            # None: embedmask predict's default threshold, 0.5. The tiny model's scores lie in 0.70-0.79, so
            # 0.72 and 0.75 each keep a different part of them.
            kept = [k for k, (score, mask) in enumerate(zip(prediction.scores, prediction.masks))
                    if score >= (0.5 if default else threshold) and mask.any()]
            shapes = cvat_shapes(function, path, threshold, conv_mask_to_poly=False)
            assert len(shapes) == len(kept), (path, threshold)
            counts[threshold] += len(kept)
            for shape, k in zip(shapes, kept):
                assert shape.type.value == "mask" and shape.label_id == 102  # "cat" in the task's labels
                decoded = decode_mask(shape.points, image_width=width, image_height=height)
                assert np.array_equal(decoded, prediction.masks[k])
                compared += 1
        polygons = cvat_shapes(function, path, 0.3, conv_mask_to_poly=True)
        kept = [k for k, (score, mask) in enumerate(zip(prediction.scores, prediction.masks))
                if score >= 0.3 and mask.any()]
        assert len(polygons) == len(kept)
        for shape, k in zip(polygons, kept):
            assert shape.type.value == "polygon"
            drawn = mask_util.decode(mask_util.frPyObjects([list(shape.points)], height, width))[..., 0].astype(bool)
            mask = prediction.masks[k]
            assert (drawn & mask).sum() / (drawn | mask).sum() >= 0.9
    assert compared > 50  # masks from several images and thresholds were compared
    assert counts[None] > counts[0.72] > counts[0.75] > 0, counts  # each threshold kept a different set
