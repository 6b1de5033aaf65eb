"""DynamicSoftLabelAssigner of RTMDet, vectorised and memory-bounded.

Same assignment as mmdetection 3.x's ``DynamicSoftLabelAssigner`` (up to
floating-point rounding of the cost), but:

* dynamic-k matching has no Python loop over ground truths: one ``topk`` over the
  cost with ``k = max(dynamic_ks)`` and a rank mask;
* the classification cost is built from each gt's *own* class column plus a
  per-prior sum over all classes, so the working memory is
  O(valid_priors x gts + valid_priors x classes), not
  O(valid_priors x gts x classes) (the cause of mmdetection issue #9616).

Cost of prior i for gt j (valid priors = prior centres strictly inside any gt)::

    cls  = sum_c BCE(x_ic, y_ijc) * |y_ijc - sigmoid(x_ic)|^2,  y_ijc = IoU_ij [c == label_j]
    iou  = -log(IoU_ij + 1e-7) * iou_weight
    ctr  = 10 ** (||p_i - centre_j|| / stride_i - soft_center_radius)
    cost = cls + iou + ctr
"""

from dataclasses import dataclass
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["DynamicSoftLabelAssigner", "AssignResult", "bbox_overlaps"]

INF = 100000000
EPS = 1.0e-7


@dataclass
class AssignResult:
    """Result of assigning N priors to G ground truths.

    Attributes:
        num_gts: G.
        gt_inds: (N,) int64; 0 = background, j + 1 = assigned to gt j.
        max_overlaps: (N,) float; IoU of the prediction with its assigned gt for
            positives, -INF for all other priors; all 0 when no gt, no prior or no prior inside a gt.
        labels: (N,) int64 class of the assigned gt, -1 for background.
    """

    num_gts: int
    gt_inds: Tensor
    max_overlaps: Tensor
    labels: Tensor


def bbox_overlaps(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-6) -> Tensor:
    """Pairwise IoU of boxes1 (M, 4) and boxes2 (K, 4), XYXY -> (M, K); union clamped to >= eps."""
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    lt = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    overlap = wh[..., 0] * wh[..., 1]
    union = (area1[:, None] + area2[None, :] - overlap).clamp(min=eps)
    return overlap / union


