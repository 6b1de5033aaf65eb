"""Axis-aligned boxes: :class:`BoxMode`, :class:`Boxes` and pairwise overlap functions.

Boxes are stored as a float32 tensor of shape (N, 4) in XYXY absolute pixel
coordinates ``(x1, y1, x2, y2)``, as in detectron2.
"""

from enum import IntEnum, unique
from typing import Any, Iterator, List, Tuple, Union

import numpy as np
import torch

_RawBoxType = Union[List[float], Tuple[float, ...], torch.Tensor, np.ndarray]

__all__ = [
    "BoxMode",
    "Boxes",
    "pairwise_intersection",
    "pairwise_iou",
    "pairwise_ioa",
    "matched_pairwise_iou",
    "pairwise_point_box_distance",
]


@unique
class BoxMode(IntEnum):
    """How a box is encoded. Values equal detectron2's, so saved dataset dicts agree.

    - XYXY_ABS: (x0, y0, x1, y1) in absolute pixels.
    - XYWH_ABS: (x0, y0, w, h) in absolute pixels (COCO's ``bbox``).
    - XYXY_REL / XYWH_REL: coordinates relative to image size; not convertible
      (the image size is unknown to ``convert``), like in detectron2.
    - XYWHA_ABS: rotated boxes (xc, yc, w, h, angle); out of d2lite's scope.
    """

    XYXY_ABS = 0
    XYWH_ABS = 1
    XYXY_REL = 2
    XYWH_REL = 3
    XYWHA_ABS = 4

    @staticmethod
    def convert(box: _RawBoxType, from_mode: "BoxMode", to_mode: "BoxMode") -> _RawBoxType:
        """Convert box(es) between XYXY_ABS and XYWH_ABS.

        Args:
            box: a single box as a list/tuple of 4 numbers, or a Tensor / ndarray of
                shape (N, 4) (or (4,)).
            from_mode, to_mode: :class:`BoxMode` (or their int values).

        Returns:
            The converted box(es), of the same type as ``box`` (a new object).

        Raises:
            NotImplementedError: for relative or rotated modes.
        """
        from_mode, to_mode = BoxMode(from_mode), BoxMode(to_mode)
        if from_mode == to_mode:
            return box
        for mode in (from_mode, to_mode):
            if mode in (BoxMode.XYXY_REL, BoxMode.XYWH_REL):
                raise NotImplementedError(
                    f"BoxMode.convert: relative mode {mode.name} is not supported "
                    "(the image size is unknown); convert to absolute pixels first."
                )
            if mode == BoxMode.XYWHA_ABS:
                raise NotImplementedError("BoxMode.convert: rotated boxes (XYWHA_ABS) are not supported by d2lite.")

        original_type = type(box)
        is_numpy = isinstance(box, np.ndarray)
        single_box = isinstance(box, (list, tuple))
        if single_box:
            if len(box) != 4:
                raise ValueError(f"BoxMode.convert: a single box must have 4 numbers, got {len(box)}: {box}")
            arr = torch.tensor(box)[None, :]
        elif is_numpy:
            arr = torch.from_numpy(np.asarray(box)).clone()
        elif isinstance(box, torch.Tensor):
            arr = box.clone()
        else:
            raise TypeError(f"BoxMode.convert: unsupported box type {original_type}")
        if arr.shape[-1] != 4:
            raise ValueError(f"BoxMode.convert: boxes must have 4 values per box, got {tuple(arr.shape)}")

        if from_mode == BoxMode.XYWH_ABS and to_mode == BoxMode.XYXY_ABS:
            arr[..., 2] += arr[..., 0]
            arr[..., 3] += arr[..., 1]
        else:  # XYXY_ABS -> XYWH_ABS
            arr[..., 2] -= arr[..., 0]
            arr[..., 3] -= arr[..., 1]

        if single_box:
            return original_type(arr.flatten().tolist())
        if is_numpy:
            return arr.numpy()
        return arr


