from .fpn import FPN, LastLevelP6P7, build_fcos_resnet_fpn_backbone
from .resnet import ResNet

__all__ = ["FPN", "LastLevelP6P7", "ResNet", "build_fcos_resnet_fpn_backbone"]
