"""Non-maximum suppression."""

import torch
from torchvision.ops import boxes as box_ops
from torchvision.ops import nms as _tv_nms

__all__ = ["nms", "batched_nms"]


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Class-agnostic NMS (torchvision's). Returns indices of kept boxes, by decreasing score.

    Args:
        boxes: (N, 4) XYXY absolute.
        scores: (N,).
        iou_threshold: drop boxes whose IoU with a higher-scoring kept box is > this.
    """
    return _tv_nms(boxes.float(), scores.float(), iou_threshold)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """NMS done independently per category ``idxs`` (boxes of different categories never suppress each other).

    Args:
        boxes: (N, 4) XYXY absolute.
        scores: (N,).
        idxs: (N,) int64 category of each box.
        iou_threshold: IoU threshold.

    Returns:
        int64 indices of the kept boxes, sorted by decreasing score.
    """
    if boxes.shape[-1] != 4:
        raise ValueError(f"batched_nms expects boxes of shape (N, 4), got {tuple(boxes.shape)}")
    # fp16 has not enough range for torchvision's coordinate-offset trick.
    return box_ops.batched_nms(boxes.float(), scores.float(), idxs, iou_threshold)
