"""Feature Pyramid Network (Lin et al.) with detectron2's module names."""

import math
from typing import Any, Dict, List, Optional

import torch.nn.functional as F
from fvcore.nn import weight_init
from torch import Tensor, nn

from d2lite.layers import Conv2d, ShapeSpec, get_norm

from .backbone import Backbone
from .build import BACKBONE_REGISTRY
from .resnet import build_resnet_backbone

__all__ = [
    "FPN",
    "LastLevelMaxPool",
    "LastLevelP6P7",
    "build_resnet_fpn_backbone",
    "build_retinanet_resnet_fpn_backbone",
]


class LastLevelMaxPool(nn.Module):
    """Extra level P6 = subsampled P5 (1x1 max pool, stride 2), as in Mask R-CNN's FPN."""

    def __init__(self):
        super().__init__()
        self.num_levels = 1
        self.in_feature = "p5"

    def forward(self, x: Tensor) -> List[Tensor]:
        return [F.max_pool2d(x, kernel_size=1, stride=2, padding=0)]


class LastLevelP6P7(nn.Module):
    """
    RetinaNet's extra levels: P6 = conv3x3/s2(C5 or P5), P7 = conv3x3/s2(relu(P6)).
    Parameters are named ``p6.*`` and ``p7.*``.
    """

    def __init__(self, in_channels: int, out_channels: int, in_feature: str = "res5"):
        """
        Args:
            in_channels: channels of the input feature (2048 for C5 of R-50, or the FPN
                out_channels when in_feature is "p5").
            out_channels: channels of P6 and P7.
            in_feature: the bottom-up feature ("res5") or FPN output ("p5") fed to P6.
        """
        super().__init__()
        self.num_levels = 2
        self.in_feature = in_feature
        self.p6 = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, 2, 1)
        for module in [self.p6, self.p7]:
            weight_init.c2_xavier_fill(module)

    def forward(self, c5: Tensor) -> List[Tensor]:
        p6 = self.p6(c5)
        p7 = self.p7(F.relu(p6))
        return [p6, p7]


def _assert_strides_are_log2_contiguous(strides: List[int]) -> None:
    for i, stride in enumerate(strides[1:], 1):
        if stride != 2 * strides[i - 1]:
            raise ValueError(f"FPN: strides {strides} of in_features are not log2 contiguous")


