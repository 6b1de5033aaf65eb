"""Meta-architectures: whole detectors."""

from .build import META_ARCH_REGISTRY, build_model
from .dense_detector import DenseDetector
from .retinanet import RetinaNet, RetinaNetHead

__all__ = ["META_ARCH_REGISTRY", "DenseDetector", "RetinaNet", "RetinaNetHead", "build_model"]
