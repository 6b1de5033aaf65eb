"""ShapeSpec: the shape of a feature map, passed between backbone, neck and head."""

from dataclasses import dataclass
from typing import Optional

__all__ = ["ShapeSpec"]


@dataclass
class ShapeSpec:
    """Shape of a tensor (all fields optional).

    A dataclass rather than a namedtuple (detectron2 PR #4253) so that it can be
    stored inside omegaconf configs.

    Attributes:
        channels: number of channels.
        height, width: spatial size in pixels of the feature map.
        stride: the feature map's stride w.r.t. the input image, in pixels.
    """

    channels: Optional[int] = None
    height: Optional[int] = None
    width: Optional[int] = None
    stride: Optional[int] = None
