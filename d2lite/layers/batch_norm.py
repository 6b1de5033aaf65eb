"""Normalization layers: FrozenBatchNorm2d, SyncBatchNorm, NaiveSyncBatchNorm, LayerNorm and ``get_norm``."""

import logging
from typing import Callable, Optional, Tuple, Union

import torch
import torch.distributed as dist
from torch import nn
from torch.autograd.function import Function
from torch.nn import functional as F

from .wrappers import BatchNorm2d

__all__ = [
    "FrozenBatchNorm2d",
    "SyncBatchNorm",
    "NaiveSyncBatchNorm",
    "LayerNorm",
    "get_norm",
    "frozen_affine",
]

logger = logging.getLogger(__name__)


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d whose statistics and affine parameters are fixed buffers.

    It computes ``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias``
    with no trainable parameters and no statistics update, in train and eval mode.
    The four buffers are named like ``nn.BatchNorm2d``'s, so BN checkpoints load
    (``num_batches_tracked`` in the checkpoint is ignored).
    """

    _version = 3

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        # Such that running_var + eps == 1: an identity layer before loading weights.
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) -> (N, C, H, W)."""
        if x.requires_grad:
            # F.batch_norm(training=False) would still compute unused grads for the buffers.
            scale = self.weight * (self.running_var + self.eps).rsqrt()
            bias = self.bias - self.running_mean * scale
            scale = scale.reshape(1, -1, 1, 1)
            bias = bias.reshape(1, -1, 1, 1)
            out_dtype = x.dtype  # may be half under autocast
            return x * scale.to(out_dtype) + bias.to(out_dtype)
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, training=False, eps=self.eps
        )

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        version = local_metadata.get("version", None)
        if version is None or version < 2:
            # Very old checkpoints have no running statistics: use the identity ones.
            if prefix + "running_mean" not in state_dict:
                state_dict[prefix + "running_mean"] = torch.zeros_like(self.running_mean)
            if prefix + "running_var" not in state_dict:
                state_dict[prefix + "running_var"] = torch.ones_like(self.running_var)
        # A BatchNorm2d checkpoint carries a counter that FrozenBN does not need.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def __repr__(self) -> str:
        return f"FrozenBatchNorm2d(num_features={self.num_features}, eps={self.eps})"

    @classmethod
    def convert_frozen_batchnorm(cls, module: nn.Module) -> nn.Module:
        """Replace every BatchNorm2d / SyncBatchNorm in ``module`` (recursively) by FrozenBatchNorm2d.

        The statistics and affine parameters are copied. If ``module`` itself is a
        BN layer a new module is returned; otherwise ``module`` is modified in place
        and returned.
        """
        bn_module = (nn.modules.batchnorm.BatchNorm2d, nn.modules.batchnorm.SyncBatchNorm)
        res = module
        if isinstance(module, bn_module):
            res = cls(module.num_features)
            if module.affine:
                res.weight.data = module.weight.data.clone().detach()
                res.bias.data = module.bias.data.clone().detach()
            if module.running_mean is None:
                raise ValueError(
                    f"convert_frozen_batchnorm: {module} has track_running_stats=False; "
                    "there are no statistics to freeze."
                )
            res.running_mean.data = module.running_mean.data.clone()
            res.running_var.data = module.running_var.data.clone()
            res.eps = module.eps
        else:
            for name, child in module.named_children():
                new_child = cls.convert_frozen_batchnorm(child)
                if new_child is not child:
                    res.add_module(name, new_child)
        return res

    @classmethod
    def convert_frozenbatchnorm2d_to_batchnorm2d(cls, module: nn.Module) -> nn.Module:
        """Inverse of :meth:`convert_frozen_batchnorm`: FrozenBatchNorm2d -> trainable BatchNorm2d."""
        res = module
        if isinstance(module, FrozenBatchNorm2d):
            res = nn.BatchNorm2d(module.num_features, module.eps)
            res.weight.data = module.weight.data.clone().detach()
            res.bias.data = module.bias.data.clone().detach()
            res.running_mean.data = module.running_mean.data.clone().detach()
            res.running_var.data = module.running_var.data.clone().detach()
        else:
            for name, child in module.named_children():
                new_child = cls.convert_frozenbatchnorm2d_to_batchnorm2d(child)
                if new_child is not child:
                    res.add_module(name, new_child)
        return res


def _world_size() -> int:
    if not dist.is_available() or not dist.is_initialized():
        return 1
    return dist.get_world_size()


class _AllReduceSum(Function):
    """Differentiable all-reduce (sum) across processes."""

    @staticmethod
    def forward(ctx, input: torch.Tensor) -> torch.Tensor:
        output = input.clone()
        dist.all_reduce(output, op=dist.ReduceOp.SUM)
        return output

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        grad = grad_output.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


_warned_single_process_syncbn = False


