"""Detection losses: sigmoid focal loss, smooth L1, GIoU / DIoU / CIoU (fvcore / detectron2 semantics)."""

import math

import torch
from torch.nn import functional as F

__all__ = [
    "sigmoid_focal_loss",
    "sigmoid_focal_loss_from_labels",
    "smooth_l1_loss",
    "giou_loss",
    "diou_loss",
    "ciou_loss",
]


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


class _FocalLossFromLabels(torch.autograd.Function):
    """Summed sigmoid focal loss of one-hot targets given as class indices, with a
    hand-written backward (far fewer passes over the (..., K) logits than autograd
    through :func:`sigmoid_focal_loss`, and no one-hot or masked copies).

    With ``u = -x`` for an element's own class and ``u = x`` for the others, the element
    loss is ``alpha_t * q**gamma * softplus(u)`` with ``q = sigmoid(u) = 1 - p_t`` and
    ``softplus(u) = -log(p_t)``; its derivative in ``u`` is
    ``alpha_t * q**gamma * (gamma * (1 - q) * softplus(u) + q)``.
    """

    @staticmethod
    def forward(ctx, inputs: torch.Tensor, labels: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
        x = inputs if inputs.dtype == torch.float64 else inputs.float()
        num_classes = x.shape[-1]
        is_target = labels.unsqueeze(-1) == torch.arange(num_classes, device=x.device)  # (..., K)
        u = torch.where(is_target, -x, x)
        q = torch.sigmoid(u)  # 1 - p_t
        softplus_u = F.softplus(u)  # -log(p_t)
        q_gamma = q * q if gamma == 2 else q.pow(gamma)
        loss = q_gamma * softplus_u
        ignored = labels < 0
        total = loss.sum()
        if bool(ignored.any()):
            total = total - loss[ignored].sum()
        if alpha >= 0:
            pos_sum = loss[is_target].sum()  # ignored rows (label -1) have no target
            total = (1 - alpha) * (total - pos_sum) + alpha * pos_sum
        ctx.save_for_backward(is_target, ignored, q, softplus_u, q_gamma)
        ctx.alpha, ctx.gamma, ctx.input_dtype = alpha, gamma, inputs.dtype
        return total

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        is_target, ignored, q, softplus_u, q_gamma = ctx.saved_tensors
        alpha, gamma = ctx.alpha, ctx.gamma
        # d loss / d u, then d u / d x = -1 on the target class, +1 elsewhere
        grad = torch.sub(1.0, q).mul_(softplus_u).mul_(gamma).add_(q).mul_(q_gamma)
        if alpha >= 0:
            scale = torch.where(is_target, -alpha, 1.0 - alpha)
        else:
            scale = torch.where(is_target, -1.0, 1.0)
        grad.mul_(scale)
        grad[ignored] = 0.0
        grad.mul_(grad_output)
        return grad.to(ctx.input_dtype), None, None, None


def sigmoid_focal_loss_from_labels(
    inputs: torch.Tensor, labels: torch.Tensor, alpha: float = 0.25, gamma: float = 2
) -> torch.Tensor:
    """Summed :func:`sigmoid_focal_loss` of ``inputs`` against one-hot targets given by class index.

    Equal (up to floating-point rounding) to::

        valid = labels >= 0
        targets = F.one_hot(labels[valid], K + 1)[:, :K]     # label K: all-zero target
        sigmoid_focal_loss(inputs[valid], targets, alpha, gamma, reduction="sum")

    but computed in one pass over ``inputs`` with a fused backward, without building the
    one-hot targets or copying the valid rows (RetinaNet's classification loss over
    anchors x classes).

    Args:
        inputs: (..., K) logits (computed in float32, or float64 for float64 inputs).
        labels: (...) int64, the class of each row: 0..K-1 (one positive class), K (or any
            value >= K: background, every class negative), -1 (ignored: no loss, no gradient).
        alpha: weight of positives in (0, 1), negatives get ``1 - alpha``; a negative value
            disables the weighting. Defaults to 0.25.
        gamma: focusing exponent >= 0. Defaults to 2.

    Returns:
        scalar tensor (float32, float64 for float64 inputs), the sum over all valid (row, class) pairs.
    """
    if inputs.shape[:-1] != labels.shape:
        raise ValueError(
            f"sigmoid_focal_loss_from_labels: labels must have the shape of inputs without the last "
            f"(class) dimension, got inputs {tuple(inputs.shape)} and labels {tuple(labels.shape)}"
        )
    if labels.dtype.is_floating_point:
        raise TypeError(f"sigmoid_focal_loss_from_labels: labels must be integer class indices, got {labels.dtype}")
    if gamma < 0:
        raise ValueError(f"sigmoid_focal_loss_from_labels: gamma must be >= 0, got {gamma}")
    return _FocalLossFromLabels.apply(inputs, labels, float(alpha), float(gamma))


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
