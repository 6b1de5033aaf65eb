"""RTMDetSepBNHead: convs shared across levels, BN and prediction layers per level."""

import math
from typing import List, Sequence, Tuple

import torch
from torch import Tensor, nn

from d2lite.layers import ShapeSpec

from .layers import ConvModule, NormType

__all__ = ["RTMDetSepBNHead", "sigmoid_geometric_mean", "inverse_sigmoid"]


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """``log(x / (1 - x))`` with x clamped to [0, 1] and both terms to >= eps."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def sigmoid_geometric_mean(x: Tensor, y: Tensor) -> Tensor:
    """``sqrt(sigmoid(x) * sigmoid(y))`` (objectness fusion of YOLOX/RTMDet)."""
    return (x.sigmoid() * y.sigmoid()).sqrt()


class RTMDetSepBNHead(nn.Module):
    """Detection head of RTMDet with separated BN layers and shared conv layers.

    For every level: ``stacked_convs`` ConvModules (3x3, norm, act) in a
    classification and a regression tower, then a ``pred_kernel_size`` conv
    predicting ``num_classes`` logits (``rtm_cls``) and 4 distances (``rtm_reg``).
    With ``share_conv`` the ``conv`` of tower layer i is one module on all levels
    (``cls_convs[n][i].conv is cls_convs[0][i].conv``) while each level keeps its
    own BN and prediction layers. Distances are ``rtm_reg(x) * stride``
    (``exp(rtm_reg(x)) * stride`` with ``exp_on_reg``).

    Args:
        input_shape: one ShapeSpec (channels, stride) per input level, finest first.
        num_classes: number of foreground classes.
        feat_channels: tower width. Defaults to 256 (tiny 96, s 128).
        stacked_convs: convs per tower. Defaults to 2.
        share_conv: share tower convs across levels. Defaults to True.
        pred_kernel_size: kernel of the prediction convs. Defaults to 1.
        exp_on_reg: exponentiate distances (l/m/x True, tiny/s False). Defaults to False.
        with_objectness: add an objectness branch fused into the logits as
            ``inverse_sigmoid(sqrt(sigmoid(cls) * sigmoid(obj)))``. Defaults to False.
        prior_prob: initial foreground probability of the classifier bias
            (-log((1 - p) / p) = -4.595 for 0.01). Defaults to 0.01.
        norm, act: norm spec and activation name. Defaults to "BN", "SiLU".
    """

    def __init__(
        self,
        input_shape: Sequence[ShapeSpec],
        num_classes: int,
        feat_channels: int = 256,
        stacked_convs: int = 2,
        share_conv: bool = True,
        pred_kernel_size: int = 1,
        exp_on_reg: bool = False,
        with_objectness: bool = False,
        prior_prob: float = 0.01,
        norm: NormType = "BN",
        act: str = "SiLU",
    ) -> None:
        super().__init__()
        in_channels = {s.channels for s in input_shape}
        if len(in_channels) != 1:
            raise ValueError(
                f"RTMDetSepBNHead needs the same channels on all levels, got {[s.channels for s in input_shape]}."
            )
        if any(s.stride is None for s in input_shape):
            raise ValueError("RTMDetSepBNHead: every ShapeSpec in input_shape needs a stride.")
        in_ch = in_channels.pop()
        self.num_classes = num_classes
        self.strides: List[int] = [int(s.stride) for s in input_shape]
        self.exp_on_reg = exp_on_reg
        self.with_objectness = with_objectness
        self.cls_convs = nn.ModuleList()
        self.reg_convs = nn.ModuleList()
        self.rtm_cls = nn.ModuleList()
        self.rtm_reg = nn.ModuleList()
        if with_objectness:
            self.rtm_obj = nn.ModuleList()
        pad = pred_kernel_size // 2
        for _ in self.strides:
            cls_convs, reg_convs = nn.ModuleList(), nn.ModuleList()
            for i in range(stacked_convs):
                chn = in_ch if i == 0 else feat_channels
                cls_convs.append(ConvModule(chn, feat_channels, 3, 1, 1, norm=norm, act=act))
                reg_convs.append(ConvModule(chn, feat_channels, 3, 1, 1, norm=norm, act=act))
            self.cls_convs.append(cls_convs)
            self.reg_convs.append(reg_convs)
            self.rtm_cls.append(nn.Conv2d(feat_channels, num_classes, pred_kernel_size, padding=pad))
            self.rtm_reg.append(nn.Conv2d(feat_channels, 4, pred_kernel_size, padding=pad))
            if with_objectness:
                self.rtm_obj.append(nn.Conv2d(feat_channels, 1, pred_kernel_size, padding=pad))
        if share_conv:
            for n in range(1, len(self.strides)):
                for i in range(stacked_convs):
                    self.cls_convs[n][i].conv = self.cls_convs[0][i].conv
                    self.reg_convs[n][i].conv = self.reg_convs[0][i].conv
        self._init_weights(prior_prob)

    def _init_weights(self, prior_prob: float) -> None:
        """All convs N(0, 0.01) with zero bias, norms weight 1 bias 0, classifier
        (and objectness) bias -log((1 - p) / p)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, mean=0.0, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.SyncBatchNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        bias_cls = float(-math.log((1 - prior_prob) / prior_prob))
        for conv in self.rtm_cls:
            nn.init.constant_(conv.bias, bias_cls)
        if self.with_objectness:
            for conv in self.rtm_obj:
                nn.init.constant_(conv.bias, bias_cls)

    def forward(self, features: Sequence[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        """Args:
            features: per level (N, C, H_l, W_l), finest first.

        Returns:
            cls_scores: per level (N, num_classes, H_l, W_l) logits.
            bbox_preds: per level (N, 4, H_l, W_l) distances (left, top, right, bottom) in pixels.
        """
        if len(features) != len(self.strides):
            raise ValueError(f"RTMDetSepBNHead built for {len(self.strides)} levels got {len(features)} features.")
        cls_scores, bbox_preds = [], []
        for idx, (x, stride) in enumerate(zip(features, self.strides)):
            cls_feat, reg_feat = x, x
            for layer in self.cls_convs[idx]:
                cls_feat = layer(cls_feat)
            cls_score = self.rtm_cls[idx](cls_feat)
            for layer in self.reg_convs[idx]:
                reg_feat = layer(reg_feat)
            reg = self.rtm_reg[idx](reg_feat)
            reg_dist = (reg.exp() if self.exp_on_reg else reg) * stride
            if self.with_objectness:
                objectness = self.rtm_obj[idx](reg_feat)
                cls_score = inverse_sigmoid(sigmoid_geometric_mean(cls_score, objectness))
            cls_scores.append(cls_score)
            bbox_preds.append(reg_dist)
        return cls_scores, bbox_preds
