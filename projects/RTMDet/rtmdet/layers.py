"""Building blocks of CSPNeXt / CSPNeXtPAFPN, named as mmcv/mmdetection name them.

Every module keeps mmdetection's attribute names (``conv``/``bn``/``activate`` in
:class:`ConvModule`, ``depthwise_conv``/``pointwise_conv`` in
:class:`DepthwiseSeparableConvModule`, ``main_conv``/``short_conv``/``final_conv``/
``blocks``/``attention`` in :class:`CSPLayer`, ...), so an mmdetection state dict
loads after a prefix rename only (see :mod:`rtmdet.converter`).
"""

from typing import Callable, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from d2lite.layers import get_norm
from d2lite.layers.batch_norm import frozen_affine

__all__ = [
    "ConvModule",
    "DepthwiseSeparableConvModule",
    "ChannelAttention",
    "SPPBottleneck",
    "CSPNeXtBlock",
    "CSPLayer",
    "get_activation",
]

NormType = Union[str, Callable[[int], nn.Module], None]


def get_activation(act: Union[str, None]) -> nn.Module:
    """Return an activation module from a short name.

    Args:
        act: "SiLU" (mmdetection's RTMDet default), "ReLU", "LeakyReLU"
            (slope 0.1), or None/"" for identity.
    """
    if act is None or act == "":
        return nn.Identity()
    table = {
        # Not in place: SiLU's backward needs its input, so an in-place SiLU makes autograd
        # clone the input first (an extra pass over every activation in training).
        "SiLU": lambda: nn.SiLU(),
        "Swish": lambda: nn.SiLU(),
        "ReLU": lambda: nn.ReLU(inplace=True),
        "LeakyReLU": lambda: nn.LeakyReLU(0.1, inplace=True),
    }
    if act not in table:
        raise ValueError(f"Unknown activation {act!r}; expected one of {sorted(table)} or None.")
    return table[act]()


class ConvModule(nn.Module):
    """Conv2d -> norm -> activation, with mmcv's submodule names ``conv``, ``bn``, ``activate``.

    The convolution has no bias when a norm follows (as mmcv's ``bias='auto'``).
    Weights are initialised as mmcv's ``ConvModule.init_weights``: Kaiming normal
    (fan_out, relu) for the conv, 1/0 for the norm.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, groups: as ``nn.Conv2d``.
        norm: a :func:`d2lite.layers.get_norm` spec ("BN", "SyncBN", callable) or
            None/"" for no norm. Defaults to "BN" (eps 1e-5, momentum 0.1: the values
            mmdetection's released RTMDet configs use through ``norm_cfg=dict(type='SyncBN')``).
        act: activation name for :func:`get_activation`. Defaults to "SiLU".
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        *,
        norm: NormType = "BN",
        act: Union[str, None] = "SiLU",
    ) -> None:
        super().__init__()
        with_norm = norm is not None and norm != ""
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            groups=groups,
            bias=not with_norm,
        )
        if with_norm:
            self.bn = get_norm(norm, out_channels)
        else:
            self.bn = None
        self.activate = get_activation(act)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        if self.conv.bias is not None:
            nn.init.zeros_(self.conv.bias)
        if self.bn is not None:
            nn.init.ones_(self.bn.weight)
            nn.init.zeros_(self.bn.bias)

    def forward(self, x: Tensor) -> Tensor:
        # In eval mode BN is a fixed affine map: fold it into the conv (one pass over the
        # activations fewer; the same numbers up to floating-point rounding).
        affine = frozen_affine(self.bn)
        if affine is not None:
            scale, shift = affine
            conv = self.conv
            weight = conv.weight * scale.to(conv.weight.dtype).reshape(-1, 1, 1, 1)
            bias = shift if conv.bias is None else conv.bias * scale + shift
            x = F.conv2d(x, weight, bias.to(weight.dtype), conv.stride, conv.padding, conv.dilation, conv.groups)
            return self.activate(x)
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.activate(x)


class DepthwiseSeparableConvModule(nn.Module):
    """Depthwise ``k x k`` ConvModule then pointwise ``1 x 1`` ConvModule (each with norm and act)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        *,
        norm: NormType = "BN",
        act: Union[str, None] = "SiLU",
    ) -> None:
        super().__init__()
        self.depthwise_conv = ConvModule(
            in_channels, in_channels, kernel_size, stride, padding, groups=in_channels, norm=norm, act=act
        )
        self.pointwise_conv = ConvModule(in_channels, out_channels, 1, norm=norm, act=act)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise_conv(self.depthwise_conv(x))


