"""Point priors and the distance box coder of RTMDet (mmdetection's MlvlPointGenerator
and DistancePointBBoxCoder)."""

import collections
import math
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

__all__ = ["MlvlPointGenerator", "DistancePointBBoxCoder", "distance2bbox", "bbox2distance"]


class MlvlPointGenerator:
    """Grid points of several feature levels.

    The point of cell (row i, column j) on a level of stride s is
    ``((j + offset) * s, (i + offset) * s)``; RTMDet uses ``offset=0``, i.e. points
    at the top-left corner of each cell (x = 0, 8, 16, ... on stride 8).
    Points are ordered row-major (x fastest), matching a ``(N, C, H, W) -> (N, H*W, C)``
    flattening of the feature map.

    Args:
        strides: stride of each level, an int or (stride_w, stride_h). RTMDet: [8, 16, 32].
        offset: offset of points in units of the stride. Defaults to 0.5 (RTMDet sets 0).
    """

    def __init__(self, strides: Sequence[Union[int, Tuple[int, int]]], offset: float = 0.5) -> None:
        self.strides = [s if isinstance(s, (tuple, list)) else (s, s) for s in strides]
        self.strides = [tuple(int(v) for v in s) for s in self.strides]
        self.offset = offset

    @property
    def num_levels(self) -> int:
        return len(self.strides)

    @property
    def num_base_priors(self) -> List[int]:
        """One point per cell on every level."""
        return [1 for _ in self.strides]

    def single_level_grid_priors(
        self,
        featmap_size: Tuple[int, int],
        level_idx: int,
        dtype: torch.dtype = torch.float32,
        device: Union[str, torch.device] = "cpu",
        with_stride: bool = False,
    ) -> Tensor:
        """Points of one level: (H*W, 2) as (x, y), or (H*W, 4) as (x, y, stride_w, stride_h)."""
        feat_h, feat_w = int(featmap_size[0]), int(featmap_size[1])
        stride_w, stride_h = self.strides[level_idx]
        shift_x = ((torch.arange(0, feat_w, device=device) + self.offset) * stride_w).to(dtype)
        shift_y = ((torch.arange(0, feat_h, device=device) + self.offset) * stride_h).to(dtype)
        yy, xx = torch.meshgrid(shift_y, shift_x, indexing="ij")
        xx, yy = xx.reshape(-1), yy.reshape(-1)
        if not with_stride:
            return torch.stack([xx, yy], dim=-1)
        sw = xx.new_full((xx.shape[0],), stride_w)
        sh = xx.new_full((yy.shape[0],), stride_h)
        return torch.stack([xx, yy, sw, sh], dim=-1)

    _CACHE_SIZE = 16

    def grid_priors(
        self,
        featmap_sizes: Sequence[Tuple[int, int]],
        dtype: torch.dtype = torch.float32,
        device: Union[str, torch.device] = "cpu",
        with_stride: bool = False,
    ) -> List[Tensor]:
        """Points of every level; ``featmap_sizes`` is one (H, W) per level.

        Cached per (sizes, dtype, device, with_stride) (LRU of 16): the returned tensors
        are shared between calls, do not modify them in place."""
        if len(featmap_sizes) != self.num_levels:
            raise ValueError(
                f"MlvlPointGenerator has {self.num_levels} strides {self.strides} but got "
                f"{len(featmap_sizes)} feature map sizes."
            )
        key = (tuple((int(h), int(w)) for h, w in featmap_sizes), dtype, str(torch.device(device)), with_stride)
        cache = self.__dict__.setdefault("_cache", collections.OrderedDict())
        priors = cache.get(key)
        if priors is None:
            priors = [
                self.single_level_grid_priors(featmap_sizes[i], i, dtype=dtype, device=device, with_stride=with_stride)
                for i in range(self.num_levels)
            ]
            cache[key] = priors
            while len(cache) > self._CACHE_SIZE:
                cache.popitem(last=False)
        else:
            cache.move_to_end(key)
        return priors

    def valid_flags(
        self,
        featmap_sizes: Sequence[Tuple[int, int]],
        pad_shape: Tuple[int, int],
        device: Union[str, torch.device] = "cpu",
    ) -> List[Tensor]:
        """Per level a bool (H*W,) mask of points inside an image of size ``pad_shape`` (h, w):
        the first ``ceil(h / stride)`` rows and ``ceil(w / stride)`` columns are valid
        (the rest lie on batch padding)."""
        flags = []
        h, w = int(pad_shape[0]), int(pad_shape[1])
        for i, (stride_w, stride_h) in enumerate(self.strides):
            feat_h, feat_w = int(featmap_sizes[i][0]), int(featmap_sizes[i][1])
            valid_h = min(int(math.ceil(h / stride_h)), feat_h)
            valid_w = min(int(math.ceil(w / stride_w)), feat_w)
            valid_x = torch.zeros(feat_w, dtype=torch.bool, device=device)
            valid_y = torch.zeros(feat_h, dtype=torch.bool, device=device)
            valid_x[:valid_w] = True
            valid_y[:valid_h] = True
            flags.append((valid_y[:, None] & valid_x[None, :]).reshape(-1))
        return flags


