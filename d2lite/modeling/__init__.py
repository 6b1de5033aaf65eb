"""Models: backbones, anchors, matching, box coding and detectors (detectron2 names).

``build_model(cfg)`` builds a model from a detectron2-style YAML config, looking up the
names in the config in ``META_ARCH_REGISTRY``, ``BACKBONE_REGISTRY`` and
``ANCHOR_GENERATOR_REGISTRY``; LazyConfig files build the classes directly.
"""

from d2lite.layers import ShapeSpec

from .anchor_generator import ANCHOR_GENERATOR_REGISTRY, DefaultAnchorGenerator, build_anchor_generator
from .backbone import (
    BACKBONE_REGISTRY,
    FPN,
    Backbone,
    BasicBlock,
    BasicStem,
    BottleneckBlock,
    ResNet,
    build_backbone,
    build_resnet_backbone,
    build_resnet_fpn_backbone,
    build_retinanet_resnet_fpn_backbone,
)
from .box_regression import Box2BoxTransform
from .matcher import Matcher
from .meta_arch import META_ARCH_REGISTRY, DenseDetector, RetinaNet, RetinaNetHead, build_model
from .postprocessing import detector_postprocess

__all__ = [
    "ANCHOR_GENERATOR_REGISTRY",
    "BACKBONE_REGISTRY",
    "META_ARCH_REGISTRY",
    "build_anchor_generator",
    "build_backbone",
    "build_model",
    "build_resnet_backbone",
    "build_resnet_fpn_backbone",
    "build_retinanet_resnet_fpn_backbone",
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
