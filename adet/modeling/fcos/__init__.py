from .fcos import FCOS, FCOSOutputs, build_fcos
from .head import FCOSHead, FCOSHeadOutputs
from .inference import Detections
from .targets import LocationTargets

__all__ = ["FCOS", "FCOSHead", "FCOSHeadOutputs", "FCOSOutputs", "Detections", "LocationTargets", "build_fcos"]
