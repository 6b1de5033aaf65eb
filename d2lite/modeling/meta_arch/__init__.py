"""Meta-architectures: whole detectors."""

from .dense_detector import DenseDetector
from .retinanet import RetinaNet, RetinaNetHead

__all__ = ["DenseDetector", "RetinaNet", "RetinaNetHead"]
