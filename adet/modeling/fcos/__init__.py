from .fcos import FCOS, build_fcos
from .head import FCOSHead

__all__ = ["FCOS", "FCOSHead", "build_fcos"]
