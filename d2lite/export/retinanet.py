"""Export adapter of :class:`d2lite.modeling.RetinaNet` (and detectors built on it)."""

from typing import List, Tuple

import torch
from torch import Tensor

from d2lite.modeling.meta_arch.retinanet import RetinaNet

from .adapter import DetectorExportAdapter, register_export_adapter
from .nms import batched_nms

__all__ = ["RetinaNetExportAdapter"]


@register_export_adapter(RetinaNet)
class RetinaNetExportAdapter(DetectorExportAdapter):
    """RetinaNet's inference as tensors: anchors of every level, sigmoid scores,
    per level the (anchor, class) pairs scoring > ``test_score_thresh`` and of those the
    ``test_topk_candidates`` best (:meth:`select_candidates`), box decoding (:class:`Box2BoxTransform`), class-aware NMS
    at ``test_nms_thresh`` and the ``max_detections_per_image`` best
    (``RetinaNet.inference_single_image``).

    Needs the same number of anchors at every location of every level (RetinaNetHead's
    ``num_anchors``)."""

    def __init__(self, model: RetinaNet):
        super().__init__(model)
        generator = model.anchor_generator
        num_anchors = set(generator.num_anchors)
        if len(num_anchors) != 1:
            raise ValueError(f"RetinaNetExportAdapter: levels have different anchor counts {generator.num_anchors}")
        if len(generator.strides) != self.num_levels:
            raise ValueError(
                f"RetinaNetExportAdapter: {len(generator.strides)} anchor strides for {self.num_levels} head features"
            )
        self.register_buffer("cell_anchors", torch.stack([a.detach().clone() for a in generator.cell_anchors]), False)
        self.strides: List[int] = [int(s) for s in generator.strides]
        self.anchor_offset = float(generator.offset)
        transform = model.box2box_transform
        self.box_weights: List[float] = [float(w) for w in transform.weights]
        self.scale_clamp = float(transform.scale_clamp)
        self.num_classes = int(model.num_classes)
        self.score_thresh = float(model.test_score_thresh)
        self.topk_candidates = int(model.test_topk_candidates)
        self.nms_thresh = float(model.test_nms_thresh)
        self.max_detections = int(model.max_detections_per_image)

    def anchors(self, level: int, grid_height: int, grid_width: int) -> Tensor:
        """(Hi * Wi * A, 4) anchors of one level (DefaultAnchorGenerator's grid)."""
        stride = self.strides[level]
        device = self.cell_anchors.device
        shifts_x = torch.arange(
            self.anchor_offset * stride, grid_width * stride, step=stride, dtype=torch.float32, device=device
        )
        shifts_y = torch.arange(
            self.anchor_offset * stride, grid_height * stride, step=stride, dtype=torch.float32, device=device
        )
        shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
        shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
        shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
        return (shifts.view(-1, 1, 4) + self.cell_anchors[level].view(1, -1, 4)).reshape(-1, 4)

    def apply_deltas(self, deltas: Tensor, boxes: Tensor) -> Tensor:
        """(R, 4) deltas on (R, 4) anchors -> (R, 4) boxes (Box2BoxTransform.apply_deltas)."""
        deltas = deltas.float()
        boxes = boxes.to(deltas.dtype)
        widths = boxes[:, 2] - boxes[:, 0]
        heights = boxes[:, 3] - boxes[:, 1]
        ctr_x = boxes[:, 0] + 0.5 * widths
        ctr_y = boxes[:, 1] + 0.5 * heights
        wx, wy, ww, wh = self.box_weights[0], self.box_weights[1], self.box_weights[2], self.box_weights[3]
        dx = deltas[:, 0::4] / wx
        dy = deltas[:, 1::4] / wy
        dw = torch.clamp(deltas[:, 2::4] / ww, max=self.scale_clamp)
        dh = torch.clamp(deltas[:, 3::4] / wh, max=self.scale_clamp)
        pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
        pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
        pred_w = torch.exp(dw) * widths[:, None]
        pred_h = torch.exp(dh) * heights[:, None]
        x1 = pred_ctr_x - 0.5 * pred_w
        y1 = pred_ctr_y - 0.5 * pred_h
        x2 = pred_ctr_x + 0.5 * pred_w
        y2 = pred_ctr_y + 0.5 * pred_h
        return torch.stack((x1, y1, x2, y2), dim=-1).reshape(deltas.shape)

    def select_candidates(self, scores: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """The (anchor, class) pairs of one level scoring > ``score_thresh``, at most the
        ``topk_candidates`` best, by decreasing score: (scores, anchor indices, class indices).

        As ``DenseDetector._decode_per_level_predictions``: when more pairs than k pass the
        threshold it takes the top k of all pairs, else the kept pairs sorted by top-k. Both
        ways are written out and each gets all pairs or none, so the export takes the eager
        model's way (and its order among equal scores) without branching on the count.
        """
        k = self.topk_candidates
        num_classes = scores.shape[1]
        keep = scores > self.score_thresh
        take_all = keep.sum() > k  # scalar bool tensor
        flat = scores.flatten()
        flat = flat[take_all.expand(flat.shape)]  # all pairs, or none
        top_scores, flat_idxs = flat.topk(min(k, flat.size(0)))
        kept = keep & torch.logical_not(take_all)  # the kept pairs, or none
        kept_scores = scores[kept]
        kept_idxs = torch.nonzero(kept)  # (K', 2): (anchor, class)
        kept_scores, order = kept_scores.topk(min(k, kept_idxs.size(0)))
        anchor_idxs, class_idxs = kept_idxs[order].unbind(dim=1)
        return (
            torch.cat([top_scores, kept_scores]),
            torch.cat([torch.div(flat_idxs, num_classes, rounding_mode="floor"), anchor_idxs]),
            torch.cat([flat_idxs % num_classes, class_idxs]),
        )

    def decode(self, outputs: List[Tensor], height: int, width: int) -> Tuple[Tensor, Tensor, Tensor]:
        boxes_all: List[Tensor] = []
        scores_all: List[Tensor] = []
        classes_all: List[Tensor] = []
        for level in range(self.num_levels):
            logits = outputs[level]  # (1, A*K, Hi, Wi)
            deltas = outputs[self.num_levels + level]  # (1, A*4, Hi, Wi)
            grid_h, grid_w = logits.shape[2], logits.shape[3]
            # (1, A*K, Hi, Wi) -> (Hi*Wi*A, K), as permute_to_N_HWA_K
            scores = logits.view(1, -1, self.num_classes, grid_h, grid_w).permute(0, 3, 4, 1, 2)
            scores = scores.reshape(1, -1, self.num_classes)[0].sigmoid()
            deltas = deltas.view(1, -1, 4, grid_h, grid_w).permute(0, 3, 4, 1, 2).reshape(1, -1, 4)[0]
            candidate_scores, anchor_idxs, class_idxs = self.select_candidates(scores)
            anchors = self.anchors(level, grid_h, grid_w)
            boxes_all.append(self.apply_deltas(deltas[anchor_idxs], anchors[anchor_idxs]))
            scores_all.append(candidate_scores)
            classes_all.append(class_idxs)
        boxes = torch.cat(boxes_all)
        scores = torch.cat(scores_all)
        classes = torch.cat(classes_all)
        keep = batched_nms(boxes, scores, classes, self.nms_thresh, self.num_classes)[: self.max_detections]
        return boxes[keep], scores[keep], classes[keep]
