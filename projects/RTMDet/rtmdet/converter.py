"""Load mmdetection 3.x RTMDet checkpoints into the d2lite RTMDet model.

Module names in this project equal mmdetection's, so the key mapping is a prefix
rename (``MMDET_PREFIXES``):

=====================  ==============================
mmdetection            d2lite RTMDet
=====================  ==============================
``backbone.``          ``backbone.bottom_up.``
``neck.``              ``backbone.``
``bbox_head.``         ``head.``
=====================  ==============================

e.g. ``backbone.stem.0.conv.weight`` -> ``backbone.bottom_up.stem.0.conv.weight``,
``neck.reduce_layers.0.bn.running_mean`` -> ``backbone.reduce_layers.0.bn.running_mean``,
``bbox_head.rtm_cls.0.weight`` -> ``head.rtm_cls.0.weight``.

Checkpoint layout (mmengine): ``{"meta": ..., "state_dict": {...}, "ema_state_dict": {...}?, ...}``.
mmengine's EMAHook swaps the two before saving, so ``state_dict`` holds the **EMA**
weights (what released RTMDet checkpoints ship and what mmdetection evaluates), and
``ema_state_dict`` holds the raw training weights with a ``module.`` prefix and a
``steps`` counter.
"""

import logging
from typing import Any, Dict, Mapping, Union

import torch
from torch import Tensor

__all__ = ["MMDET_PREFIXES", "convert_mmdet_state_dict", "to_mmdet_state_dict", "load_mmdet_checkpoint"]

logger = logging.getLogger(__name__)

MMDET_PREFIXES = (("backbone.", "backbone.bottom_up."), ("neck.", "backbone."), ("bbox_head.", "head."))


def convert_mmdet_state_dict(state_dict: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """Rename mmdetection RTMDet keys to d2lite RTMDet keys.

    Raises:
        KeyError: for a key outside backbone./neck./bbox_head. (e.g. a different detector),
            naming the key.
    """
    out: Dict[str, Tensor] = {}
    for key, value in state_dict.items():
        for src, dst in MMDET_PREFIXES:
            if key.startswith(src):
                out[dst + key[len(src) :]] = value
                break
        else:
            raise KeyError(
                f"convert_mmdet_state_dict: key {key!r} does not start with backbone./neck./bbox_head.; "
                "is this an mmdetection RTMDet checkpoint?"
            )
    return out


def to_mmdet_state_dict(state_dict: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """Inverse of :func:`convert_mmdet_state_dict` (d2lite keys -> mmdetection keys)."""
    out: Dict[str, Tensor] = {}
    for key, value in state_dict.items():
        # longest d2lite prefix first: backbone.bottom_up. before backbone.
        for src, dst in sorted(MMDET_PREFIXES, key=lambda p: -len(p[1])):
            if key.startswith(dst):
                out[src + key[len(dst) :]] = value
                break
        else:
            raise KeyError(f"to_mmdet_state_dict: key {key!r} is not a d2lite RTMDet key.")
    return out


def load_mmdet_checkpoint(checkpoint: Union[str, Mapping[str, Any]], which: str = "state_dict") -> Dict[str, Tensor]:
    """Read an mmdetection RTMDet checkpoint and return a d2lite RTMDet state dict.

    Args:
        checkpoint: a path to a ``.pth`` file, or the loaded dict.
        which: "state_dict" (the EMA weights in EMAHook checkpoints and released
            models; the default) or "ema_state_dict" (the raw training weights
            that EMAHook swapped out; ``module.`` prefix and ``steps`` are dropped).

    Returns:
        state dict for ``model.load_state_dict(sd, strict=True)``.
    """
    if isinstance(checkpoint, str):
        ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
        source = checkpoint
    else:
        ckpt, source = checkpoint, "<dict>"
    if which not in ("state_dict", "ema_state_dict"):
        raise ValueError(f"load_mmdet_checkpoint: which must be 'state_dict' or 'ema_state_dict', got {which!r}.")
    if which not in ckpt:
        if which == "state_dict" and all(isinstance(v, Tensor) for v in ckpt.values()):
            sd = dict(ckpt)  # a bare state dict
        else:
            raise KeyError(f"load_mmdet_checkpoint: {source} has no {which!r} (keys: {sorted(ckpt)}).")
    else:
        sd = dict(ckpt[which])
    if which == "ema_state_dict":
        sd.pop("steps", None)
        sd = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in sd.items()}
    sd = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in sd.items()}  # DDP-saved
    # mmdetection's data_preprocessor has no parameters; anything else must be renamed.
    sd = {k: v for k, v in sd.items() if not k.startswith("data_preprocessor.")}
    logger.info("Loaded %d tensors from mmdetection checkpoint %s [%s]", len(sd), source, which)
    return convert_mmdet_state_dict(sd)
