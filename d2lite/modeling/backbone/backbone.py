"""Abstract base class of all backbones."""

from abc import ABCMeta, abstractmethod
from typing import Dict

from torch import nn

from d2lite.layers import ShapeSpec

__all__ = ["Backbone"]


class Backbone(nn.Module, metaclass=ABCMeta):
    """
    A network that maps an image batch (N, C, H, W) to a dict of named feature maps.

    Subclasses set ``_out_features`` (names), ``_out_feature_channels`` and
    ``_out_feature_strides`` (dicts keyed by name), or override :meth:`output_shape`.
    """

    def __init__(self):
        super().__init__()

    @abstractmethod
    def forward(self, *args, **kwargs):
        """
        Returns:
            dict[str, Tensor]: mapping from feature name (e.g. "res2", "p3") to a tensor.
        """

    @property
    def size_divisibility(self) -> int:
        """
        Input height and width must be divisible by this (the batcher pads to it);
        0 means no requirement. FPN-like backbones need it to align top-down features.
        """
        return 0

    @property
    def padding_constraints(self) -> Dict[str, int]:
        """
        Extra padding rules for :meth:`ImageList.from_tensors`: ``{"size_divisibility": int,
        "square_size": int}``. Empty means none besides :attr:`size_divisibility`.
        """
        return {}

    def output_shape(self) -> Dict[str, ShapeSpec]:
        """Channels and stride of each output feature, keyed by name."""
        return {
            name: ShapeSpec(channels=self._out_feature_channels[name], stride=self._out_feature_strides[name])
            for name in self._out_features
        }
