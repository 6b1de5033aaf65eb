"""Backbones: ResNet and FPN with detectron2's names."""

from .backbone import Backbone
from .fpn import FPN, LastLevelMaxPool, LastLevelP6P7
from .resnet import BasicBlock, BasicStem, BottleneckBlock, CNNBlockBase, ResNet, ResNetBlockBase, make_stage

__all__ = [
    "Backbone",
    "BasicBlock",
    "BasicStem",
    "BottleneckBlock",
    "CNNBlockBase",
    "FPN",
    "LastLevelMaxPool",
    "LastLevelP6P7",
    "ResNet",
    "ResNetBlockBase",
    "make_stage",
]
