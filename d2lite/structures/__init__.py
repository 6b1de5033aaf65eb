"""Data structures shared by data loading, models and evaluation."""

from .boxes import (
    Boxes,
    BoxMode,
    matched_pairwise_iou,
    pairwise_intersection,
    pairwise_ioa,
    pairwise_iou,
    pairwise_point_box_distance,
)
from .image_list import ImageList
from .instances import Instances

__all__ = [k for k in globals().keys() if not k.startswith("_")]
