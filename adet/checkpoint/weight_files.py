"""Where weight files come from, and the two ImageNet formats that initialise the backbone only:
detectron2's MSRA Caffe2 ``R-50.pkl`` / ``R-101.pkl`` and torchvision's ResNet ``.pth``."""

from __future__ import annotations

import os
import pickle
import re

import numpy as np
import torch
from torch import nn

from adet.errors import WeightFileError

from .download import is_url, resolve_url
from .report import LoadReport, compare_state_dicts


def resolve_weight_path(path: str) -> str:
    """A local file for ``path``: the path itself, or for a URL (``detectron2://``, ``https://``, ``hf://``) a cached
    or downloaded copy (``download.py``)."""
    if not is_url(path):
        return os.path.expanduser(path)
    return resolve_url(path)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts of numpy arrays and refuses every other global (no code runs from the file)."""

    ALLOWED = {"_reconstruct", "ndarray", "dtype", "scalar"}

    def find_class(self, module: str, name: str):
        if module.split(".")[0] == "numpy" and name in self.ALLOWED:
            # Pickles written with numpy 1.x name numpy.core, which numpy 2 renamed to numpy._core.
            module = module.replace("numpy.core", "numpy._core") if np.__version__ >= "2" else module
            return super().find_class(module, name)
        # Protocol-2 pickles written by Python 3 encode raw bytes with _codecs.encode: harmless.
        if (module, name) in (("collections", "OrderedDict"), ("_codecs", "encode")):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed (only numpy arrays are)")


# Caffe2 MSRA ResNet blob names -> detectron2 names (spec 8.7).
_C2_BRANCHES = {"branch1": "shortcut", "branch2a": "conv1", "branch2b": "conv2", "branch2c": "conv3"}
_C2_SUFFIXES = {"w": "weight", "b": "bias", "bn_s": "norm.weight", "bn_b": "norm.bias", "bn_rm": "norm.running_mean",
                "bn_riv": "norm.running_var"}


def c2_to_detectron2_name(name: str) -> str | None:
    """``res3_0_branch2a_bn_s`` -> ``res3.0.conv1.norm.weight``, ``conv1_w`` -> ``stem.conv1.weight``; None for
    blobs that are not ResNet body weights (``fc1000_w``, momenta)."""
    suffix = r"(w|b|bn_s|bn_b|bn_rm|bn_riv)"
    match = re.fullmatch(rf"res(\d)_(\d+)_(branch1|branch2a|branch2b|branch2c)_{suffix}", name)
    if match:
        stage, block, branch, leaf = match.groups()
        return f"res{stage}.{block}.{_C2_BRANCHES[branch]}.{_C2_SUFFIXES[leaf]}"
    match = re.fullmatch(rf"(?:res_)?conv1_{suffix}", name)
    if match:
        return f"stem.conv1.{_C2_SUFFIXES[match.group(1)]}"
    return None


def read_msra_pkl(path: str) -> dict[str, torch.Tensor]:
    """The ResNet weights of a detectron2 MSRA ``.pkl`` under detectron2 names."""
    try:
        with open(path, "rb") as f:
            data = _NumpyOnlyUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, AttributeError, ImportError) as e:
        raise WeightFileError(f"{path}: refused or unreadable as a Caffe2 weight pickle ({e})") from None
    if isinstance(data, dict) and "blobs" in data:
        data = data["blobs"]
    if not isinstance(data, dict):
        raise WeightFileError(f"{path}: expected a dict of arrays, found a {type(data).__name__}")
    converted = {}
    for name, value in data.items():
        target = c2_to_detectron2_name(name)
        if target is not None:
            converted[target] = torch.as_tensor(np.asarray(value, dtype=np.float32))
    if not converted:
        raise WeightFileError(f"{path}: no ResNet weights found (expected Caffe2 names like 'res2_0_branch2a_w')")
    return converted


def is_torchvision_resnet(state_dict: dict[str, torch.Tensor]) -> bool:
    return "conv1.weight" in state_dict and "layer1.0.conv1.weight" in state_dict


def torchvision_to_detectron2(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision ResNet names -> detectron2 names; the stem's input channels are flipped RGB -> BGR because this
    model reads BGR images."""
    converted = {}
    for name, value in state_dict.items():
        if name.startswith("fc.") or name.endswith("num_batches_tracked"):
            continue
        new = re.sub(r"^conv1\.", "stem.conv1.", name)
        new = re.sub(r"^bn1\.", "stem.conv1.norm.", new)
        new = re.sub(r"^layer(\d)\.", lambda m: f"res{int(m.group(1)) + 1}.", new)
        new = re.sub(r"\.bn(\d)\.", r".conv\1.norm.", new)
        new = new.replace(".downsample.0.", ".shortcut.").replace(".downsample.1.", ".shortcut.norm.")
        converted[new] = value
    converted["stem.conv1.weight"] = converted["stem.conv1.weight"].flip(1)
    return converted


def check_torchvision_compatible(model: nn.Module, source: str) -> None:
    """torchvision bottlenecks stride in the 3x3 conv; a model built with STRIDE_IN_1X1 would silently differ."""
    first_conv = model.backbone.bottom_up.res3[0].conv1
    if first_conv.kernel_size == (1, 1) and first_conv.stride == (2, 2):  # a bottleneck striding in its 1x1
        raise WeightFileError(f"{source} is a torchvision ResNet, which strides in the 3x3 conv: set "
                              "MODEL.RESNETS.STRIDE_IN_1X1 False (and MODEL.PIXEL_STD to [57.375, 57.12, 58.395])")


def load_backbone_weights(model: nn.Module, weights: dict[str, torch.Tensor], source: str) -> LoadReport:
    """Load ResNet weights (detectron2 names) into ``model.backbone.bottom_up``; everything else keeps its init.

    Frozen BN statistics that a Caffe2 file lacks become mean 0 / variance 1, as detectron2 does.
    """
    bottom_up = model.backbone.bottom_up
    expected = bottom_up.state_dict()
    weights = dict(weights)
    for name in expected:
        if name.endswith("running_mean") and name not in weights:
            weights[name] = torch.zeros_like(expected[name])
        elif name.endswith("running_var") and name not in weights:
            weights[name] = torch.ones_like(expected[name])
        elif name.endswith("num_batches_tracked") and name not in weights:
            weights[name] = expected[name]
    report = compare_state_dicts(weights, expected)
    if report.missing or report.wrong_shape:
        raise WeightFileError(f"{source} does not fit the ResNet of MODEL.RESNETS (check DEPTH):\n"
                              f"{report.summary()}")
    bottom_up.load_state_dict(report.loadable(weights), strict=False)
    return report