class Boxes:
    """A list of N boxes stored as ``tensor`` of shape (N, 4), XYXY absolute pixels, float32.

    Supports the common box operations (area, clip, nonempty, ...) and indexing,
    which always returns a new :class:`Boxes` (possibly sharing storage).
    """

    def __init__(self, tensor: Union[torch.Tensor, np.ndarray, List[List[float]]]):
        if not isinstance(tensor, torch.Tensor):
            tensor = torch.as_tensor(tensor, dtype=torch.float32, device=torch.device("cpu"))
        else:
            tensor = tensor.to(torch.float32)
        if tensor.numel() == 0:
            # Keep the (0, 4) shape so that cat / indexing of empty boxes works.
            tensor = tensor.reshape((-1, 4)).to(dtype=torch.float32)
        if tensor.dim() != 2 or tensor.size(-1) != 4:
            raise ValueError(f"Boxes expects a tensor of shape (N, 4), got {tuple(tensor.shape)}")
        self.tensor = tensor

    def clone(self) -> "Boxes":
        return Boxes(self.tensor.clone())

    def to(self, device: Any) -> "Boxes":
        return Boxes(self.tensor.to(device=device))

    def area(self) -> torch.Tensor:
        """Returns: (N,) areas ``(x2 - x1) * (y2 - y1)`` (negative for inverted boxes)."""
        box = self.tensor
        return (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])

    def clip(self, box_size: Tuple[int, int]) -> None:
        """Clip boxes in place to ``[0, width] x [0, height]``.

        Args:
            box_size: (height, width) in pixels.
        """
        if not torch.isfinite(self.tensor).all():
            raise FloatingPointError("Boxes.clip: box tensor contains infinite or NaN values")
        h, w = box_size
        x1 = self.tensor[:, 0].clamp(min=0, max=w)
        y1 = self.tensor[:, 1].clamp(min=0, max=h)
        x2 = self.tensor[:, 2].clamp(min=0, max=w)
        y2 = self.tensor[:, 3].clamp(min=0, max=h)
        self.tensor = torch.stack((x1, y1, x2, y2), dim=-1)

    def nonempty(self, threshold: float = 0.0) -> torch.Tensor:
        """Returns: (N,) bool, True where both width and height are ``> threshold``."""
        box = self.tensor
        widths = box[:, 2] - box[:, 0]
        heights = box[:, 3] - box[:, 1]
        return (widths > threshold) & (heights > threshold)

    def inside_box(self, box_size: Tuple[int, int], boundary_threshold: int = 0) -> torch.Tensor:
        """Which boxes lie inside an image, allowing ``boundary_threshold`` pixels outside.

        Args:
            box_size: (height, width) of the image.
            boundary_threshold: boxes that extend beyond the image by at most this
                many pixels still count as inside.

        Returns:
            (N,) bool tensor.
        """
        height, width = box_size
        t = self.tensor
        return (
            (t[..., 0] >= -boundary_threshold)
            & (t[..., 1] >= -boundary_threshold)
            & (t[..., 2] < width + boundary_threshold)
            & (t[..., 3] < height + boundary_threshold)
        )

    def get_centers(self) -> torch.Tensor:
        """Returns: (N, 2) box centers (x, y)."""
        return (self.tensor[:, :2] + self.tensor[:, 2:]) / 2

    def scale(self, scale_x: float, scale_y: float) -> None:
        """Scale x coordinates by ``scale_x`` and y coordinates by ``scale_y``, in place."""
        self.tensor[:, 0::2] *= scale_x
        self.tensor[:, 1::2] *= scale_y

    @classmethod
    def cat(cls, boxes_list: List["Boxes"]) -> "Boxes":
        """Concatenate a list of :class:`Boxes` into one (an empty list gives 0 boxes)."""
        if not isinstance(boxes_list, (list, tuple)):
            raise TypeError(f"Boxes.cat expects a list of Boxes, got {type(boxes_list)}")
        if len(boxes_list) == 0:
            return cls(torch.empty(0))
        for b in boxes_list:
            if not isinstance(b, Boxes):
                raise TypeError(f"Boxes.cat expects a list of Boxes, got an element of type {type(b)}")
        return cls(torch.cat([b.tensor for b in boxes_list], dim=0))

    def __getitem__(self, item: Union[int, slice, torch.Tensor]) -> "Boxes":
        """Index like a tensor (int, slice, bool mask, index tensor); always returns Boxes.

        An int index gives a Boxes of length 1.
        """
        if isinstance(item, int):
            return Boxes(self.tensor[item].view(1, -1))
        b = self.tensor[item]
        if b.dim() != 2:
            raise IndexError(f"Indexing Boxes with {item} did not return a matrix (got shape {tuple(b.shape)})")
        return Boxes(b)

    def __len__(self) -> int:
        return self.tensor.shape[0]

    def __repr__(self) -> str:
        return "Boxes(" + str(self.tensor) + ")"

    def __iter__(self) -> Iterator[torch.Tensor]:
        """Yield each box as a (4,) tensor."""
        yield from self.tensor

    @property
    def device(self) -> torch.device:
        return self.tensor.device