def distance2bbox(points: Tensor, distance: Tensor, max_shape: Optional[Tuple[int, int]] = None) -> Tensor:
    """Boxes from distances to the four sides.

    Args:
        points: (..., 2+) point x, y (extra columns such as strides are ignored).
        distance: (..., 4) distances (left, top, right, bottom) >= 0, in pixels.
        max_shape: (h, w): clamp x to [0, w] and y to [0, h] when given.

    Returns:
        (..., 4) boxes XYXY.
    """
    x1 = points[..., 0] - distance[..., 0]
    y1 = points[..., 1] - distance[..., 1]
    x2 = points[..., 0] + distance[..., 2]
    y2 = points[..., 1] + distance[..., 3]
    boxes = torch.stack([x1, y1, x2, y2], -1)
    if max_shape is not None:
        h, w = max_shape[0], max_shape[1]
        upper = boxes.new_tensor([w, h, w, h])
        boxes = torch.max(torch.min(boxes, upper), boxes.new_zeros(()))
    return boxes


def bbox2distance(points: Tensor, bbox: Tensor, max_dis: Optional[float] = None, eps: float = 0.1) -> Tensor:
    """Distances (left, top, right, bottom) from ``points`` (..., 2+) to boxes (..., 4) XYXY.

    With ``max_dis`` the distances are clamped to [0, max_dis - eps]."""
    left = points[..., 0] - bbox[..., 0]
    top = points[..., 1] - bbox[..., 1]
    right = bbox[..., 2] - points[..., 0]
    bottom = bbox[..., 3] - points[..., 1]
    d = torch.stack([left, top, right, bottom], -1)
    if max_dis is not None:
        d = d.clamp(min=0, max=max_dis - eps)
    return d


class DistancePointBBoxCoder:
    """Encodes boxes as distances from a point to the four box sides (FCOS/RTMDet).

    Args:
        clip_border: clamp decoded boxes to ``max_shape`` when it is given. Defaults to True.
    """

    def __init__(self, clip_border: bool = True) -> None:
        self.clip_border = clip_border

    def encode(self, points: Tensor, gt_bboxes: Tensor, max_dis: Optional[float] = None, eps: float = 0.1) -> Tensor:
        """points (N, 2+), gt_bboxes (N, 4) XYXY -> (N, 4) (left, top, right, bottom)."""
        if points.size(0) != gt_bboxes.size(0) or gt_bboxes.size(-1) != 4:
            raise ValueError(
                f"DistancePointBBoxCoder.encode: need points (N, 2) and boxes (N, 4), got "
                f"{tuple(points.shape)} and {tuple(gt_bboxes.shape)}."
            )
        return bbox2distance(points, gt_bboxes, max_dis, eps)

    def decode(self, points: Tensor, pred_bboxes: Tensor, max_shape: Optional[Tuple[int, int]] = None) -> Tensor:
        """points (..., 2+), distances (..., 4) -> boxes (..., 4) XYXY, clamped to max_shape (h, w)."""
        if pred_bboxes.size(-1) != 4:
            raise ValueError(f"DistancePointBBoxCoder.decode: distances must end in 4, got {tuple(pred_bboxes.shape)}.")
        if not self.clip_border:
            max_shape = None
        return distance2bbox(points, pred_bboxes, max_shape)
