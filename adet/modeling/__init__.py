from .build import BACKBONES, META_ARCHITECTURES, build_model, prepare_for_inference, resolve_device

__all__ = ["BACKBONES", "META_ARCHITECTURES", "build_model", "prepare_for_inference", "resolve_device"]
