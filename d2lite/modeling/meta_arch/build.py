"""Whole models by name, for detectron2's YAML configs (``cfg.MODEL.META_ARCHITECTURE``)."""

from typing import Any

import torch
from torch import nn

from d2lite.utils.registry import Registry

__all__ = ["META_ARCH_REGISTRY", "build_model"]

META_ARCH_REGISTRY = Registry("META_ARCH")
META_ARCH_REGISTRY.__doc__ = """
Meta-architectures (whole models) by the name used in ``cfg.MODEL.META_ARCHITECTURE``.
Each is called as ``obj(cfg)`` and returns an ``nn.Module``. Registered: ``RetinaNet``.
"""


def build_model(cfg: Any) -> nn.Module:
    """Build the model named by ``cfg.MODEL.META_ARCHITECTURE`` from a detectron2-style
    config (:func:`d2lite.config.get_cfg` + ``merge_from_file``) and move it to
    ``cfg.MODEL.DEVICE``. Weights are not loaded (``cfg.MODEL.WEIGHTS`` is for the
    checkpointer), as in detectron2.

    Example::

        cfg = get_cfg()
        cfg.merge_from_file("retinanet_R_50_FPN_1x.yaml")
        cfg.MODEL.DEVICE = "cpu"
        model = build_model(cfg)
    """
    device = torch.device(cfg.MODEL.DEVICE)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"MODEL.DEVICE={cfg.MODEL.DEVICE!r} (detectron2's default is 'cuda') but CUDA is not available; "
            "set MODEL.DEVICE to 'cpu'"
        )
    name = cfg.MODEL.META_ARCHITECTURE
    model = META_ARCH_REGISTRY.get(name)(cfg)
    model.to(device)
    return model