class DynamicSoftLabelAssigner:
    """Dynamic soft-label assignment (SimOTA-like) of RTMDet.

    Args:
        soft_center_radius: radius of the soft centre prior, in strides. Defaults to 3.0.
        topk: the IoUs of the top-k predictions of a gt are summed to get its
            dynamic k. Defaults to 13.
        iou_weight: scale of the IoU cost. Defaults to 3.0.
    """

    def __init__(self, soft_center_radius: float = 3.0, topk: int = 13, iou_weight: float = 3.0) -> None:
        if topk < 1:
            raise ValueError(f"DynamicSoftLabelAssigner: topk must be >= 1, got {topk}.")
        self.soft_center_radius = soft_center_radius
        self.topk = topk
        self.iou_weight = iou_weight

    @torch.no_grad()
    def assign(
        self,
        pred_scores: Tensor,
        pred_bboxes: Tensor,
        priors: Tensor,
        gt_bboxes: Tensor,
        gt_labels: Tensor,
    ) -> AssignResult:
        """Assign ground truths to priors of one image.

        Args:
            pred_scores: (N, C) classification logits (not sigmoided).
            pred_bboxes: (N, 4) decoded predicted boxes, XYXY pixels.
            priors: (N, 4) points (x, y, stride_w, stride_h).
            gt_bboxes: (G, 4) XYXY pixels.
            gt_labels: (G,) int class indices in [0, C).

        Returns:
            :class:`AssignResult`.
        """
        num_gt = gt_bboxes.size(0)
        num_bboxes = pred_bboxes.size(0)
        if pred_scores.shape[0] != num_bboxes or priors.shape[0] != num_bboxes:
            raise ValueError(
                "DynamicSoftLabelAssigner.assign: pred_scores, pred_bboxes and priors must have the same "
                f"length, got {pred_scores.shape[0]}, {num_bboxes}, {priors.shape[0]}."
            )
        if gt_labels.shape[0] != num_gt:
            raise ValueError(f"gt_bboxes has {num_gt} rows but gt_labels has {gt_labels.shape[0]}.")
        if num_gt > 0 and (gt_labels.min() < 0 or gt_labels.max() >= pred_scores.shape[1]):
            raise ValueError(
                f"gt_labels must be in [0, {pred_scores.shape[1]}), got range "
                f"[{int(gt_labels.min())}, {int(gt_labels.max())}]."
            )
        assigned_gt_inds = pred_bboxes.new_zeros((num_bboxes,), dtype=torch.long)
        # All pairwise tensors are laid out (G, priors): per-gt rows are contiguous.
        gx1, gy1, gx2, gy2 = gt_bboxes.unbind(1)  # (G,)
        px, py = priors[:, 0], priors[:, 1]
        # prior centre strictly inside the gt box (all four distances > 0)
        is_in_gts = (
            (px[None] > gx1[:, None])
            & (py[None] > gy1[:, None])
            & (gx2[:, None] > px[None])
            & (gy2[:, None] > py[None])
        )  # (G, N)
        valid_mask = is_in_gts.any(dim=0)
        num_valid = int(valid_mask.sum()) if num_gt > 0 else 0
        if num_gt == 0 or num_bboxes == 0 or num_valid == 0:
            return AssignResult(
                num_gt,
                assigned_gt_inds,
                pred_bboxes.new_zeros((num_bboxes,)),
                pred_bboxes.new_full((num_bboxes,), -1, dtype=torch.long),
            )

        valid_idx = valid_mask.nonzero(as_tuple=True)[0]
        valid_bboxes = pred_bboxes[valid_idx]  # (V, 4)
        valid_priors = priors[valid_idx]  # (V, 4)

        cx, cy = (gx1 + gx2) / 2.0, (gy1 + gy2) / 2.0
        dx = valid_priors[None, :, 0] - cx[:, None]
        dy = valid_priors[None, :, 1] - cy[:, None]
        distance = (dx * dx + dy * dy).sqrt() / valid_priors[None, :, 2]  # (G, V), in strides
        soft_center_prior = torch.pow(10, distance - self.soft_center_radius)

        pairwise_ious = _pairwise_iou_gt_major(gt_bboxes, valid_bboxes)  # (G, V)
        scores_t = pred_scores[valid_idx].t().contiguous()  # (C, V)
        cost = self._cls_cost(scores_t, pairwise_ious, gt_labels.long())  # (G, V)
        cost += torch.log(pairwise_ious + EPS).mul_(-self.iou_weight)  # IoU cost
        cost += soft_center_prior

        matched_pred_ious, matched_gt_inds, fg_mask = self.dynamic_k_matching(cost, pairwise_ious)

        pos_idx = valid_idx[fg_mask]
        assigned_gt_inds[pos_idx] = matched_gt_inds + 1
        assigned_labels = assigned_gt_inds.new_full((num_bboxes,), -1)
        assigned_labels[pos_idx] = gt_labels[matched_gt_inds].long()
        max_overlaps = pred_bboxes.new_full((num_bboxes,), -INF, dtype=torch.float32)
        max_overlaps[pos_idx] = matched_pred_ious.float()
        return AssignResult(num_gt, assigned_gt_inds, max_overlaps, assigned_labels)

    @staticmethod
    def _cls_cost(scores_t: Tensor, ious: Tensor, gt_labels: Tensor) -> Tensor:
        """Soft classification cost (G, V) from logits (C, V), IoUs (G, V), labels (G,).

        For a class c != label_j the soft label is 0 and the term is
        ``BCE(x, 0) * sigmoid(x)^2``, independent of j: summed once per prior,
        then the own-class term is swapped in per (gt, prior).
        """
        neg_terms = F.binary_cross_entropy_with_logits(scores_t, torch.zeros_like(scores_t), reduction="none")
        neg_terms = neg_terms * scores_t.sigmoid().pow(2)  # (C, V)
        neg_sum = neg_terms.sum(dim=0, keepdim=True)  # (1, V)
        own_logit = scores_t[gt_labels]  # (G, V)
        own_pos = F.binary_cross_entropy_with_logits(own_logit, ious, reduction="none")
        diff = ious - own_logit.sigmoid()
        own_pos *= diff.mul_(diff)  # |q - p|^2
        cost = neg_terms[gt_labels].neg_().add_(neg_sum)
        return cost.add_(own_pos)

    def dynamic_k_matching(self, cost: Tensor, pairwise_ious: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Pick the ``dynamic_k`` cheapest priors of each gt, resolve conflicts by min cost.

        Args:
            cost: (G, V) matching cost.
            pairwise_ious: (G, V) IoUs.

        Returns:
            (matched IoUs (P,), matched gt indices (P,), foreground mask (V,)) where P = mask.sum().
        """
        num_gt, num_valid = cost.shape
        candidate_topk = min(self.topk, num_valid)
        topk_ious, _ = torch.topk(pairwise_ious, candidate_topk, dim=1)
        dynamic_ks = torch.clamp(topk_ious.sum(1).int(), min=1)  # (G,)
        max_k = int(dynamic_ks.max())
        _, pos_cols = torch.topk(cost, max_k, dim=1, largest=False)  # (G, max_k)
        take = torch.arange(max_k, device=cost.device)[None, :] < dynamic_ks[:, None]  # (G, max_k)
        rows = torch.arange(num_gt, device=cost.device)[:, None].expand(num_gt, max_k)
        matching = torch.zeros_like(cost, dtype=torch.bool)
        matching[rows[take], pos_cols[take]] = True

        multiple = matching.sum(0) > 1  # priors picked by several gts
        if multiple.any():
            cols = multiple.nonzero(as_tuple=True)[0]
            cost_argmin = cost[:, cols].argmin(dim=0)
            matching[:, cols] = False
            matching[cost_argmin, cols] = True
        fg_mask = matching.any(0)
        matched_gt_inds = matching[:, fg_mask].int().argmax(0)
        matched_pred_ious = pairwise_ious[:, fg_mask].gather(0, matched_gt_inds[None]).squeeze(0)
        return matched_pred_ious, matched_gt_inds, fg_mask


def _pairwise_iou_gt_major(gt_bboxes: Tensor, boxes: Tensor, eps: float = 1e-6) -> Tensor:
    """IoU (G, V) of gts (G, 4) and boxes (V, 4), same arithmetic as :func:`bbox_overlaps`."""
    area_b = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    area_g = (gt_bboxes[:, 2] - gt_bboxes[:, 0]) * (gt_bboxes[:, 3] - gt_bboxes[:, 1])
    iw = (
        torch.min(boxes[None, :, 2], gt_bboxes[:, None, 2]) - torch.max(boxes[None, :, 0], gt_bboxes[:, None, 0])
    ).clamp_(min=0)
    ih = (
        torch.min(boxes[None, :, 3], gt_bboxes[:, None, 3]) - torch.max(boxes[None, :, 1], gt_bboxes[:, None, 1])
    ).clamp_(min=0)
    overlap = iw * ih
    union = (area_b[None, :] + area_g[:, None] - overlap).clamp_(min=eps)
    return overlap / union
