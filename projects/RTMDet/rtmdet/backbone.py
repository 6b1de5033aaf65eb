"""CSPNeXt backbone and CSPNeXtPAFPN neck of RTMDet (mmdetection 3.x numbers).

The neck is a d2lite :class:`Backbone` wrapping the CSPNeXt ``bottom_up`` (as
detectron2's FPN wraps a ResNet), so the detector sees one backbone that returns
``{"p3", "p4", "p5"}``. State-dict keys: ``backbone.bottom_up.*`` = mmdetection's
``backbone.*``, ``backbone.*`` (neck layers) = mmdetection's ``neck.*``.
"""

import math
from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor, nn

from d2lite.layers import ShapeSpec
from d2lite.modeling.backbone import Backbone

from .layers import ConvModule, CSPLayer, NormType, SPPBottleneck

__all__ = ["CSPNeXt", "CSPNeXtPAFPN"]


class CSPNeXt(Backbone):
    """CSPNeXt backbone used in RTMDet.

    A stem of three 3x3 ConvModules (stride 2, 1, 1) followed by four stages
    (``stage1``..``stage4``, strides 4, 8, 16, 32). Each stage is a stride-2
    3x3 ConvModule, an :class:`SPPBottleneck` (last stage of P5 only) and a
    :class:`CSPLayer` with channel attention.

    Args:
        arch: "P5" (the only architecture RTMDet detection uses). Defaults to "P5".
        deepen_factor: multiplies the number of blocks per stage
            (``max(round(n * deepen_factor), 1)``). tiny 0.167, s 0.33, l 1.0.
        widen_factor: multiplies channels (``int(c * widen_factor)``).
            tiny 0.375, s 0.5, l 1.0.
        out_features: which of "stem", "stage1".."stage4" to return.
            Defaults to ("stage2", "stage3", "stage4") (mmdetection's out_indices (2, 3, 4)).
        expand_ratio: hidden-channel ratio of the CSP layers. Defaults to 0.5.
        spp_kernel_sizes: max-pool kernels of the SPP block. Defaults to (5, 9, 13).
        channel_attention: channel attention in every CSP layer. Defaults to True.
        norm: norm spec for :func:`d2lite.layers.get_norm`. Defaults to "BN".
        act: activation name. Defaults to "SiLU".
        freeze_at: freeze the stem and the first ``freeze_at - 1`` stages
            (parameters stop requiring grad; 0 freezes nothing). Defaults to 0.

    Example::

        >>> net = CSPNeXt(deepen_factor=0.167, widen_factor=0.375)
        >>> {k: v.shape for k, v in net(torch.zeros(1, 3, 64, 64)).items()}
        {'stage2': (1, 96, 8, 8), 'stage3': (1, 192, 4, 4), 'stage4': (1, 384, 2, 2)}
    """

    # in_channels, out_channels, num_blocks, add_identity, use_spp
    arch_settings = {
        "P5": [
            [64, 128, 3, True, False],
            [128, 256, 6, True, False],
            [256, 512, 6, True, False],
            [512, 1024, 3, False, True],
        ],
    }

    def __init__(
        self,
        arch: str = "P5",
        deepen_factor: float = 1.0,
        widen_factor: float = 1.0,
        out_features: Sequence[str] = ("stage2", "stage3", "stage4"),
        expand_ratio: float = 0.5,
        spp_kernel_sizes: Sequence[int] = (5, 9, 13),
        channel_attention: bool = True,
        norm: NormType = "BN",
        act: str = "SiLU",
        freeze_at: int = 0,
    ) -> None:
        super().__init__()
        if arch not in self.arch_settings:
            raise ValueError(f"CSPNeXt: unknown arch {arch!r}; available: {sorted(self.arch_settings)}.")
        setting = self.arch_settings[arch]
        stem_ch = int(setting[0][0] * widen_factor)
        self.stem = nn.Sequential(
            ConvModule(3, stem_ch // 2, 3, stride=2, padding=1, norm=norm, act=act),
            ConvModule(stem_ch // 2, stem_ch // 2, 3, stride=1, padding=1, norm=norm, act=act),
            ConvModule(stem_ch // 2, stem_ch, 3, stride=1, padding=1, norm=norm, act=act),
        )
        self.stage_names: List[str] = ["stem"]
        self._out_feature_channels = {"stem": stem_ch}
        self._out_feature_strides = {"stem": 2}
        stride = 2
        for i, (in_ch, out_ch, num_blocks, add_identity, use_spp) in enumerate(setting):
            in_ch = int(in_ch * widen_factor)
            out_ch = int(out_ch * widen_factor)
            num_blocks = max(round(num_blocks * deepen_factor), 1)
            stage: List[nn.Module] = [ConvModule(in_ch, out_ch, 3, stride=2, padding=1, norm=norm, act=act)]
            if use_spp:
                stage.append(SPPBottleneck(out_ch, out_ch, spp_kernel_sizes, norm=norm, act=act))
            stage.append(
                CSPLayer(
                    out_ch,
                    out_ch,
                    expand_ratio=expand_ratio,
                    num_blocks=num_blocks,
                    add_identity=add_identity,
                    channel_attention=channel_attention,
                    norm=norm,
                    act=act,
                )
            )
            name = f"stage{i + 1}"
            self.add_module(name, nn.Sequential(*stage))
            self.stage_names.append(name)
            stride *= 2
            self._out_feature_channels[name] = out_ch
            self._out_feature_strides[name] = stride
        unknown = [f for f in out_features if f not in self.stage_names]
        if unknown:
            raise ValueError(f"CSPNeXt: out_features {unknown} not in {self.stage_names}.")
        self._out_features = list(out_features)
        self.freeze(freeze_at)

    def freeze(self, freeze_at: int = 0) -> "CSPNeXt":
        """Stop gradients of the stem (freeze_at >= 1) and stages 1..freeze_at-1."""
        for name in self.stage_names[:freeze_at]:
            for p in getattr(self, name).parameters():
                p.requires_grad_(False)
        return self

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        """Args: x (N, 3, H, W). Returns: {name: (N, C, H/stride, W/stride)} for out_features."""
        if x.dim() != 4:
            raise ValueError(f"CSPNeXt takes (N, C, H, W) input, got shape {tuple(x.shape)}.")
        outs = {}
        last = max(self.stage_names.index(f) for f in self._out_features)
        for name in self.stage_names[: last + 1]:
            x = getattr(self, name)(x)
            if name in self._out_features:
                outs[name] = x
        return outs

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            n: ShapeSpec(channels=self._out_feature_channels[n], stride=self._out_feature_strides[n])
            for n in self._out_features
        }


class CSPNeXtPAFPN(Backbone):
    """Path-aggregation FPN with CSPNeXt blocks, on top of a ``bottom_up`` backbone.

    Top-down: the coarsest feature is reduced by a 1x1 ConvModule, upsampled 2x
    (nearest), concatenated with the next finer input and fused by a CSPLayer;
    the *reduced* coarse feature replaces the coarse input for the bottom-up path.
    Bottom-up: a stride-2 3x3 ConvModule, concatenation, CSPLayer. Each output
    level then gets a 3x3 ConvModule to ``out_channels``. No channel attention.

    Args:
        bottom_up: backbone producing ``in_features``.
        in_features: input feature names, finest first (e.g. stage2..stage4).
        out_channels: channels of every output level (tiny 96, s 128, l 256).
        num_csp_blocks: blocks per CSPLayer (tiny/s 1, l 3). Defaults to 3.
        expand_ratio: CSPLayer hidden ratio. Defaults to 0.5.
        norm, act: as :class:`CSPNeXt`.

    Returns from forward: {"p3", "p4", "p5", ...} (named by log2 of the stride).
    """

    def __init__(
        self,
        bottom_up: Backbone,
        in_features: Sequence[str],
        out_channels: int,
        num_csp_blocks: int = 3,
        expand_ratio: float = 0.5,
        norm: NormType = "BN",
        act: str = "SiLU",
    ) -> None:
        super().__init__()
        shapes = bottom_up.output_shape()
        missing = [f for f in in_features if f not in shapes]
        if missing:
            raise ValueError(f"CSPNeXtPAFPN: in_features {missing} are not produced by bottom_up ({sorted(shapes)}).")
        self.bottom_up = bottom_up
        self.in_features = list(in_features)
        in_channels = [shapes[f].channels for f in in_features]
        strides = [shapes[f].stride for f in in_features]
        self.in_channels = in_channels
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.reduce_layers = nn.ModuleList()
        self.top_down_blocks = nn.ModuleList()
        for idx in range(len(in_channels) - 1, 0, -1):
            self.reduce_layers.append(ConvModule(in_channels[idx], in_channels[idx - 1], 1, norm=norm, act=act))
            self.top_down_blocks.append(
                CSPLayer(
                    in_channels[idx - 1] * 2,
                    in_channels[idx - 1],
                    expand_ratio=expand_ratio,
                    num_blocks=num_csp_blocks,
                    add_identity=False,
                    norm=norm,
                    act=act,
                )
            )
        self.downsamples = nn.ModuleList()
        self.bottom_up_blocks = nn.ModuleList()
        for idx in range(len(in_channels) - 1):
            self.downsamples.append(
                ConvModule(in_channels[idx], in_channels[idx], 3, stride=2, padding=1, norm=norm, act=act)
            )
            self.bottom_up_blocks.append(
                CSPLayer(
                    in_channels[idx] * 2,
                    in_channels[idx + 1],
                    expand_ratio=expand_ratio,
                    num_blocks=num_csp_blocks,
                    add_identity=False,
                    norm=norm,
                    act=act,
                )
            )
        self.out_convs = nn.ModuleList(
            [ConvModule(c, out_channels, 3, padding=1, norm=norm, act=act) for c in in_channels]
        )
        self._out_features = [f"p{int(round(math.log2(s)))}" for s in strides]
        self._out_feature_channels = {f: out_channels for f in self._out_features}
        self._out_feature_strides = dict(zip(self._out_features, strides))
        self._size_divisibility = strides[-1]

    @property
    def size_divisibility(self) -> int:
        return self._size_divisibility

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        """Args: x (N, 3, H, W) normalised image. Returns: {"pK": (N, out_channels, H/2^K, W/2^K)}."""
        bottom_up_features = self.bottom_up(x)
        inputs: Tuple[Tensor, ...] = tuple(bottom_up_features[f] for f in self.in_features)
        n = len(inputs)
        # top-down path
        inner_outs = [inputs[-1]]
        for idx in range(n - 1, 0, -1):
            feat_high = self.reduce_layers[n - 1 - idx](inner_outs[0])
            inner_outs[0] = feat_high
            upsampled = self.upsample(feat_high)
            inner_outs.insert(0, self.top_down_blocks[n - 1 - idx](torch.cat([upsampled, inputs[idx - 1]], 1)))
        # bottom-up path
        outs = [inner_outs[0]]
        for idx in range(n - 1):
            down = self.downsamples[idx](outs[-1])
            outs.append(self.bottom_up_blocks[idx](torch.cat([down, inner_outs[idx + 1]], 1)))
        return {name: conv(o) for name, conv, o in zip(self._out_features, self.out_convs, outs)}

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            n: ShapeSpec(channels=self._out_feature_channels[n], stride=self._out_feature_strides[n])
            for n in self._out_features
        }