class FPN(Backbone):
    """
    Feature Pyramid Network on top of a bottom-up backbone. Outputs "p{s}" features
    (s = log2(stride)) with ``out_channels`` channels, ordered from high to low resolution,
    plus the ``top_block`` levels. Parameters are ``fpn_lateral{s}.*``, ``fpn_output{s}.*``,
    ``bottom_up.*`` and ``top_block.*``.
    """

    def __init__(
        self,
        bottom_up: Backbone,
        in_features: List[str],
        out_channels: int,
        norm: str = "",
        top_block: Optional[nn.Module] = None,
        fuse_type: str = "sum",
        square_pad: int = 0,
    ):
        """
        Args:
            bottom_up: backbone whose ``output_shape()`` contains ``in_features``.
            in_features: bottom-up features used by FPN, from high to low resolution, with
                strides doubling at each step, e.g. ["res3", "res4", "res5"].
            out_channels: channels of every FPN output.
            norm: normalization of the FPN convs ("" for none; then the convs have bias).
            top_block: optional module adding extra coarser levels. It has ``num_levels``
                and ``in_feature`` (a bottom-up feature name or an FPN output name, e.g.
                "p5") and returns a list of ``num_levels`` tensors.
            fuse_type: "sum" or "avg", how lateral and top-down features are fused.
            square_pad: if > 0, the batcher pads images to this square size.
        """
        super().__init__()
        if not isinstance(bottom_up, Backbone):
            raise TypeError(f"FPN: bottom_up must be a Backbone, got {type(bottom_up)}")
        if not in_features:
            raise ValueError("FPN: in_features must not be empty")
        if fuse_type not in {"avg", "sum"}:
            raise ValueError(f"FPN: fuse_type must be 'sum' or 'avg', got {fuse_type!r}")

        input_shapes = bottom_up.output_shape()
        missing = [f for f in in_features if f not in input_shapes]
        if missing:
            raise ValueError(
                f"FPN: in_features {missing} are not produced by the bottom-up backbone "
                f"(it outputs {list(input_shapes)}); add them to its out_features"
            )
        strides = [input_shapes[f].stride for f in in_features]
        in_channels_per_feature = [input_shapes[f].channels for f in in_features]
        _assert_strides_are_log2_contiguous(strides)

        lateral_convs = []
        output_convs = []
        use_bias = norm == ""
        for idx, in_channels in enumerate(in_channels_per_feature):
            lateral_conv = Conv2d(
                in_channels, out_channels, kernel_size=1, bias=use_bias, norm=get_norm(norm, out_channels)
            )
            output_conv = Conv2d(
                out_channels,
                out_channels,
                kernel_size=3,
                stride=1,
                padding=1,
                bias=use_bias,
                norm=get_norm(norm, out_channels),
            )
            weight_init.c2_xavier_fill(lateral_conv)
            weight_init.c2_xavier_fill(output_conv)
            stage = int(math.log2(strides[idx]))
            self.add_module(f"fpn_lateral{stage}", lateral_conv)
            self.add_module(f"fpn_output{stage}", output_conv)
            lateral_convs.append(lateral_conv)
            output_convs.append(output_conv)
        # Plain lists (registered above under their names), in top-down order: low -> high resolution.
        self.lateral_convs = lateral_convs[::-1]
        self.output_convs = output_convs[::-1]
        self.top_block = top_block
        self.in_features = tuple(in_features)
        self.bottom_up = bottom_up

        self._out_feature_strides = {f"p{int(math.log2(s))}": s for s in strides}
        if self.top_block is not None:
            for s in range(stage, stage + self.top_block.num_levels):
                self._out_feature_strides[f"p{s + 1}"] = 2 ** (s + 1)
        self._out_features = list(self._out_feature_strides.keys())
        if self.top_block is not None:
            top_in = self.top_block.in_feature
            fpn_outputs = self._out_features[: len(in_features)]
            if top_in not in input_shapes and top_in not in fpn_outputs:
                raise ValueError(
                    f"FPN: top_block.in_feature {top_in!r} is neither a bottom-up output "
                    f"({list(input_shapes)}) nor an FPN output ({fpn_outputs})"
                )
        self._out_feature_channels = {k: out_channels for k in self._out_features}
        self._size_divisibility = strides[-1]
        self._square_pad = square_pad
        self._fuse_type = fuse_type

    @property
    def size_divisibility(self) -> int:
        return self._size_divisibility

    @property
    def padding_constraints(self) -> Dict[str, int]:
        return {"square_size": self._square_pad}

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        """
        Args:
            x: (N, C, H, W) images, H and W divisible by :attr:`size_divisibility`.

        Returns:
            dict[str, Tensor]: "p{s}" -> (N, out_channels, H / 2**s, W / 2**s).
        """
        bottom_up_features = self.bottom_up(x)
        results = []
        prev_features = self.lateral_convs[0](bottom_up_features[self.in_features[-1]])
        results.append(self.output_convs[0](prev_features))

        # Top-down path, from the coarsest to the finest level.
        for idx, (lateral_conv, output_conv) in enumerate(zip(self.lateral_convs, self.output_convs)):
            if idx > 0:
                features = bottom_up_features[self.in_features[-idx - 1]]
                top_down_features = F.interpolate(prev_features, scale_factor=2.0, mode="nearest")
                lateral_features = lateral_conv(features)
                prev_features = lateral_features + top_down_features
                if self._fuse_type == "avg":
                    prev_features /= 2
                results.insert(0, output_conv(prev_features))

        if self.top_block is not None:
            if self.top_block.in_feature in bottom_up_features:
                top_block_in_feature = bottom_up_features[self.top_block.in_feature]
            else:
                top_block_in_feature = results[self._out_features.index(self.top_block.in_feature)]
            results.extend(self.top_block(top_block_in_feature))
        assert len(self._out_features) == len(results)
        return dict(zip(self._out_features, results))


@BACKBONE_REGISTRY.register()
def build_resnet_fpn_backbone(cfg: Any, input_shape: ShapeSpec) -> FPN:
    """FPN (``cfg.MODEL.FPN``) on :func:`build_resnet_backbone`, with a P6 made by
    :class:`LastLevelMaxPool` (the Faster/Mask R-CNN layout)."""
    bottom_up = build_resnet_backbone(cfg, input_shape)
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


@BACKBONE_REGISTRY.register()
def build_retinanet_resnet_fpn_backbone(cfg: Any, input_shape: ShapeSpec) -> FPN:
    """FPN (``cfg.MODEL.FPN``) on :func:`build_resnet_backbone`, with P6/P7 made from C5 by
    :class:`LastLevelP6P7` (RetinaNet's layout, P3-P7)."""
    bottom_up = build_resnet_backbone(cfg, input_shape)
    shapes = bottom_up.output_shape()
    if "res5" not in shapes:
        raise ValueError(
            f"build_retinanet_resnet_fpn_backbone feeds res5 to P6/P7, but MODEL.RESNETS.OUT_FEATURES="
            f"{list(cfg.MODEL.RESNETS.OUT_FEATURES)} has no 'res5'"
        )
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelP6P7(shapes["res5"].channels, out_channels),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
