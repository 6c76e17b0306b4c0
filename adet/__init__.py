"""EmbedMask: Embedding Coupling for One-stage Instance Segmentation, in an AdelaiDet/detectron2-style package."""

__version__ = "0.1.0"
