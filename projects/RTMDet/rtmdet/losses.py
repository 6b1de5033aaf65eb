"""QualityFocalLoss and GIoULoss with mmdetection's weighting and reduction."""

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["QualityFocalLoss", "GIoULoss", "quality_focal_loss", "giou_loss", "weight_reduce_loss"]


def weight_reduce_loss(
    loss: Tensor, weight: Optional[Tensor] = None, reduction: str = "mean", avg_factor: Optional[float] = None
) -> Tensor:
    """mmdetection's reduction: multiply by ``weight``; "mean" divides the sum by
    ``avg_factor + float32 eps`` when ``avg_factor`` is given, else takes the mean."""
    if weight is not None:
        loss = loss * weight
    if avg_factor is None:
        if reduction == "mean":
            return loss.mean()
        if reduction == "sum":
            return loss.sum()
        if reduction == "none":
            return loss
    else:
        if reduction == "mean":
            return loss.sum() / (avg_factor + torch.finfo(torch.float32).eps)
        if reduction == "none":
            return loss
        raise ValueError('avg_factor can not be used with reduction="sum".')
    raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}.")


def quality_focal_loss(pred: Tensor, target: Tuple[Tensor, Tensor], beta: float = 2.0) -> Tensor:
    """Quality focal loss (Generalized Focal Loss), per sample.

    Args:
        pred: (N, C) logits.
        target: (labels (N,) in [0, C] with C = background, scores (N,) IoU quality targets).
        beta: exponent of the modulating factor. Defaults to 2.0.

    Returns:
        (N,) loss summed over classes. Negatives: ``BCE(x, 0) * sigmoid(x)^beta`` on every
        class; a positive's own class: ``BCE(x, q) * |q - sigmoid(x)|^beta``. The
        modulating factors are not detached (as mmdetection).
    """
    if len(target) != 2:
        raise ValueError("quality_focal_loss target must be a tuple (labels, quality scores).")
    label, score = target
    pred_sigmoid = pred.sigmoid()
    scale_factor = pred_sigmoid
    zerolabel = scale_factor.new_zeros(pred.shape)
    loss = F.binary_cross_entropy_with_logits(pred, zerolabel, reduction="none") * scale_factor.pow(beta)
    bg_class_ind = pred.size(1)
    pos = ((label >= 0) & (label < bg_class_ind)).nonzero().squeeze(1)
    pos_label = label[pos].long()
    scale_factor = score[pos] - pred_sigmoid[pos, pos_label]
    loss[pos, pos_label] = F.binary_cross_entropy_with_logits(
        pred[pos, pos_label], score[pos], reduction="none"
    ) * scale_factor.abs().pow(beta)
    return loss.sum(dim=1)


class QualityFocalLoss(nn.Module):
    """Sigmoid quality focal loss.

    Args:
        beta: modulating exponent. Defaults to 2.0.
        reduction: "none", "mean" or "sum". Defaults to "mean".
        loss_weight: multiplier. Defaults to 1.0.
    """

    def __init__(self, beta: float = 2.0, reduction: str = "mean", loss_weight: float = 1.0) -> None:
        super().__init__()
        self.beta = beta
        self.reduction = reduction
        self.loss_weight = loss_weight

    def forward(
        self,
        pred: Tensor,
        target: Tuple[Tensor, Tensor],
        weight: Optional[Tensor] = None,
        avg_factor: Optional[float] = None,
    ) -> Tensor:
        """pred (N, C) logits, target (labels (N,), quality (N,)), weight (N,) -> loss."""
        loss = quality_focal_loss(pred, target, beta=self.beta)
        return self.loss_weight * weight_reduce_loss(loss, weight, self.reduction, avg_factor)


def giou_loss(pred: Tensor, target: Tensor, eps: float = 1e-6) -> Tensor:
    """``1 - GIoU`` of aligned boxes pred (n, 4), target (n, 4), XYXY -> (n,).

    Union and enclosing area are clamped to >= eps."""
    area1 = (pred[:, 2] - pred[:, 0]) * (pred[:, 3] - pred[:, 1])
    area2 = (target[:, 2] - target[:, 0]) * (target[:, 3] - target[:, 1])
    lt = torch.max(pred[:, :2], target[:, :2])
    rb = torch.min(pred[:, 2:], target[:, 2:])
    wh = (rb - lt).clamp(min=0)
    overlap = wh[:, 0] * wh[:, 1]
    union = torch.clamp(area1 + area2 - overlap, min=eps)
    ious = overlap / union
    enclose_wh = (torch.max(pred[:, 2:], target[:, 2:]) - torch.min(pred[:, :2], target[:, :2])).clamp(min=0)
    enclose_area = torch.clamp(enclose_wh[:, 0] * enclose_wh[:, 1], min=eps)
    gious = ious - (enclose_area - union) / enclose_area
    return 1 - gious


class GIoULoss(nn.Module):
    """Generalized IoU loss.

    Args:
        eps: clamp of union / enclosing area. Defaults to 1e-6.
        reduction: "none", "mean" or "sum". Defaults to "mean".
        loss_weight: multiplier (RTMDet uses 2.0). Defaults to 1.0.
    """

    def __init__(self, eps: float = 1e-6, reduction: str = "mean", loss_weight: float = 1.0) -> None:
        super().__init__()
        self.eps = eps
        self.reduction = reduction
        self.loss_weight = loss_weight

    def forward(
        self,
        pred: Tensor,
        target: Tensor,
        weight: Optional[Tensor] = None,
        avg_factor: Optional[float] = None,
    ) -> Tensor:
        """pred (n, 4), target (n, 4) XYXY; weight (n,) or (n, 4). All-zero weights give
        a zero loss that still depends on ``pred`` (so every parameter gets a gradient)."""
        if pred.shape != target.shape or pred.shape[-1] != 4:
            raise ValueError(
                f"GIoULoss: pred and target must both be (n, 4), got {tuple(pred.shape)}, {tuple(target.shape)}."
            )
        if weight is not None and not torch.any(weight > 0):
            if pred.dim() == weight.dim() + 1:
                weight = weight.unsqueeze(1)
            return (pred * weight).sum()
        if weight is not None and weight.dim() > 1:
            weight = weight.mean(-1)
        loss = giou_loss(pred, target, eps=self.eps)
        return self.loss_weight * weight_reduce_loss(loss, weight, self.reduction, avg_factor)
