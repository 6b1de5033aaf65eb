"""ResNet (18/34/50/101/152) with detectron2's module and parameter names."""

from typing import Any, Dict, List, Optional, Type

import numpy as np
import torch
import torch.nn.functional as F
from fvcore.nn import weight_init
from torch import Tensor, nn

from d2lite.layers import CNNBlockBase, Conv2d, ShapeSpec, get_norm

from .backbone import Backbone
from .build import BACKBONE_REGISTRY

__all__ = [
    "CNNBlockBase",
    "ResNetBlockBase",
    "BasicStem",
    "BasicBlock",
    "BottleneckBlock",
    "ResNet",
    "make_stage",
    "build_resnet_backbone",
]

ResNetBlockBase = CNNBlockBase  # detectron2's older name


class BasicBlock(CNNBlockBase):
    """Two 3x3 convs with a residual connection (ResNet-18/34)."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 1, norm="BN"):
        """
        Args:
            in_channels, out_channels: channels of the block input / output.
            stride: stride of the first 3x3 conv (and of the projection shortcut).
            norm: normalization of every conv, see :func:`d2lite.layers.get_norm`.
        """
        super().__init__(in_channels, out_channels, stride)
        if in_channels != out_channels:
            self.shortcut = Conv2d(
                in_channels,
                out_channels,
                kernel_size=1,
                stride=stride,
                bias=False,
                norm=get_norm(norm, out_channels),
            )
        else:
            self.shortcut = None
        self.conv1 = Conv2d(
            in_channels,
            out_channels,
            kernel_size=3,
            stride=stride,
            padding=1,
            bias=False,
            norm=get_norm(norm, out_channels),
        )
        self.conv2 = Conv2d(
            out_channels,
            out_channels,
            kernel_size=3,
            stride=1,
            padding=1,
            bias=False,
            norm=get_norm(norm, out_channels),
        )
        for layer in [self.conv1, self.conv2, self.shortcut]:
            if layer is not None:  # shortcut can be None
                weight_init.c2_msra_fill(layer)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu_(self.conv1(x))
        out = self.conv2(out)
        shortcut = self.shortcut(x) if self.shortcut is not None else x
        out += shortcut
        return F.relu_(out)


class BottleneckBlock(CNNBlockBase):
    """1x1 reduce, 3x3, 1x1 expand convs with a residual connection (ResNet-50/101/152)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        bottleneck_channels: int,
        stride: int = 1,
        num_groups: int = 1,
        norm="BN",
        stride_in_1x1: bool = False,
        dilation: int = 1,
    ):
        """
        Args:
            bottleneck_channels: channels of the 3x3 conv.
            stride: stride of the block.
            num_groups: groups of the 3x3 conv (ResNeXt when > 1).
            norm: normalization of every conv, see :func:`d2lite.layers.get_norm`.
            stride_in_1x1: put the stride in the first 1x1 conv (MSRA / Caffe2 ResNets,
                used by detectron2's ImageNet-pretrained R-50) instead of the 3x3 conv.
            dilation: dilation of the 3x3 conv.
        """
        super().__init__(in_channels, out_channels, stride)
        if in_channels != out_channels:
            self.shortcut = Conv2d(
                in_channels,
                out_channels,
                kernel_size=1,
                stride=stride,
                bias=False,
                norm=get_norm(norm, out_channels),
            )
        else:
            self.shortcut = None

        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = Conv2d(
            in_channels,
            bottleneck_channels,
            kernel_size=1,
            stride=stride_1x1,
            bias=False,
            norm=get_norm(norm, bottleneck_channels),
        )
        self.conv2 = Conv2d(
            bottleneck_channels,
            bottleneck_channels,
            kernel_size=3,
            stride=stride_3x3,
            padding=1 * dilation,
            bias=False,
            groups=num_groups,
            dilation=dilation,
            norm=get_norm(norm, bottleneck_channels),
        )
        self.conv3 = Conv2d(
            bottleneck_channels,
            out_channels,
            kernel_size=1,
            bias=False,
            norm=get_norm(norm, out_channels),
        )
        for layer in [self.conv1, self.conv2, self.conv3, self.shortcut]:
            if layer is not None:  # shortcut can be None
                weight_init.c2_msra_fill(layer)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu_(self.conv1(x))
        out = F.relu_(self.conv2(out))
        out = self.conv3(out)
        shortcut = self.shortcut(x) if self.shortcut is not None else x
        out += shortcut
        return F.relu_(out)