def pairwise_intersection(boxes1: Boxes, boxes2: Boxes) -> torch.Tensor:
    """Intersection areas between all N x M pairs.

    Returns:
        (N, M) tensor of intersection areas (pixels^2), 0 for disjoint pairs.
    """
    b1, b2 = boxes1.tensor, boxes2.tensor
    width_height = torch.min(b1[:, None, 2:], b2[:, 2:]) - torch.max(b1[:, None, :2], b2[:, :2])
    width_height.clamp_(min=0)  # (N, M, 2)
    return width_height.prod(dim=2)


def pairwise_iou(boxes1: Boxes, boxes2: Boxes) -> torch.Tensor:
    """Intersection over union between all N x M pairs.

    Pairs without overlap (including zero-area boxes) get IoU 0, never NaN.

    Returns:
        (N, M) tensor.
    """
    area1 = boxes1.area()
    area2 = boxes2.area()
    inter = pairwise_intersection(boxes1, boxes2)
    return torch.where(
        inter > 0,
        inter / (area1[:, None] + area2 - inter),
        torch.zeros(1, dtype=inter.dtype, device=inter.device),
    )


def pairwise_ioa(boxes1: Boxes, boxes2: Boxes) -> torch.Tensor:
    """Intersection over the area of ``boxes2`` for all N x M pairs.

    Returns:
        (N, M) tensor; 0 where there is no overlap.
    """
    area2 = boxes2.area()
    inter = pairwise_intersection(boxes1, boxes2)
    return torch.where(inter > 0, inter / area2, torch.zeros(1, dtype=inter.dtype, device=inter.device))


def matched_pairwise_iou(boxes1: Boxes, boxes2: Boxes) -> torch.Tensor:
    """IoU between ``boxes1[i]`` and ``boxes2[i]`` for each i.

    Returns:
        (N,) tensor; 0 where the pair does not overlap.
    """
    if len(boxes1) != len(boxes2):
        raise ValueError(f"matched_pairwise_iou needs boxes of equal length, got {len(boxes1)} and {len(boxes2)}")
    area1 = boxes1.area()
    area2 = boxes2.area()
    b1, b2 = boxes1.tensor, boxes2.tensor
    lt = torch.max(b1[:, :2], b2[:, :2])
    rb = torch.min(b1[:, 2:], b2[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    return torch.where(
        inter > 0, inter / (area1 + area2 - inter), torch.zeros(1, dtype=inter.dtype, device=inter.device)
    )


def pairwise_point_box_distance(points: torch.Tensor, boxes: Boxes) -> torch.Tensor:
    """Distances from each point to the four sides of each box.

    Args:
        points: (N, 2) points (x, y).
        boxes: M boxes.

    Returns:
        (N, M, 4) distances (left, top, right, bottom) = (x - x1, y - y1, x2 - x, y2 - y);
        all positive iff the point is strictly inside the box.
    """
    x, y = points.unsqueeze(dim=2).unbind(dim=1)  # (N, 1) each
    x0, y0, x1, y1 = boxes.tensor.unsqueeze(dim=0).unbind(dim=2)  # (1, M) each
    return torch.stack([x - x0, y - y0, x1 - x, y1 - y], dim=2)
