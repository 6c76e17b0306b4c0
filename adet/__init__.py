"""EmbedMask: Embedding Coupling for One-stage Instance Segmentation, in an AdelaiDet/detectron2-style package."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # The Python API (adet.load, adet.Predictor, adet.Prediction), imported on first use: `import adet` stays light.
    if name in ("load", "Predictor", "Prediction"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'adet' has no attribute '{name}'")
