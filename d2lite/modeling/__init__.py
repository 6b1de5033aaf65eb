"""Models: backbones, anchors, matching, box coding and detectors (detectron2 names)."""

from d2lite.layers import ShapeSpec

from .anchor_generator import DefaultAnchorGenerator
from .backbone import FPN, Backbone, BasicBlock, BasicStem, BottleneckBlock, ResNet
from .box_regression import Box2BoxTransform
from .matcher import Matcher
from .meta_arch import DenseDetector, RetinaNet, RetinaNetHead
from .postprocessing import detector_postprocess

__all__ = [
    "Backbone",
    "BasicBlock",
    "BasicStem",
    "BottleneckBlock",
    "Box2BoxTransform",
    "DefaultAnchorGenerator",
    "DenseDetector",
    "FPN",
    "Matcher",
    "ResNet",
    "RetinaNet",
    "RetinaNetHead",
    "ShapeSpec",
    "detector_postprocess",
]