class ChannelAttention(nn.Module):
    """Channel attention of CSPNeXt: ``x * hardsigmoid(fc(avgpool(x)))``.

    ``fc`` is a 1x1 conv with bias (``channels -> channels``).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.global_avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Conv2d(channels, channels, 1, 1, 0, bias=True)
        self.act = nn.Hardsigmoid(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.act(self.fc(self.global_avgpool(x)))
        return x * out


class SPPBottleneck(nn.Module):
    """Spatial pyramid pooling: 1x1 conv to half the channels, max-pools of each kernel size
    (stride 1, same padding) concatenated with their input, then a 1x1 conv.

    Growing odd kernels (mmdetection's 5, 9, 13) are computed as a cascade of pools
    (SPPF, the same values; a tie between maxima may route the gradient to another of
    the tied inputs).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_sizes: Sequence[int] = (5, 9, 13),
        *,
        norm: NormType = "BN",
        act: Union[str, None] = "SiLU",
    ) -> None:
        super().__init__()
        mid_channels = in_channels // 2
        self.conv1 = ConvModule(in_channels, mid_channels, 1, norm=norm, act=act)
        self.poolings = nn.ModuleList([nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2) for k in kernel_sizes])
        self.conv2 = ConvModule(mid_channels * (len(kernel_sizes) + 1), out_channels, 1, norm=norm, act=act)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        kernels = [pool.kernel_size for pool in self.poolings]
        if all(isinstance(k, int) and k % 2 == 1 for k in kernels) and kernels == sorted(kernels):
            # Max-pools of growing odd kernels (stride 1, padding k // 2) as a cascade:
            # pool_b(pool_a(x)) == pool_{a + b - 1}(x) exactly, e.g. 9 = 5 then 5, 13 = 9 then 5
            # (SPPF): 3 small pools instead of 5x5, 9x9 and 13x13 ones.
            outs, y, prev = [x], x, 1
            for k in kernels:
                step = k - prev + 1
                y = F.max_pool2d(y, step, stride=1, padding=step // 2) if step > 1 else y
                outs.append(y)
                prev = k
        else:
            outs = [x] + [pool(x) for pool in self.poolings]
        return self.conv2(torch.cat(outs, dim=1))


class CSPNeXtBlock(nn.Module):
    """CSPNeXt basic block: 3x3 ConvModule then 5x5 depthwise-separable conv, plus identity.

    The identity is added only when ``add_identity`` and ``in_channels == out_channels``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        expansion: float = 0.5,
        add_identity: bool = True,
        kernel_size: int = 5,
        *,
        norm: NormType = "BN",
        act: Union[str, None] = "SiLU",
    ) -> None:
        super().__init__()
        hidden_channels = int(out_channels * expansion)
        self.conv1 = ConvModule(in_channels, hidden_channels, 3, 1, 1, norm=norm, act=act)
        self.conv2 = DepthwiseSeparableConvModule(
            hidden_channels, out_channels, kernel_size, 1, kernel_size // 2, norm=norm, act=act
        )
        self.add_identity = add_identity and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv2(self.conv1(x))
        return out + x if self.add_identity else out


class CSPLayer(nn.Module):
    """Cross Stage Partial layer with CSPNeXt blocks.

    ``final_conv(attention?(cat(blocks(main_conv(x)), short_conv(x))))`` where
    ``main_conv``/``short_conv`` are 1x1 convs to ``int(out_channels * expand_ratio)``
    channels. Channel attention is used in CSPNeXt (backbone) stages only.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        expand_ratio: float = 0.5,
        num_blocks: int = 1,
        add_identity: bool = True,
        channel_attention: bool = False,
        *,
        norm: NormType = "BN",
        act: Union[str, None] = "SiLU",
    ) -> None:
        super().__init__()
        mid_channels = int(out_channels * expand_ratio)
        self.channel_attention = channel_attention
        self.main_conv = ConvModule(in_channels, mid_channels, 1, norm=norm, act=act)
        self.short_conv = ConvModule(in_channels, mid_channels, 1, norm=norm, act=act)
        self.final_conv = ConvModule(2 * mid_channels, out_channels, 1, norm=norm, act=act)
        self.blocks = nn.Sequential(
            *[
                CSPNeXtBlock(mid_channels, mid_channels, 1.0, add_identity, norm=norm, act=act)
                for _ in range(num_blocks)
            ]
        )
        if channel_attention:
            self.attention = ChannelAttention(2 * mid_channels)

    def forward(self, x: Tensor) -> Tensor:
        x_short = self.short_conv(x)
        x_main = self.blocks(self.main_conv(x))
        x_final = torch.cat((x_main, x_short), dim=1)
        if self.channel_attention:
            x_final = self.attention(x_final)
        return self.final_conv(x_final)
