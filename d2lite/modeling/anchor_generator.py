"""Anchor generation for dense detectors (detectron2's DefaultAnchorGenerator)."""

import collections
import collections.abc
import math
from typing import Any, Dict, List, Sequence, Tuple

import torch
from torch import Tensor, nn

from d2lite.config import configurable
from d2lite.layers import ShapeSpec
from d2lite.structures import Boxes
from d2lite.utils.registry import Registry

__all__ = ["ANCHOR_GENERATOR_REGISTRY", "DefaultAnchorGenerator", "build_anchor_generator", "generate_cell_anchors"]

ANCHOR_GENERATOR_REGISTRY = Registry("ANCHOR_GENERATOR")
ANCHOR_GENERATOR_REGISTRY.__doc__ = """
Anchor generators by the name used in ``cfg.MODEL.ANCHOR_GENERATOR.NAME``; each is
called as ``obj(cfg, input_shape)``.
"""


class BufferList(nn.Module):
    """Holds tensors as non-persistent buffers: they follow ``.to(device)`` but stay out of
    the state dict (so checkpoints do not contain anchors)."""

    def __init__(self, buffers: List[Tensor]):
        super().__init__()
        for i, buffer in enumerate(buffers):
            self.register_buffer(str(i), buffer, persistent=False)

    def __len__(self) -> int:
        return len(self._buffers)

    def __iter__(self):
        return iter(self._buffers.values())


def _broadcast_params(params, num_features: int, name: str) -> List[list]:
    """
    Turn ``params`` into one list per feature level: a flat list of numbers is shared by
    all levels, a list holding one list is repeated, otherwise one list per level is needed.
    """
    if not isinstance(params, collections.abc.Sequence) or len(params) == 0:
        raise ValueError(f"DefaultAnchorGenerator: {name} must be a non-empty list, got {params!r}")
    if not isinstance(params[0], collections.abc.Sequence):
        return [list(params)] * num_features
    if len(params) == 1:
        return [list(params[0])] * num_features
    if len(params) != num_features:
        raise ValueError(
            f"DefaultAnchorGenerator: got {len(params)} lists in {name} but {num_features} "
            "feature levels (strides); give one list per level or a single shared list"
        )
    return [list(p) for p in params]


def generate_cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> Tensor:
    """
    Anchors centered on (0, 0) for every (size, aspect_ratio), size-major.

    Args:
        sizes: anchor sizes in absolute pixels; an anchor has area size**2.
        aspect_ratios: height / width ratios.

    Returns:
        (len(sizes) * len(aspect_ratios), 4) XYXY anchors.
    """
    anchors = []
    for size in sizes:
        area = size**2.0
        for aspect_ratio in aspect_ratios:
            # w * h = area and h / w = aspect_ratio
            w = math.sqrt(area / aspect_ratio)
            h = aspect_ratio * w
            anchors.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return torch.tensor(anchors)


def _create_grid_offsets(
    size: Sequence[int], stride: int, offset: float, device: torch.device
) -> Tuple[Tensor, Tensor]:
    """x and y shifts (each (H*W,)) of a (H, W) grid, row-major (x changes fastest)."""
    grid_height, grid_width = size
    shifts_x = torch.arange(offset * stride, grid_width * stride, step=stride, dtype=torch.float32, device=device)
    shifts_y = torch.arange(offset * stride, grid_height * stride, step=stride, dtype=torch.float32, device=device)
    shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
    return shift_x.reshape(-1), shift_y.reshape(-1)


