"""Box <-> delta transforms and the dense box regression loss."""

import math
from typing import List, Sequence, Union

import torch
from torch import Tensor

from d2lite.layers import cat, ciou_loss, diou_loss, giou_loss, smooth_l1_loss
from d2lite.structures import Boxes

__all__ = ["Box2BoxTransform", "_dense_box_regression_loss"]

# Value for clamping large dw and dh predictions: exp(dw) <= 1000 / 16.
_DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


class Box2BoxTransform:
    """
    The R-CNN box transform: deltas ``(dx, dy, dw, dh)`` between a source box and a target
    box, as ``dx = wx * (tx - sx) / sw``, ``dw = ww * log(tw / sw)`` (same for y/h), where
    (sx, sy) / (tx, ty) are centers and sw / tw widths. Boxes are XYXY absolute pixels.
    """

    def __init__(self, weights: Sequence[float], scale_clamp: float = _DEFAULT_SCALE_CLAMP):
        """
        Args:
            weights: 4 scaling factors (wx, wy, ww, wh) applied to (dx, dy, dw, dh).
            scale_clamp: upper bound applied to dw and dh (after dividing by the weights)
                before ``exp`` in :meth:`apply_deltas`. Defaults to log(1000 / 16).
        """
        if len(weights) != 4:
            raise ValueError(f"Box2BoxTransform: weights must have 4 values (wx, wy, ww, wh), got {weights}")
        self.weights = tuple(weights)
        self.scale_clamp = scale_clamp

    def get_deltas(self, src_boxes: Tensor, target_boxes: Tensor) -> Tensor:
        """
        Args:
            src_boxes: (N, 4) source boxes (e.g. anchors), XYXY, positive width/height.
            target_boxes: (N, 4) target boxes (e.g. ground truth), XYXY.

        Returns:
            (N, 4) deltas (dx, dy, dw, dh) such that ``apply_deltas(deltas, src) == target``.
        """
        if not isinstance(src_boxes, torch.Tensor) or not isinstance(target_boxes, torch.Tensor):
            raise TypeError("Box2BoxTransform.get_deltas expects tensors")
        src_widths = src_boxes[:, 2] - src_boxes[:, 0]
        src_heights = src_boxes[:, 3] - src_boxes[:, 1]
        src_ctr_x = src_boxes[:, 0] + 0.5 * src_widths
        src_ctr_y = src_boxes[:, 1] + 0.5 * src_heights

        target_widths = target_boxes[:, 2] - target_boxes[:, 0]
        target_heights = target_boxes[:, 3] - target_boxes[:, 1]
        target_ctr_x = target_boxes[:, 0] + 0.5 * target_widths
        target_ctr_y = target_boxes[:, 1] + 0.5 * target_heights

        wx, wy, ww, wh = self.weights
        dx = wx * (target_ctr_x - src_ctr_x) / src_widths
        dy = wy * (target_ctr_y - src_ctr_y) / src_heights
        dw = ww * torch.log(target_widths / src_widths)
        dh = wh * torch.log(target_heights / src_heights)

        deltas = torch.stack((dx, dy, dw, dh), dim=1)
        if not bool((src_widths > 0).all()) or not bool((src_heights > 0).all()):
            raise ValueError("Box2BoxTransform.get_deltas: source boxes must have positive width and height")
        return deltas

    def apply_deltas(self, deltas: Tensor, boxes: Tensor) -> Tensor:
        """
        Args:
            deltas: (N, k*4) deltas; k >= 1 sets of (dx, dy, dw, dh) per box (class-specific
                regression uses k = #classes).
            boxes: (N, 4) reference boxes, XYXY.

        Returns:
            (N, k*4) transformed boxes, XYXY, in the dtype of ``deltas`` promoted to float.
        """
        deltas = deltas.float()  # ensure fp32 decoding precision
        boxes = boxes.to(deltas.dtype)

        widths = boxes[:, 2] - boxes[:, 0]
        heights = boxes[:, 3] - boxes[:, 1]
        ctr_x = boxes[:, 0] + 0.5 * widths
        ctr_y = boxes[:, 1] + 0.5 * heights

        wx, wy, ww, wh = self.weights
        dx = deltas[:, 0::4] / wx
        dy = deltas[:, 1::4] / wy
        dw = deltas[:, 2::4] / ww
        dh = deltas[:, 3::4] / wh

        # Prevent sending too large values into torch.exp()
        dw = torch.clamp(dw, max=self.scale_clamp)
        dh = torch.clamp(dh, max=self.scale_clamp)

        pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
        pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
        pred_w = torch.exp(dw) * widths[:, None]
        pred_h = torch.exp(dh) * heights[:, None]

        x1 = pred_ctr_x - 0.5 * pred_w
        y1 = pred_ctr_y - 0.5 * pred_h
        x2 = pred_ctr_x + 0.5 * pred_w
        y2 = pred_ctr_y + 0.5 * pred_h
        pred_boxes = torch.stack((x1, y1, x2, y2), dim=-1)  # (N, k, 4)
        return pred_boxes.reshape(deltas.shape)


