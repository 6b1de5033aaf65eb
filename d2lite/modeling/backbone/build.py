"""Backbones by name, for detectron2's YAML configs (``cfg.MODEL.BACKBONE.NAME``)."""

from typing import Any, Optional

from d2lite.layers import ShapeSpec
from d2lite.utils.registry import Registry

from .backbone import Backbone

__all__ = ["BACKBONE_REGISTRY", "build_backbone"]

BACKBONE_REGISTRY = Registry("BACKBONE")
BACKBONE_REGISTRY.__doc__ = """
Backbone builders by the name used in ``cfg.MODEL.BACKBONE.NAME``. Each is called as
``obj(cfg, input_shape)`` (a config and the :class:`ShapeSpec` of the input images) and
returns a :class:`Backbone`. Registered: ``build_resnet_backbone``,
``build_resnet_fpn_backbone``, ``build_retinanet_resnet_fpn_backbone``.
"""


def build_backbone(cfg: Any, input_shape: Optional[ShapeSpec] = None) -> Backbone:
    """Build the backbone named by ``cfg.MODEL.BACKBONE.NAME``.

    Args:
        cfg: a config from :func:`d2lite.config.get_cfg`.
        input_shape: shape of the input images; defaults to ``len(cfg.MODEL.PIXEL_MEAN)`` channels.

    Returns:
        a :class:`Backbone`.
    """
    if input_shape is None:
        input_shape = ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN))
    name = cfg.MODEL.BACKBONE.NAME
    backbone = BACKBONE_REGISTRY.get(name)(cfg, input_shape)
    if not isinstance(backbone, Backbone):
        raise TypeError(f"MODEL.BACKBONE.NAME={name!r} returned a {type(backbone).__name__}, not a Backbone")
    return backbone
