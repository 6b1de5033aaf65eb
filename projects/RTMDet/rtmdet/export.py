"""Export adapter of :class:`rtmdet.RTMDet` for ``tools/deploy/export_model.py``.

Registered with d2lite's extension point (:func:`d2lite.export.register_export_adapter`)
when ``rtmdet`` is imported, which building an RTMDet config does. It repeats
``RTMDet.preprocess_image`` and ``RTMDet.forward_inference`` with tensors only; the core
adapter supplies the network, the rescaling to the original image and the export formats.
"""

from typing import List, Tuple

import torch
from torch import Tensor

from d2lite.export import DetectorExportAdapter, batched_nms, register_export_adapter

from .rtmdet import RTMDet

__all__ = ["RTMDetExportAdapter"]


@register_export_adapter(RTMDet)
class RTMDetExportAdapter(DetectorExportAdapter):
    """RTMDet's inference as tensors: pad the raw image with ``pad_value`` (to the
    backbone's divisibility, then to ``fixed_input_size`` if set), normalise (channels-last
    on the CPU); per level sigmoid scores > ``test_score_thresh``, the
    ``test_topk_candidates`` best (prior, class) pairs (:meth:`best_first`), distances decoded at the point priors and clamped to the image; drop empty
    boxes; class-aware NMS at ``test_nms_thresh``; keep ``max_detections_per_image``.

    With ``fixed_input_size`` (h, w) the accepted image size is at most min(h, w) rounded
    down to the backbone's divisibility (640 for the COCO configs)."""

    def __init__(self, model: RTMDet):
        super().__init__(model)
        self.pad_value = float(model.pad_value)
        fixed = model.fixed_input_size
        self.fixed_height = int(fixed[0]) if fixed is not None else 0
        self.fixed_width = int(fixed[1]) if fixed is not None else 0
        strides = model.prior_generator.strides
        if len(strides) != self.num_levels:
            raise ValueError(f"RTMDetExportAdapter: {len(strides)} prior strides for {self.num_levels} head features")
        self.stride_w: List[int] = [int(s[0]) for s in strides]
        self.stride_h: List[int] = [int(s[1]) for s in strides]
        self.prior_offset = float(model.prior_generator.offset)
        self.clip_border = bool(model.bbox_coder.clip_border)
        self.num_classes = int(model.num_classes)
        self.score_thresh = float(model.test_score_thresh)
        self.topk_candidates = int(model.test_topk_candidates)
        self.nms_thresh = float(model.test_nms_thresh)
        self.max_detections = int(model.max_detections_per_image)

    def largest_size(self) -> int:
        if self.fixed_height > 0:
            largest = min(self.fixed_height, self.fixed_width)
            d = self.size_divisibility
            return largest // d * d if d > 1 else largest
        return super().largest_size()

    def smallest_size(self) -> int:
        if self.fixed_height > 0:  # the network input has one size: no small-map limit
            return 2
        return super().smallest_size()

    def preprocess(self, image: Tensor) -> Tensor:
        height, width = image.shape[1], image.shape[2]
        padded_h, padded_w = self.padded_size(height, width)
        x = torch.nn.functional.pad(image.float(), [0, padded_w - width, 0, padded_h - height], value=self.pad_value)
        x = x.unsqueeze(0)
        if self.fixed_height > 0:
            x = torch.nn.functional.pad(
                x, [0, self.fixed_width - padded_w, 0, self.fixed_height - padded_h], value=self.pad_value
            )
        x = (x - self.pixel_mean) / self.pixel_std
        if x.device.type == "cpu":  # RTMDet feeds the network channels-last on the CPU
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def priors(self, level: int, grid_height: int, grid_width: int, device: torch.device) -> Tensor:
        """(Hi * Wi, 4) points (x, y, stride_w, stride_h) of one level (MlvlPointGenerator)."""
        stride_w, stride_h = self.stride_w[level], self.stride_h[level]
        shift_x = ((torch.arange(0, grid_width, device=device) + self.prior_offset) * stride_w).to(torch.float32)
        shift_y = ((torch.arange(0, grid_height, device=device) + self.prior_offset) * stride_h).to(torch.float32)
        yy, xx = torch.meshgrid(shift_y, shift_x, indexing="ij")
        xx, yy = xx.reshape(-1), yy.reshape(-1)
        sw = xx.new_full((xx.shape[0],), stride_w)
        sh = xx.new_full((yy.shape[0],), stride_h)
        return torch.stack([xx, yy, sw, sh], dim=-1)

    def distance2bbox(self, points: Tensor, distance: Tensor, height: int, width: int) -> Tensor:
        """Boxes from (left, top, right, bottom) distances at ``points``, clamped to the
        ``height`` x ``width`` image (DistancePointBBoxCoder.decode)."""
        x1 = points[:, 0] - distance[:, 0]
        y1 = points[:, 1] - distance[:, 1]
        x2 = points[:, 0] + distance[:, 2]
        y2 = points[:, 1] + distance[:, 3]
        boxes = torch.stack([x1, y1, x2, y2], -1)
        if self.clip_border:
            w, h = torch.scalar_tensor(width), torch.scalar_tensor(height)
            upper = torch.stack([w, h, w, h]).to(boxes)
            boxes = torch.max(torch.min(boxes, upper), boxes.new_zeros(()))
        return boxes

    def best_first(self, scores: Tensor) -> Tuple[Tensor, Tensor]:
        """The ``topk_candidates`` best of a level's kept scores, in decreasing order, and
        their indices: as ``RTMDet.forward_inference``, top-k when more are kept, else a full
        sort; both are written out and each gets all scores or none (no branch on the count)."""
        k = self.topk_candidates
        more = torch.scalar_tensor(scores.shape[0]) > k
        many = scores[more.expand(scores.shape)]  # all scores, or none
        top_scores, top_order = many.topk(min(k, many.size(0)))
        few = scores[torch.logical_not(more).expand(scores.shape)]  # all scores, or none
        sorted_scores, sorted_order = few.sort(descending=True)
        return torch.cat([top_scores, sorted_scores]), torch.cat([top_order, sorted_order])

    def decode(self, outputs: List[Tensor], height: int, width: int) -> Tuple[Tensor, Tensor, Tensor]:
        boxes_all: List[Tensor] = []
        scores_all: List[Tensor] = []
        classes_all: List[Tensor] = []
        for level in range(self.num_levels):
            cls_score = outputs[level]  # (1, C, Hi, Wi)
            bbox_pred = outputs[self.num_levels + level]  # (1, 4, Hi, Wi) distances in pixels
            grid_h, grid_w = cls_score.shape[2], cls_score.shape[3]
            priors = self.priors(level, grid_h, grid_w, cls_score.device)
            # (1, C, Hi, Wi) -> (Hi*Wi, C), as transpose_dense_predictions
            cls_flat = cls_score.view(1, -1, self.num_classes, grid_h, grid_w).permute(0, 3, 4, 1, 2)
            cls_flat = cls_flat.reshape(1, -1, self.num_classes)[0]
            dist_flat = bbox_pred.view(1, -1, 4, grid_h, grid_w).permute(0, 3, 4, 1, 2).reshape(1, -1, 4)[0]
            scores = cls_flat.sigmoid()
            keep = scores > self.score_thresh
            scores = scores[keep]
            idxs = keep.nonzero()  # (K, 2): (prior, class)
            scores, order = self.best_first(scores)
            prior_idx, class_idx = idxs[order].unbind(dim=1)
            boxes_all.append(self.distance2bbox(priors[prior_idx], dist_flat[prior_idx], height, width))
            scores_all.append(scores)
            classes_all.append(class_idx)
        boxes = torch.cat(boxes_all)
        scores = torch.cat(scores_all)
        classes = torch.cat(classes_all)
        nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, scores, classes = boxes[nonempty], scores[nonempty], classes[nonempty]
        keep = batched_nms(boxes, scores, classes, self.nms_thresh, self.num_classes)[: self.max_detections]
        return boxes[keep], scores[keep], classes[keep]
