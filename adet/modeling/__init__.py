from .build import BACKBONES, META_ARCHITECTURES, build_model, resolve_device

__all__ = ["BACKBONES", "META_ARCHITECTURES", "build_model", "resolve_device"]
