"""Detection losses: sigmoid focal loss, smooth L1, GIoU / DIoU / CIoU (fvcore / detectron2 semantics)."""

import math

import torch
from torch.nn import functional as F

__all__ = ["sigmoid_focal_loss", "smooth_l1_loss", "giou_loss", "diou_loss", "ciou_loss"]


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return loss
    if reduction == "mean":
        return loss.mean() if loss.numel() > 0 else 0.0 * loss.sum()
    if reduction == "sum":
        return loss.sum()
    raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")


def sigmoid_focal_loss(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    alpha: float = 0.25,
    gamma: float = 2,
    reduction: str = "none",
) -> torch.Tensor:
    """Focal loss of RetinaNet: ``-alpha_t * (1 - p_t)^gamma * log(p_t)``.

    Args:
        inputs: logits of any shape.
        targets: same shape, binary labels (0 or 1; soft values allowed).
        alpha: weight of positives in (0, 1); negatives get ``1 - alpha``. A negative
            value disables the weighting.
        gamma: focusing exponent (0 gives plain binary cross-entropy).
        reduction: "none" | "mean" | "sum".

    Returns:
        loss with the shape of ``inputs`` ("none") or a scalar.
    """
    inputs = inputs.float()
    targets = targets.float()
    p = torch.sigmoid(inputs)
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    return _reduce(loss, reduction)


def smooth_l1_loss(input: torch.Tensor, target: torch.Tensor, beta: float, reduction: str = "none") -> torch.Tensor:
    """Smooth L1 (Huber / beta) loss.

    ``0.5 * x^2 / beta`` if ``|x| < beta`` else ``|x| - 0.5 * beta``, with
    ``x = input - target``; ``beta < 1e-5`` computes the exact L1 loss.

    Args:
        input, target: tensors of the same shape.
        beta: transition point between the L2 and L1 parts (>= 0).
        reduction: "none" | "mean" | "sum".
    """
    if beta < 1e-5:
        # The formula below would divide by ~0.
        loss = torch.abs(input - target)
    else:
        n = torch.abs(input - target)
        loss = torch.where(n < beta, 0.5 * n**2 / beta, n - 0.5 * beta)
    return _reduce(loss, reduction)


def _check_boxes(name: str, x1: torch.Tensor, y1: torch.Tensor, x2: torch.Tensor, y2: torch.Tensor) -> None:
    """Finite boxes must be XYXY. Non-finite coordinates (a diverging model) are not
    reported here: they make the loss NaN/inf, which the trainer reports as divergence
    (FloatingPointError naming the iteration and each loss term)."""
    finite = torch.isfinite(x1) & torch.isfinite(y1) & torch.isfinite(x2) & torch.isfinite(y2)
    if bool(((x2 < x1) & finite).any()):
        raise ValueError(f"bad box in {name}: x1 larger than x2 (boxes must be XYXY)")
    if bool(((y2 < y1) & finite).any()):
        raise ValueError(f"bad box in {name}: y1 larger than y2 (boxes must be XYXY)")


def _iou_terms(boxes1: torch.Tensor, boxes2: torch.Tensor, eps: float):
    """Checked XYXY coordinates of both box sets (two 4-tuples), their union and IoU."""
    x1, y1, x2, y2 = boxes1.unbind(dim=-1)
    x1g, y1g, x2g, y2g = boxes2.unbind(dim=-1)
    _check_boxes("boxes1", x1, y1, x2, y2)
    _check_boxes("boxes2", x1g, y1g, x2g, y2g)
    xkis1 = torch.max(x1, x1g)
    ykis1 = torch.max(y1, y1g)
    xkis2 = torch.min(x2, x2g)
    ykis2 = torch.min(y2, y2g)
    intsct = (xkis2 - xkis1).clamp(min=0) * (ykis2 - ykis1).clamp(min=0)
    union = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - intsct
    iou = intsct / (union + eps)
    return (x1, y1, x2, y2), (x1g, y1g, x2g, y2g), union, iou


def giou_loss(boxes1: torch.Tensor, boxes2: torch.Tensor, reduction: str = "none", eps: float = 1e-7) -> torch.Tensor:
    """Generalized IoU loss ``1 - GIoU`` (https://giou.stanford.edu/), in [0, 2].

    Args:
        boxes1, boxes2: (..., 4) XYXY boxes, matched element-wise.
        reduction: "none" | "mean" | "sum".
        eps: small number to prevent division by zero.
    """
    (x1, y1, x2, y2), (x1g, y1g, x2g, y2g), union, iou = _iou_terms(boxes1, boxes2, eps)
    # smallest enclosing box
    xc1 = torch.min(x1, x1g)
    yc1 = torch.min(y1, y1g)
    xc2 = torch.max(x2, x2g)
    yc2 = torch.max(y2, y2g)
    area_c = (xc2 - xc1) * (yc2 - yc1)
    giou = iou - ((area_c - union) / (area_c + eps))
    return _reduce(1 - giou, reduction)


def _center_distance_penalty(boxes, boxes_gt, eps: float) -> torch.Tensor:
    """DIoU's ``d^2 / c^2``: squared distance of the box centers over the squared
    diagonal of the smallest enclosing box."""
    x1, y1, x2, y2 = boxes
    x1g, y1g, x2g, y2g = boxes_gt
    xc1 = torch.min(x1, x1g)
    yc1 = torch.min(y1, y1g)
    xc2 = torch.max(x2, x2g)
    yc2 = torch.max(y2, y2g)
    diag_len = ((xc2 - xc1) ** 2) + ((yc2 - yc1) ** 2) + eps
    x_p, y_p = (x2 + x1) / 2, (y2 + y1) / 2
    x_g, y_g = (x1g + x2g) / 2, (y1g + y2g) / 2
    distance = (x_p - x_g) ** 2 + (y_p - y_g) ** 2
    return distance / diag_len


def diou_loss(boxes1: torch.Tensor, boxes2: torch.Tensor, reduction: str = "none", eps: float = 1e-7) -> torch.Tensor:
    """Distance IoU loss ``1 - IoU + d^2 / c^2`` (https://arxiv.org/abs/1911.08287).

    d: distance between box centers; c: diagonal of the smallest enclosing box.
    """
    b, b_gt, _, iou = _iou_terms(boxes1, boxes2, eps)
    return _reduce(1 - iou + _center_distance_penalty(b, b_gt, eps), reduction)


def ciou_loss(boxes1: torch.Tensor, boxes2: torch.Tensor, reduction: str = "none", eps: float = 1e-7) -> torch.Tensor:
    """Complete IoU loss: DIoU loss plus an aspect-ratio term ``alpha * v`` (https://arxiv.org/abs/1911.08287)."""
    b, b_gt, _, iou = _iou_terms(boxes1, boxes2, eps)
    penalty = _center_distance_penalty(b, b_gt, eps)
    w_pred, h_pred = b[2] - b[0], b[3] - b[1]
    w_gt, h_gt = b_gt[2] - b_gt[0], b_gt[3] - b_gt[1]
    v = (4 / (math.pi**2)) * torch.pow(torch.atan(w_gt / (h_gt + eps)) - torch.atan(w_pred / (h_pred + eps)), 2)
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    return _reduce(1 - iou + penalty + alpha * v, reduction)