def _warn_single_process_syncbn() -> None:
    global _warned_single_process_syncbn
    if not _warned_single_process_syncbn:
        _warned_single_process_syncbn = True
        logger.warning(
            "SyncBN is used in a single process (torch.distributed not initialized or "
            "world size 1): it behaves as plain BatchNorm2d."
        )


class SyncBatchNorm(nn.SyncBatchNorm):
    """``nn.SyncBatchNorm`` that also works on one process and on CPU (``get_norm("SyncBN")``).

    - one process (``torch.distributed`` not initialized or world size 1), or eval
      mode: exactly ``nn.BatchNorm2d``; logs one warning per process (so a config
      written for 8 GPUs runs on a laptop without "Default process group has not
      been initialized");
    - several processes, CUDA input: ``nn.SyncBatchNorm`` (as detectron2's "SyncBN");
    - several processes, CPU input (gloo): statistics of the whole global batch via a
      differentiable all-reduce of per-channel sums, i.e. the same numbers as
      ``nn.SyncBatchNorm`` (unbiased running_var, cumulative average if momentum=None).

    Being an ``nn.SyncBatchNorm``, its state-dict keys are ``nn.BatchNorm2d``'s and
    ``FrozenBatchNorm2d.convert_frozen_batchnorm`` converts it.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """input: (N, C, ...) -> same shape."""
        world_size = _world_size() if self.process_group is None else dist.get_world_size(self.process_group)
        if world_size == 1 or not self.training:
            if self.training:
                _warn_single_process_syncbn()
            # nn.BatchNorm's forward (nn.SyncBatchNorm's refuses CPU tensors once
            # a process group exists, even of size 1).
            return nn.modules.batchnorm._BatchNorm.forward(self, input)
        if input.device.type != "cpu":
            return super().forward(input)
        return self._forward_cpu_distributed(input)

    def _forward_cpu_distributed(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        C = input.shape[1]
        dims = [0] + list(range(2, input.dim()))
        x = input.float() if input.dtype in (torch.float16, torch.bfloat16) else input
        count = torch.full((1,), x.numel() // max(C, 1), dtype=x.dtype, device=x.device)
        vec = torch.cat([x.sum(dim=dims), (x * x).sum(dim=dims), count])
        vec = _AllReduceSum.apply(vec)
        total = vec[-1].detach().clamp(min=1)
        mean = vec[:C] / total
        var = (vec[C : 2 * C] / total - mean * mean).clamp(min=0)

        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
            else:
                factor = self.momentum
            with torch.no_grad():
                unbiased = var * total / (total - 1).clamp(min=1)
                self.running_mean.mul_(1 - factor).add_(factor * mean.detach())
                self.running_var.mul_(1 - factor).add_(factor * unbiased.detach())

        shape = [1, C] + [1] * (input.dim() - 2)
        invstd = torch.rsqrt(var + self.eps)
        if self.affine:
            scale = self.weight * invstd
            bias = self.bias - mean * scale
        else:
            scale = invstd
            bias = -mean * invstd
        out = x * scale.reshape(shape) + bias.reshape(shape)
        return out.to(input.dtype)


class NaiveSyncBatchNorm(BatchNorm2d):
    """detectron2's simple synchronized BatchNorm (``get_norm("naiveSyncBN")``).

    On one process (or in eval mode) it is exactly ``nn.BatchNorm2d`` (with the
    same one-time warning as :class:`SyncBatchNorm`); with several processes the
    per-process mean and mean-of-squares are averaged with a differentiable
    all-reduce (any backend). Unlike :class:`SyncBatchNorm`, its running_var is
    the biased variance and processes are weighted equally (``stats_mode=""``) or
    by batch size (``"N"``), as in detectron2. State-dict keys are ``nn.BatchNorm2d``'s.

    Args:
        stats_mode: ``""``: every process has equal weight (needs a non-empty batch
            on every process); ``"N"``: weight each process by its batch size,
            allowing empty batches. As detectron2's NaiveSyncBatchNorm.
    """

    def __init__(self, *args, stats_mode: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        if stats_mode not in ("", "N"):
            raise ValueError(f"NaiveSyncBatchNorm: stats_mode must be '' or 'N', got {stats_mode!r}")
        self._stats_mode = stats_mode

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """input: (N, C, H, W) -> (N, C, H, W)."""
        world_size = _world_size()
        if world_size == 1 or not self.training:
            if world_size == 1 and self.training:
                _warn_single_process_syncbn()
            return super().forward(input)
        if self.momentum is None:
            raise ValueError("NaiveSyncBatchNorm does not support momentum=None (cumulative average)")

        B, C = input.shape[0], input.shape[1]
        half_input = input.dtype == torch.float16
        if half_input:
            input = input.float()  # fp16 has too little range for the square
        mean = torch.mean(input, dim=[0, 2, 3])
        meansqr = torch.mean(input * input, dim=[0, 2, 3])

        if self._stats_mode == "":
            if B == 0:
                raise ValueError(
                    'NaiveSyncBatchNorm(stats_mode="") does not support zero batch size; use stats_mode="N".'
                )
            vec = torch.cat([mean, meansqr], dim=0)
            vec = _AllReduceSum.apply(vec) * (1.0 / world_size)
            mean, meansqr = torch.split(vec, C)
            momentum = self.momentum
        else:
            if B == 0:
                vec = torch.zeros([2 * C + 1], device=mean.device, dtype=mean.dtype)
                vec = vec + input.sum()  # keep input in the graph
            else:
                vec = torch.cat([mean, meansqr, torch.ones([1], device=mean.device, dtype=mean.dtype)], dim=0)
            vec = _AllReduceSum.apply(vec * B)
            total_batch = vec[-1].detach()
            momentum = total_batch.clamp(max=1) * self.momentum  # no update if the total batch is 0
            mean, meansqr, _ = torch.split(vec / total_batch.clamp(min=1), C)

        var = meansqr - mean * mean
        invstd = torch.rsqrt(var + self.eps)
        scale = self.weight * invstd
        bias = self.bias - mean * scale
        scale = scale.reshape(1, -1, 1, 1)
        bias = bias.reshape(1, -1, 1, 1)

        self.running_mean += momentum * (mean.detach() - self.running_mean)
        self.running_var += momentum * (var.detach() - self.running_var)
        self.num_batches_tracked += 1
        ret = input * scale + bias
        if half_input:
            ret = ret.half()
        return ret


class LayerNorm(nn.Module):
    """LayerNorm over the channel dim of (N, C, H, W) inputs ("channels first")."""

    def __init__(self, normalized_shape: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(normalized_shape))
        self.bias = nn.Parameter(torch.zeros(normalized_shape))
        self.eps = eps
        self.normalized_shape = (normalized_shape,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


_NORMS = {
    "BN": BatchNorm2d,
    "SyncBN": SyncBatchNorm,
    "FrozenBN": FrozenBatchNorm2d,
    "GN": lambda channels: nn.GroupNorm(32, channels),
    "nnSyncBN": nn.SyncBatchNorm,
    "naiveSyncBN": NaiveSyncBatchNorm,
    "naiveSyncBN_N": lambda channels: NaiveSyncBatchNorm(channels, stats_mode="N"),
    "LN": LayerNorm,
}


def get_norm(norm: Union[str, Callable[[int], nn.Module], None], out_channels: int) -> Optional[nn.Module]:
    """Build a normalization layer.

    Args:
        norm: one of "BN", "SyncBN" (:class:`SyncBatchNorm`: synchronized across
            processes, plain BN on one process), "FrozenBN", "GN" (32 groups),
            "nnSyncBN" (torch's SyncBatchNorm; needs GPUs once a process group
            exists), "naiveSyncBN", "naiveSyncBN_N", "LN";
            or a callable taking the channel count and returning a module;
            or "" / None for no normalization.
        out_channels: number of channels.

    Returns:
        nn.Module or None.
    """
    if norm is None:
        return None
    if isinstance(norm, str):
        if len(norm) == 0:
            return None
        if norm not in _NORMS:
            raise KeyError(f"get_norm: unknown norm {norm!r}; choose one of {sorted(_NORMS)} or '' for none")
        norm = _NORMS[norm]
    if not callable(norm):
        raise TypeError(f"get_norm: norm must be a str, a callable or None, got {type(norm)}")
    return norm(out_channels)


def frozen_affine(norm: Optional[nn.Module]) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """The per-channel ``(scale, shift)`` with ``norm(x) == x * scale + shift``, if ``norm``
    is such a fixed map at this moment, else None.

    Fixed maps: :class:`FrozenBatchNorm2d`, and a BatchNorm (``nn.BatchNorm2d`` and its
    subclasses, e.g. :class:`SyncBatchNorm`) in eval mode with running statistics. A norm
    with forward hooks returns None (so the hooks still see its input and output). Used to
    fold the norm into the preceding convolution (``conv(x, w * scale) + shift``: one pass
    over the activations fewer, the same numbers up to floating-point rounding).

    Returns:
        two (C,) tensors in the dtype of the norm's statistics, or None.
    """
    if norm is None or norm._forward_hooks or norm._forward_pre_hooks:
        return None
    if isinstance(norm, FrozenBatchNorm2d):
        weight, bias, mean, var, eps = norm.weight, norm.bias, norm.running_mean, norm.running_var, norm.eps
    elif (
        isinstance(norm, nn.modules.batchnorm._BatchNorm)
        and not norm.training
        and norm.track_running_stats
        and norm.running_mean is not None
    ):
        weight, bias, mean, var, eps = norm.weight, norm.bias, norm.running_mean, norm.running_var, norm.eps
    else:
        return None
    scale = (var + eps).rsqrt()
    if weight is not None:
        scale = weight * scale
    shift = -mean * scale
    if bias is not None:
        shift = bias + shift
    return scale, shift
