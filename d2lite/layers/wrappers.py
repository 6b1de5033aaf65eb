"""Thin wrappers around torch ops: ``cat``, ``Conv2d`` with norm/activation, ``nonzero_tuple``, ..."""

from typing import Any, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from . import batch_norm as _batch_norm  # module reference: batch_norm imports this module

__all__ = [
    "shapes_to_tensor",
    "cat",
    "cross_entropy",
    "Conv2d",
    "ConvTranspose2d",
    "BatchNorm2d",
    "interpolate",
    "Linear",
    "nonzero_tuple",
    "move_device_like",
]


def shapes_to_tensor(x: Sequence[int], device: Optional[torch.device] = None) -> torch.Tensor:
    """Turn a list of ints (e.g. a shape) into a long tensor on ``device``."""
    if torch.jit.is_scripting() or torch.jit.is_tracing():
        if all(isinstance(t, torch.Tensor) for t in x):
            return torch.stack(list(x))
    return torch.as_tensor(x, device=device)


def cat(tensors: List[torch.Tensor], dim: int = 0) -> torch.Tensor:
    """``torch.cat`` that returns the only element of a 1-element list without copying."""
    if not isinstance(tensors, (list, tuple)):
        raise TypeError(f"cat expects a list/tuple of tensors, got {type(tensors)}")
    if len(tensors) == 1:
        return tensors[0]
    return torch.cat(tensors, dim)


def cross_entropy(input: torch.Tensor, target: torch.Tensor, *, reduction: str = "mean", **kwargs: Any) -> torch.Tensor:
    """``F.cross_entropy`` that returns 0 (not NaN) for an empty input with reduction="mean"."""
    if target.numel() == 0 and reduction == "mean":
        return input.sum() * 0.0  # connect the gradient
    return F.cross_entropy(input, target, reduction=reduction, **kwargs)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` with optional ``norm`` and ``activation`` applied in ``forward``.

    A ``norm`` that is a fixed per-channel affine map (FrozenBatchNorm2d, or BatchNorm in
    eval mode; see :func:`d2lite.layers.batch_norm.frozen_affine`) is folded into the
    convolution's weight and bias; the result equals ``norm(conv(x))`` up to rounding.

    Parameters are named as in detectron2 (``weight``, ``bias``, ``norm.weight``,
    ``norm.running_mean`` ...) so detectron2 checkpoints load.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        """
        Args: those of ``nn.Conv2d``, plus keyword-only:
            norm (nn.Module, optional): a normalization layer, e.g. from :func:`get_norm`.
            activation (callable(Tensor) -> Tensor, optional): e.g. ``F.relu``.

        Output: (N, out_channels, H', W').
        """
        norm = kwargs.pop("norm", None)
        activation = kwargs.pop("activation", None)
        super().__init__(*args, **kwargs)
        self.norm = norm
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            # Synchronized BN cannot compute statistics of an empty batch.
            if (
                x.numel() == 0
                and self.training
                and isinstance(self.norm, nn.SyncBatchNorm)
                and torch.distributed.is_available()
                and torch.distributed.is_initialized()
                and torch.distributed.get_world_size() > 1
            ):
                raise ValueError("SyncBatchNorm does not support empty inputs!")
        # A fixed norm (FrozenBN, BN in eval mode) is folded into the convolution:
        # conv(x, w * scale) + shift, one pass over the activations fewer.
        affine = _batch_norm.frozen_affine(self.norm)
        if affine is not None:
            scale, shift = affine
            weight = self.weight * scale.to(self.weight.dtype).reshape(-1, 1, 1, 1)
            bias = shift if self.bias is None else self.bias * scale + shift
            x = self._conv_forward(x, weight, bias.to(weight.dtype))
        else:
            x = self._conv_forward(x, self.weight, self.bias)
            if self.norm is not None:
                x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


ConvTranspose2d = nn.ConvTranspose2d
BatchNorm2d = nn.BatchNorm2d
interpolate = F.interpolate
Linear = nn.Linear


def nonzero_tuple(x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """``x.nonzero(as_tuple=True)``; a 0-dim input is treated as 1-dim."""
    if x.dim() == 0:
        return x.unsqueeze(0).nonzero().unbind(1)
    return x.nonzero(as_tuple=True)


def move_device_like(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """``src.to(dst.device)``."""
    return src.to(dst.device)