class BasicStem(CNNBlockBase):
    """The standard ResNet stem: 7x7 conv (stride 2) + norm + relu + 3x3 max pool (stride 2)."""

    def __init__(self, in_channels: int = 3, out_channels: int = 64, norm="BN"):
        super().__init__(in_channels, out_channels, 4)
        self.conv1 = Conv2d(
            in_channels,
            out_channels,
            kernel_size=7,
            stride=2,
            padding=3,
            bias=False,
            norm=get_norm(norm, out_channels),
        )
        weight_init.c2_msra_fill(self.conv1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu_(self.conv1(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


_STAGE_INDEX = {"res2": 1, "res3": 2, "res4": 3, "res5": 4}


class ResNet(Backbone):
    """
    ResNet as a :class:`Backbone`: a stem followed by stages named "res2" ... "res5"
    (strides 4, 8, 16, 32 with the default stem), optionally a linear classifier.
    """

    def __init__(
        self,
        stem: nn.Module,
        stages: List[List[CNNBlockBase]],
        num_classes: Optional[int] = None,
        out_features: Optional[List[str]] = None,
        freeze_at: int = 0,
    ):
        """
        Args:
            stem: a stem module with ``stride`` and ``out_channels`` attributes.
            stages: one list of blocks per stage; stage i is named "res{i+2}". Stages after
                the last one needed by ``out_features`` are dropped.
            num_classes: if given, add global average pooling and a linear classifier whose
                output is the "linear" feature.
            out_features: names of the returned features among "stem", "res2".."res5",
                "linear". Defaults to the last layer.
            freeze_at: number of leading modules to freeze: 1 = stem, 2 = stem + res2, ...
                Frozen modules get ``requires_grad=False`` and FrozenBatchNorm2d.
        """
        super().__init__()
        self.stem = stem
        self.num_classes = num_classes

        current_stride = self.stem.stride
        self._out_feature_strides = {"stem": current_stride}
        self._out_feature_channels = {"stem": self.stem.out_channels}

        self.stage_names, self.stages = [], []
        if out_features is not None:
            unknown = [f for f in out_features if f not in _STAGE_INDEX and f not in ("stem", "linear")]
            if unknown:
                raise ValueError(f"ResNet: unknown out_features {unknown}; choose from stem, res2..res5, linear")
            # Skip the stages that no requested feature needs.
            num_stages = max(_STAGE_INDEX.get(f, 0) for f in out_features)
            if "linear" in out_features:
                num_stages = len(stages)
            stages = stages[:num_stages]
        name = "stem"
        curr_channels = self.stem.out_channels
        for i, blocks in enumerate(stages):
            if len(blocks) == 0:
                raise ValueError(f"ResNet: stage res{i + 2} has no blocks")
            for block in blocks:
                if not isinstance(block, CNNBlockBase):
                    raise TypeError(f"ResNet: blocks must be CNNBlockBase, got {type(block)} in res{i + 2}")
            name = "res" + str(i + 2)
            stage = nn.Sequential(*blocks)
            self.add_module(name, stage)
            self.stage_names.append(name)
            self.stages.append(stage)
            current_stride = int(current_stride * np.prod([k.stride for k in blocks]))
            self._out_feature_strides[name] = current_stride
            self._out_feature_channels[name] = curr_channels = blocks[-1].out_channels
        self.stage_names = tuple(self.stage_names)  # keep a read-only copy

        if num_classes is not None:
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.linear = nn.Linear(curr_channels, num_classes)
            # "The 1000-way fully-connected layer is initialized by drawing weights from a
            # zero-mean Gaussian with standard deviation of 0.01." (Sec 5.1, Goyal et al.)
            nn.init.normal_(self.linear.weight, std=0.01)
            name = "linear"

        if out_features is None:
            out_features = [name]
        self._out_features = list(out_features)
        children = [x[0] for x in self.named_children()]
        for out_feature in self._out_features:
            if out_feature not in children:
                raise ValueError(f"ResNet: out_feature '{out_feature}' is not available; have {', '.join(children)}")
        self.freeze(freeze_at)

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        """
        Args:
            x: (N, C, H, W) images.

        Returns:
            dict[str, Tensor]: the ``out_features`` maps.
        """
        if x.dim() != 4:
            raise ValueError(f"ResNet takes an input of shape (N, C, H, W), got {tuple(x.shape)}")
        outputs = {}
        x = self.stem(x)
        if "stem" in self._out_features:
            outputs["stem"] = x
        for name, stage in zip(self.stage_names, self.stages):
            x = stage(x)
            if name in self._out_features:
                outputs[name] = x
        if self.num_classes is not None:
            x = self.avgpool(x)
            x = torch.flatten(x, 1)
            x = self.linear(x)
            if "linear" in self._out_features:
                outputs["linear"] = x
        return outputs

    def freeze(self, freeze_at: int = 0) -> "ResNet":
        """
        Freeze the first ``freeze_at`` modules: 1 = the stem, 2 = stem and res2, etc.
        Frozen modules stop receiving gradients and their BatchNorms become
        FrozenBatchNorm2d.

        Returns:
            self
        """
        if freeze_at >= 1:
            self.stem.freeze()
        for idx, stage in enumerate(self.stages, start=2):
            if freeze_at >= idx:
                for block in stage.children():
                    block.freeze()
        return self

    @staticmethod
    def make_stage(
        block_class: Type[CNNBlockBase], num_blocks: int, *, in_channels: int, out_channels: int, **kwargs
    ) -> List[CNNBlockBase]:
        """
        Create the blocks of one stage.

        Args:
            block_class: a CNNBlockBase subclass, called as
                ``block_class(in_channels=..., out_channels=..., **kwargs)``.
            num_blocks: number of blocks.
            in_channels: input channels of the first block (the others get out_channels).
            out_channels: output channels of every block.
            kwargs: passed to every block; a key ending in "_per_block" must be a list of
                ``num_blocks`` values, block i gets value i under the key without the suffix,
                e.g. ``stride_per_block=[2, 1, 1]``.

        Returns:
            list[CNNBlockBase]
        """
        blocks = []
        for i in range(num_blocks):
            curr_kwargs = {}
            for k, v in kwargs.items():
                if k.endswith("_per_block"):
                    if len(v) != num_blocks:
                        raise ValueError(f"ResNet.make_stage: {k} has {len(v)} values for {num_blocks} blocks")
                    newk = k[: -len("_per_block")]
                    if newk in kwargs:
                        raise ValueError(f"ResNet.make_stage: cannot give both {k} and {newk}")
                    curr_kwargs[newk] = v[i]
                else:
                    curr_kwargs[k] = v
            blocks.append(block_class(in_channels=in_channels, out_channels=out_channels, **curr_kwargs))
            in_channels = out_channels
        return blocks

    @staticmethod
    def make_default_stages(
        depth: int, block_class: Optional[Type[CNNBlockBase]] = None, **kwargs
    ) -> List[List[CNNBlockBase]]:
        """
        The 4 stages (res2..res5) of a standard ResNet.

        Args:
            depth: 18, 34, 50, 101 or 152.
            block_class: defaults to BasicBlock for depth < 50, else BottleneckBlock.
            kwargs: passed to every block (e.g. ``norm="FrozenBN", stride_in_1x1=True``);
                ``bottleneck_channels`` is set to out_channels // 4 for depth >= 50.

        Returns:
            list[list[CNNBlockBase]], one list per stage.
        """
        num_blocks_per_stage = {
            18: [2, 2, 2, 2],
            34: [3, 4, 6, 3],
            50: [3, 4, 6, 3],
            101: [3, 4, 23, 3],
            152: [3, 8, 36, 3],
        }
        if depth not in num_blocks_per_stage:
            raise ValueError(f"ResNet depth must be one of {sorted(num_blocks_per_stage)}, got {depth}")
        if block_class is None:
            block_class = BasicBlock if depth < 50 else BottleneckBlock
        if depth < 50:
            in_channels = [64, 64, 128, 256]
            out_channels = [64, 128, 256, 512]
        else:
            in_channels = [64, 256, 512, 1024]
            out_channels = [256, 512, 1024, 2048]
        ret = []
        for n, s, i, o in zip(num_blocks_per_stage[depth], [1, 2, 2, 2], in_channels, out_channels):
            if depth >= 50:
                kwargs["bottleneck_channels"] = o // 4
            ret.append(
                ResNet.make_stage(
                    block_class=block_class,
                    num_blocks=n,
                    stride_per_block=[s] + [1] * (n - 1),
                    in_channels=i,
                    out_channels=o,
                    **kwargs,
                )
            )
        return ret


def make_stage(*args, **kwargs) -> List[CNNBlockBase]:
    """Alias of :meth:`ResNet.make_stage`, kept for detectron2 compatibility."""
    return ResNet.make_stage(*args, **kwargs)


@BACKBONE_REGISTRY.register()
def build_resnet_backbone(cfg: Any, input_shape: ShapeSpec) -> ResNet:
    """A :class:`ResNet` from ``cfg.MODEL.RESNETS`` and ``cfg.MODEL.BACKBONE.FREEZE_AT``
    (detectron2's layout: stem, then res2..res5 whose widths double at each stage).

    Args:
        cfg: a config from :func:`d2lite.config.get_cfg`.
        input_shape: shape of the input images (its channels feed the stem).

    Raises:
        ValueError: naming the key, for settings d2lite cannot build (deformable convs)
            or that the depth does not allow (e.g. R18/R34 with RES2_OUT_CHANNELS != 64).
    """
    r = cfg.MODEL.RESNETS
    norm = r.NORM
    depth = r.DEPTH
    num_blocks = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}
    if depth not in num_blocks:
        raise ValueError(f"MODEL.RESNETS.DEPTH must be one of {sorted(num_blocks)}, got {depth}")
    if r.RES5_DILATION not in (1, 2):
        raise ValueError(f"MODEL.RESNETS.RES5_DILATION must be 1 or 2, got {r.RES5_DILATION}")
    if any(r.DEFORM_ON_PER_STAGE):
        raise ValueError(
            f"MODEL.RESNETS.DEFORM_ON_PER_STAGE={list(r.DEFORM_ON_PER_STAGE)}: d2lite has no deformable "
            "convolutions; set it to [False, False, False, False]"
        )
    if depth in (18, 34):
        for key, value, wanted in (
            ("RES2_OUT_CHANNELS", r.RES2_OUT_CHANNELS, 64),
            ("RES5_DILATION", r.RES5_DILATION, 1),
        ):
            if value != wanted:
                raise ValueError(f"MODEL.RESNETS.{key} must be {wanted} for R{depth}, got {value}")
        if r.NUM_GROUPS != 1:
            raise ValueError(f"MODEL.RESNETS.NUM_GROUPS must be 1 for R{depth}, got {r.NUM_GROUPS}")

    stem = BasicStem(in_channels=input_shape.channels, out_channels=r.STEM_OUT_CHANNELS, norm=norm)
    in_channels = r.STEM_OUT_CHANNELS
    out_channels = r.RES2_OUT_CHANNELS
    bottleneck_channels = r.NUM_GROUPS * r.WIDTH_PER_GROUP
    stages = []
    for idx, stage_idx in enumerate(range(2, 6)):
        # res5_dilation is used this way as a convention in R-FCN and Deformable Conv.
        dilation = r.RES5_DILATION if stage_idx == 5 else 1
        first_stride = 1 if idx == 0 or (stage_idx == 5 and dilation == 2) else 2
        n = num_blocks[depth][idx]
        stage_kwargs: Dict[str, Any] = {
            "num_blocks": n,
            "stride_per_block": [first_stride] + [1] * (n - 1),
            "in_channels": in_channels,
            "out_channels": out_channels,
            "norm": norm,
        }
        if depth in (18, 34):
            stage_kwargs["block_class"] = BasicBlock
        else:
            stage_kwargs.update(
                block_class=BottleneckBlock,
                bottleneck_channels=bottleneck_channels,
                stride_in_1x1=r.STRIDE_IN_1X1,
                dilation=dilation,
                num_groups=r.NUM_GROUPS,
            )
        stages.append(ResNet.make_stage(**stage_kwargs))
        in_channels = out_channels
        out_channels *= 2
        bottleneck_channels *= 2
    return ResNet(stem, stages, out_features=r.OUT_FEATURES, freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT)
