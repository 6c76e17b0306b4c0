"""EmbedMask: Embedding Coupling for One-stage Instance Segmentation, in an AdelaiDet/detectron2-style package.

``import adet`` is cheap: ``adet.load``, ``adet.Model`` (once ``adet.Predictor``) and ``adet.Prediction`` load the
model facade (:mod:`adet.api`, hence torch) on first use (PEP 562)."""

from __future__ import annotations

import importlib
from typing import Any

from .version import __version__

_LAZY = {"load": "adet.api", "Model": "adet.api", "Predictor": "adet.api", "Prediction": "adet.api"}

__all__ = ["Model", "Prediction", "Predictor", "__version__", "load"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups find it directly
        return value
    raise AttributeError(f"module 'adet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