@ANCHOR_GENERATOR_REGISTRY.register()
class DefaultAnchorGenerator(nn.Module):
    """
    Generates anchors on a regular grid of every feature map, as detectron2 does.

    For a level with stride s and a (H, W) feature map, the anchor centers are
    ``(offset * s + j * s, offset * s + i * s)`` for i < H, j < W; anchors are ordered
    location-major (row by row, x fastest), then cell anchor (size-major, then aspect ratio).
    """

    box_dim: int = 4
    """the dimension of each anchor box (XYXY)."""

    @configurable
    def __init__(
        self,
        *,
        sizes: Sequence,
        aspect_ratios: Sequence,
        strides: Sequence[int],
        offset: float = 0.5,
    ):
        """
        Args:
            sizes: list[list[float]], sizes[i] are the anchor sizes (sqrt of area, absolute
                pixels) of level i. A single list is shared by all levels.
            aspect_ratios: list[list[float]], aspect_ratios[i] are the height/width ratios of
                level i's anchors. A single list is shared by all levels.
            strides: stride (pixels) of each feature level.
            offset: relative offset of the first anchor center from the image corner, in
                units of the stride, in [0, 1). Defaults to 0.5 (detectron2's default; its
                RetinaNet config uses 0.0).
        """
        super().__init__()
        self.strides = list(strides)
        self.num_features = len(self.strides)
        sizes = _broadcast_params(sizes, self.num_features, "sizes")
        aspect_ratios = _broadcast_params(aspect_ratios, self.num_features, "aspect_ratios")
        self.cell_anchors = BufferList([generate_cell_anchors(s, a).float() for s, a in zip(sizes, aspect_ratios)])
        self.offset = float(offset)
        if not 0.0 <= self.offset < 1.0:
            raise ValueError(f"DefaultAnchorGenerator: offset must be in [0, 1), got {offset}")

    @classmethod
    def from_config(cls, cfg: Any, input_shape: List[ShapeSpec]) -> Dict[str, Any]:
        """Arguments from ``cfg.MODEL.ANCHOR_GENERATOR.{SIZES, ASPECT_RATIOS, OFFSET}``; the
        strides are those of ``input_shape`` (the features the anchors are placed on)."""
        return {
            "sizes": cfg.MODEL.ANCHOR_GENERATOR.SIZES,
            "aspect_ratios": cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS,
            "strides": [x.stride for x in input_shape],
            "offset": cfg.MODEL.ANCHOR_GENERATOR.OFFSET,
        }

    @property
    def num_cell_anchors(self) -> List[int]:
        """Alias of :attr:`num_anchors`."""
        return self.num_anchors

    @property
    def num_anchors(self) -> List[int]:
        """Number of anchors per spatial location of each level (e.g. [9, 9, 9, 9, 9])."""
        return [len(cell_anchors) for cell_anchors in self.cell_anchors]

    _CACHE_SIZE = 16
    """Grid anchors of this many distinct (feature-map sizes, device, dtype) are kept."""

    def _grid_anchors(self, grid_sizes: List[Sequence[int]]) -> List[Tensor]:
        """Anchors of every level for these (H, W) grid sizes, cached per sizes (LRU):
        training repeats a handful of padded input sizes and inference often one."""
        first = next(iter(self.cell_anchors))
        key = (tuple((int(h), int(w)) for h, w in grid_sizes), first.device, first.dtype)
        cache: Dict = self.__dict__.setdefault("_anchor_cache", collections.OrderedDict())
        anchors = cache.get(key)
        if anchors is None:
            anchors = self._compute_grid_anchors(grid_sizes)
            cache[key] = anchors
            while len(cache) > self._CACHE_SIZE:
                cache.popitem(last=False)
        else:
            cache.move_to_end(key)
        return anchors

    def _compute_grid_anchors(self, grid_sizes: List[Sequence[int]]) -> List[Tensor]:
        anchors = []
        for size, stride, base_anchors in zip(grid_sizes, self.strides, self.cell_anchors):
            shift_x, shift_y = _create_grid_offsets(size, stride, self.offset, base_anchors.device)
            shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
            # (H*W, 1, 4) + (1, A, 4) -> (H*W*A, 4)
            anchors.append((shifts.view(-1, 1, 4) + base_anchors.view(1, -1, 4)).reshape(-1, 4))
        return anchors

    def forward(self, features: List[Tensor]) -> List[Boxes]:
        """
        Args:
            features: #levels feature maps of shape (N, C, Hi, Wi); only their sizes are used.

        Returns:
            #levels Boxes, each with Hi * Wi * A anchors (XYXY, input-image pixels). The
            tensors are cached per feature-map size and shared between calls: do not
            modify them in place (clone first).
        """
        if len(features) != self.num_features:
            raise ValueError(
                f"DefaultAnchorGenerator was built for {self.num_features} levels (strides "
                f"{self.strides}) but got {len(features)} feature maps"
            )
        grid_sizes = [feature_map.shape[-2:] for feature_map in features]
        return [Boxes(x) for x in self._grid_anchors(grid_sizes)]


def build_anchor_generator(cfg: Any, input_shape: List[ShapeSpec]) -> nn.Module:
    """The anchor generator named by ``cfg.MODEL.ANCHOR_GENERATOR.NAME``, for features of
    shapes ``input_shape`` (their strides are used)."""
    return ANCHOR_GENERATOR_REGISTRY.get(cfg.MODEL.ANCHOR_GENERATOR.NAME)(cfg, input_shape)
