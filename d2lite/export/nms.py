"""Class-aware NMS written for export: the kept boxes of :func:`d2lite.layers.batched_nms`,
in the same order, as a function of tensors without Python control flow on their values.

:func:`d2lite.layers.batched_nms` calls torchvision's ``batched_nms``, which picks its
algorithm by the number of boxes: up to 1000 boxes (4000 coordinates) on the CPU it
runs one NMS on boxes shifted apart per class (the "coordinate trick"), above that one
NMS per class. The two agree on which boxes overlap up to float rounding of the shifted
coordinates, and they order boxes of equal score differently (the per-class path sorts
with ``torch.sort``, which is not stable). An exported model cannot branch on the number
of boxes at run time, so :func:`batched_nms` here holds both and feeds the boxes to the
one that torchvision would have chosen (the other gets none); with the same scores it
returns exactly what the eager model keeps. Both use torchvision's NMS operator (``torch.ops.torchvision.nms``), which
torch.export, TorchScript and the ONNX exporter (``NonMaxSuppression``) all handle.
"""

import contextlib
from typing import Iterator

import torch
import torchvision  # noqa: F401  (registers torch.ops.torchvision.nms)
from torch import Tensor

__all__ = ["batched_nms", "nms_shape_fix"]


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float, num_classes: int) -> Tensor:
    """NMS done independently per category, as :func:`d2lite.layers.batched_nms` on the CPU.

    Args:
        boxes: (N, 4) XYXY absolute pixels.
        scores: (N,).
        idxs: (N,) int64 category of each box, in ``[0, num_classes)``.
        iou_threshold: a box is dropped when its IoU with a kept box of the same category
            and a higher score is > this.
        num_classes: number of categories (the per-class path loops over all of them).

    Returns:
        (K,) int64 indices of the kept boxes, by decreasing score.
    """
    boxes = boxes.float()
    scores = scores.float()
    # Each path gets all boxes or none, so only the one torchvision would run costs time.
    use_vanilla = torch.scalar_tensor(boxes.shape[0]) > 1000  # torchvision: boxes.numel() > 4000
    # Coordinate trick (up to 1000 boxes): one NMS on boxes shifted apart by class; the
    # largest coordinate sets the shift (-inf keeps max() defined on zero boxes).
    use_trick = torch.logical_not(use_vanilla).expand(boxes.shape[0])
    trick_boxes, trick_scores, trick_idxs = boxes[use_trick], scores[use_trick], idxs[use_trick]
    max_coordinate = torch.cat([trick_boxes.reshape(-1), trick_boxes.new_full((1,), float("-inf"))]).max()
    offsets = trick_idxs.to(trick_boxes) * (max_coordinate + torch.tensor(1).to(trick_boxes))
    keep_trick = torch.ops.torchvision.nms(trick_boxes + offsets[:, None], trick_scores, iou_threshold)
    # One NMS per class (from 1001 boxes on), then all kept boxes sorted by score.
    keep_mask = torch.zeros_like(scores, dtype=torch.bool)
    for class_id in range(num_classes):
        curr_indices = torch.where((idxs == class_id) & use_vanilla)[0]
        curr_keep = torch.ops.torchvision.nms(boxes[curr_indices], scores[curr_indices], iou_threshold)
        keep_mask[curr_indices[curr_keep]] = True
    keep_indices = torch.where(keep_mask)[0]
    keep_vanilla = keep_indices[scores[keep_indices].sort(descending=True)[1]]
    return torch.cat([keep_trick, keep_vanilla])


@contextlib.contextmanager
def nms_shape_fix() -> Iterator[None]:
    """While active, tracing ``torch.ops.torchvision.nms`` (torch.export, the ONNX exporter)
    lets it keep any number of boxes, 0 and 1 included.

    torchvision's fake (shape-only) kernel of ``nms`` creates its output size with
    ``ctx.create_unbacked_symint()``, whose lower bound is 2 (torchvision 0.29 with torch
    2.14): a program exported with it asserts at run time that every NMS keeps at least two
    boxes and fails on an image with fewer. This registers a fake kernel whose size starts
    at 0 in a private library fragment and removes it on exit, which restores torchvision's.
    """
    lib = torch.library.Library("torchvision", "FRAGMENT")

    def nms_fake(dets: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
        torch._check(dets.dim() == 2 and dets.size(1) == 4, lambda: f"nms: boxes must be (N, 4), got {dets.shape}")
        torch._check(scores.dim() == 1 and scores.size(0) == dets.size(0), lambda: "nms: need one score per box")
        return dets.new_empty(torch.library.get_ctx().new_dynamic_size(), dtype=torch.long)

    torch.library.register_fake("torchvision::nms", nms_fake, lib=lib)
    try:
        yield
    finally:
        lib._destroy()