def _dense_box_regression_loss(
    anchors: List[Union[Boxes, Tensor]],
    box2box_transform: Box2BoxTransform,
    pred_anchor_deltas: List[Tensor],
    gt_boxes: List[Tensor],
    fg_mask: Tensor,
    box_reg_loss_type: str = "smooth_l1",
    smooth_l1_beta: float = 0.0,
) -> Tensor:
    """
    Box regression loss of a dense detector, summed over foreground anchors.

    Args:
        anchors: #levels anchors, Boxes or (Ri, 4) tensors; R = sum(Ri) anchors in total.
        box2box_transform: the transform between anchors and deltas.
        pred_anchor_deltas: #levels tensors of shape (N, Ri, 4), predicted deltas.
        gt_boxes: N tensors of shape (R, 4), the matched ground-truth box of every anchor
            (values of non-foreground anchors are ignored).
        fg_mask: (N, R) bool, foreground anchors.
        box_reg_loss_type: "smooth_l1" (on deltas), "giou", "diou" or "ciou" (on boxes).
        smooth_l1_beta: beta of the smooth L1 loss; 0 means L1.

    Returns:
        scalar tensor, the summed (not normalized) loss.
    """
    if isinstance(anchors[0], torch.Tensor):
        anchors_t = cat(list(anchors))
    else:
        anchors_t = type(anchors[0]).cat(list(anchors)).tensor  # (R, 4)
    if box_reg_loss_type not in ("smooth_l1", "giou", "diou", "ciou"):
        raise ValueError(
            f"Invalid box_reg_loss_type '{box_reg_loss_type}'; expected one of 'smooth_l1', 'giou', 'diou', 'ciou'"
        )

    # Only foreground anchors enter the loss: transform just those (in (image, anchor)
    # order, as boolean indexing of the (N, R, 4) tensors would give them).
    image_idx, anchor_idx = fg_mask.nonzero(as_tuple=True)
    fg_anchors = anchors_t[anchor_idx]  # (F, 4)
    fg_pred_deltas = cat(list(pred_anchor_deltas), dim=1)[image_idx, anchor_idx]  # (F, 4)
    fg_gt_boxes = torch.stack(list(gt_boxes))[image_idx, anchor_idx]  # (F, 4)
    if box_reg_loss_type == "smooth_l1":
        gt_anchor_deltas = box2box_transform.get_deltas(fg_anchors, fg_gt_boxes)
        return smooth_l1_loss(fg_pred_deltas, gt_anchor_deltas, beta=smooth_l1_beta, reduction="sum")
    pred_boxes = box2box_transform.apply_deltas(fg_pred_deltas, fg_anchors)
    loss_fn = {"giou": giou_loss, "diou": diou_loss, "ciou": ciou_loss}[box_reg_loss_type]
    return loss_fn(pred_boxes, fg_gt_boxes, reduction="sum")
