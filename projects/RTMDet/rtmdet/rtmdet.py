"""The RTMDet detector: a d2lite DenseDetector with mmdetection 3.x's RTMDet training
targets, loss normalisation and inference."""

import logging
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import Tensor

from d2lite.layers import batched_nms
from d2lite.modeling.backbone import Backbone
from d2lite.modeling.meta_arch.dense_detector import DenseDetector
from d2lite.structures import Boxes, ImageList, Instances
from d2lite.utils.events import get_event_storage, has_event_storage

from .assigner import DynamicSoftLabelAssigner
from .head import RTMDetSepBNHead
from .losses import GIoULoss, QualityFocalLoss
from .prior_generator import DistancePointBBoxCoder, MlvlPointGenerator, distance2bbox

__all__ = ["RTMDet", "reduce_mean"]

logger = logging.getLogger(__name__)


def reduce_mean(tensor: Tensor) -> Tensor:
    """Mean of ``tensor`` over all processes (a copy of it when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor.clone()
    tensor = tensor.clone()
    dist.all_reduce(tensor.div_(dist.get_world_size()), op=dist.ReduceOp.SUM)
    return tensor


class RTMDet(DenseDetector):
    """RTMDet (mmdetection 3.x) on d2lite.

    Training: priors are the points of :class:`MlvlPointGenerator` (offset 0);
    predicted distances are decoded to boxes; :class:`DynamicSoftLabelAssigner`
    matches the (detached) predictions of each image to its ground truths among
    the priors that lie on the image (not on batch padding). Classification uses
    :class:`QualityFocalLoss` with the positive's IoU as soft target, regression
    :class:`GIoULoss` weighted by that IoU. Both losses are divided by the sum of
    positive IoUs over the batch, averaged over processes and clamped to >= 1.

    Inference per image and level: sigmoid scores > ``test_score_thresh``, the best
    ``test_topk_candidates`` (prior, class) pairs, decode clamped to the image,
    drop empty boxes, class-aware NMS at ``test_nms_thresh``, keep
    ``max_detections_per_image``; results are rescaled to the input "height"/"width".

    Args:
        backbone: a :class:`Backbone` (e.g. CSPNeXtPAFPN over CSPNeXt).
        head: :class:`RTMDetSepBNHead`; ``head.strides`` must equal the strides of
            ``head_in_features``.
        head_in_features: backbone outputs fed to the head, finest first.
        num_classes: number of foreground classes.
        pixel_mean, pixel_std: normalisation in input channel order (BGR for mmdetection's
            RTMDet: [103.53, 116.28, 123.675] / [57.375, 57.12, 58.395], no channel swap).
        input_format: "BGR" or "RGB". Defaults to "BGR".
        assigner: defaults to DynamicSoftLabelAssigner(3.0, 13, 3.0).
        loss_cls: defaults to QualityFocalLoss(beta=2.0, loss_weight=1.0).
        loss_bbox: defaults to GIoULoss(loss_weight=2.0).
        pad_value: value of batch padding in raw pixel units, applied before
            normalisation (mmdetection pads with 114). Defaults to 114.0.
        fixed_input_size: if given as (h, w), every batch is padded to exactly this
            size (mmdetection's ``Pad(size=(640, 640))``); larger images are an error.
            Defaults to None (pad to the backbone's size_divisibility).
        test_score_thresh: Defaults to 0.001.
        test_topk_candidates: per level, before NMS (mmdetection's nms_pre). Defaults to 30000.
        test_nms_thresh: Defaults to 0.65.
        max_detections_per_image: Defaults to 300.
        vis_period: if > 0, every ``vis_period`` training iterations put an image of the
            ground truth and the top predictions of the first input into the event
            storage (TensorBoard). Defaults to 0.
    """

    def __init__(
        self,
        *,
        backbone: Backbone,
        head: RTMDetSepBNHead,
        head_in_features: Sequence[str],
        num_classes: int,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        input_format: str = "BGR",
        assigner: Optional[DynamicSoftLabelAssigner] = None,
        loss_cls: Optional[QualityFocalLoss] = None,
        loss_bbox: Optional[GIoULoss] = None,
        pad_value: float = 114.0,
        fixed_input_size: Optional[Tuple[int, int]] = None,
        test_score_thresh: float = 0.001,
        test_topk_candidates: int = 30000,
        test_nms_thresh: float = 0.65,
        max_detections_per_image: int = 300,
        vis_period: int = 0,
    ) -> None:
        super().__init__(
            backbone,
            head,
            list(head_in_features),
            pixel_mean=pixel_mean,
            pixel_std=pixel_std,
            input_format=input_format,
            vis_period=vis_period,
        )
        shapes = backbone.output_shape()
        strides = [shapes[f].stride for f in self.head_in_features]
        if list(head.strides) != strides:
            raise ValueError(
                f"RTMDet: head strides {head.strides} differ from the strides {strides} of "
                f"head_in_features {self.head_in_features}."
            )
        if head.num_classes != num_classes:
            raise ValueError(f"RTMDet: num_classes={num_classes} but head.num_classes={head.num_classes}.")
        self.num_classes = num_classes
        self.prior_generator = MlvlPointGenerator(strides, offset=0.0)
        self.bbox_coder = DistancePointBBoxCoder()
        self.assigner = assigner if assigner is not None else DynamicSoftLabelAssigner()
        self.loss_cls = loss_cls if loss_cls is not None else QualityFocalLoss(beta=2.0, loss_weight=1.0)
        self.loss_bbox = loss_bbox if loss_bbox is not None else GIoULoss(loss_weight=2.0)
        self.pad_value = pad_value
        self.fixed_input_size = tuple(fixed_input_size) if fixed_input_size is not None else None
        self.test_score_thresh = test_score_thresh
        self.test_topk_candidates = test_topk_candidates
        self.test_nms_thresh = test_nms_thresh
        self.max_detections_per_image = max_detections_per_image

    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        """Pad raw images with ``pad_value`` to a common size divisible by the backbone's
        ``size_divisibility`` (or to ``fixed_input_size``), then normalise (so padding
        equals mmdetection's 114 pixels). On the CPU the batch is channels-last."""
        images = [self.input_image(i, x).float() for i, x in enumerate(batched_inputs)]
        raw = ImageList.from_tensors(
            images,
            self.backbone.size_divisibility,
            pad_value=self.pad_value,
            padding_constraints=self.backbone.padding_constraints,
        )
        tensor = raw.tensor
        if self.fixed_input_size is not None:
            fh, fw = self.fixed_input_size
            h, w = tensor.shape[-2:]
            if h > fh or w > fw:
                raise ValueError(
                    f"RTMDet: a batch of size {h}x{w} does not fit fixed_input_size {fh}x{fw}; "
                    "resize the images in the data mapper (e.g. ResizeShortestEdge(640, max_size=640))."
                )
            tensor = torch.nn.functional.pad(tensor, (0, fw - w, 0, fh - h), value=self.pad_value)
        tensor = (tensor - self.pixel_mean) / self.pixel_std
        if tensor.device.type == "cpu":
            # Channels-last input makes every conv (and the BN, SiLU, pooling, cat around
            # them) run channels-last: ~15-20% faster training on a CPU (benchmarks/compare.md).
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        return ImageList(tensor, raw.image_sizes)

    def _priors(self, cls_scores: List[Tensor]) -> Tuple[List[Tuple[int, int]], Tensor]:
        sizes = [tuple(x.shape[-2:]) for x in cls_scores]
        priors = self.prior_generator.grid_priors(
            sizes, dtype=cls_scores[0].dtype, device=cls_scores[0].device, with_stride=True
        )
        return sizes, torch.cat(priors)

    def forward_training(
        self,
        images: ImageList,
        features: List[Tensor],
        predictions: Tuple[List[Tensor], List[Tensor]],
        gt_instances: List[Instances],
    ) -> Dict[str, Tensor]:
        """Returns {"loss_cls", "loss_bbox"}; see the class docstring for the normalisation."""
        cls_scores, bbox_preds = predictions
        sizes, priors = self._priors(cls_scores)  # priors (P, 4)
        flat_cls, flat_dist = self.transpose_dense_predictions([cls_scores, bbox_preds], [self.num_classes, 4])
        flat_cls = torch.cat(flat_cls, dim=1)  # (N, P, C)
        flat_boxes = distance2bbox(priors, torch.cat(flat_dist, dim=1))  # (N, P, 4)
        labels, label_weights, bbox_targets, assign_metrics = self.get_targets(
            flat_cls.detach(), flat_boxes.detach(), priors, sizes, images.image_sizes, gt_instances
        )
        num_pos = int((labels < self.num_classes).sum())
        if has_event_storage():
            get_event_storage().put_scalar("num_pos_priors", num_pos / len(gt_instances))

        labels, label_weights = labels.reshape(-1), label_weights.reshape(-1)
        bbox_targets, assign_metrics = bbox_targets.reshape(-1, 4), assign_metrics.reshape(-1)
        loss_cls = self.loss_cls(
            flat_cls.reshape(-1, self.num_classes), (labels, assign_metrics), label_weights, avg_factor=1.0
        )
        pos = (labels >= 0) & (labels < self.num_classes)
        flat_boxes = flat_boxes.reshape(-1, 4)
        if pos.any():
            pos_weight = assign_metrics[pos]
            loss_bbox = self.loss_bbox(flat_boxes[pos], bbox_targets[pos], weight=pos_weight, avg_factor=1.0)
            bbox_avg = pos_weight.sum()
        else:
            loss_bbox = flat_boxes.sum() * 0
            bbox_avg = assign_metrics.new_tensor(0.0)
        self.visualize_training_if_due(images, features, (cls_scores, bbox_preds))
        cls_avg_factor = reduce_mean(assign_metrics.sum()).clamp_(min=1).item()
        bbox_avg_factor = reduce_mean(bbox_avg).clamp_(min=1).item()
        return {"loss_cls": loss_cls / cls_avg_factor, "loss_bbox": loss_bbox / bbox_avg_factor}

    @torch.no_grad()
    def get_targets(
        self,
        cls_scores: Tensor,
        pred_boxes: Tensor,
        priors: Tensor,
        featmap_sizes: List[Tuple[int, int]],
        image_sizes: List[Tuple[int, int]],
        gt_instances: List[Instances],
    ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Assign every image and build per-prior targets.

        Args:
            cls_scores: (N, P, C) logits; pred_boxes: (N, P, 4) decoded boxes; priors: (P, 4).
            image_sizes: unpadded (h, w) per image; priors beyond them are ignored
                (label weight 0), as mmdetection's valid flags.

        Returns:
            labels (N, P) int64 with C for background; label_weights (N, P);
            bbox_targets (N, P, 4) XYXY; assign_metrics (N, P) = IoU of each positive.
        """
        n, p, _ = cls_scores.shape
        labels = torch.full((n, p), self.num_classes, dtype=torch.long, device=priors.device)
        label_weights = priors.new_zeros((n, p))
        bbox_targets = priors.new_zeros((n, p, 4))
        assign_metrics = priors.new_zeros((n, p))
        for i, (gt, image_size) in enumerate(zip(gt_instances, image_sizes)):
            valid = torch.cat(self.prior_generator.valid_flags(featmap_sizes, image_size, device=priors.device))
            gt_boxes = gt.gt_boxes.tensor.to(priors.dtype)
            gt_labels = gt.gt_classes
            result = self.assigner.assign(
                cls_scores[i][valid], pred_boxes[i][valid], priors[valid], gt_boxes, gt_labels
            )
            idx = valid.nonzero(as_tuple=True)[0]
            pos = result.gt_inds > 0
            pos_idx = idx[pos]
            gt_idx = result.gt_inds[pos] - 1
            labels[i, pos_idx] = gt_labels[gt_idx].long()
            bbox_targets[i, pos_idx] = gt_boxes[gt_idx]
            assign_metrics[i, pos_idx] = result.max_overlaps[pos]
            label_weights[i, idx] = 1.0
        return labels, label_weights, bbox_targets, assign_metrics

    @torch.no_grad()
    def forward_inference(
        self, images: ImageList, features: List[Tensor], predictions: Tuple[List[Tensor], List[Tensor]]
    ) -> List[Instances]:
        """Per-image Instances(pred_boxes, scores, pred_classes) in padded-input pixels."""
        cls_scores, bbox_preds = predictions
        sizes = [tuple(x.shape[-2:]) for x in cls_scores]
        level_priors = self.prior_generator.grid_priors(
            sizes, dtype=cls_scores[0].dtype, device=cls_scores[0].device, with_stride=True
        )
        flat_cls, flat_dist = self.transpose_dense_predictions([cls_scores, bbox_preds], [self.num_classes, 4])
        results = []
        for img_idx, image_size in enumerate(images.image_sizes):
            boxes_all, scores_all, classes_all = [], [], []
            for priors, cls_l, dist_l in zip(level_priors, flat_cls, flat_dist):
                scores = cls_l[img_idx].sigmoid()  # (HW, C)
                keep = scores > self.test_score_thresh
                scores = scores[keep]
                idxs = keep.nonzero()  # (K, 2): (prior, class)
                num_topk = min(self.test_topk_candidates, idxs.size(0))
                # the best num_topk, in decreasing order (a partial sort when fewer are kept)
                if num_topk < scores.numel():
                    scores, order = scores.topk(num_topk)
                else:
                    scores, order = scores.sort(descending=True)
                prior_idx, class_idx = idxs[order].unbind(dim=1)
                boxes = self.bbox_coder.decode(priors[prior_idx], dist_l[img_idx][prior_idx], max_shape=image_size)
                boxes_all.append(boxes)
                scores_all.append(scores)
                classes_all.append(class_idx)
            boxes = torch.cat(boxes_all)
            scores = torch.cat(scores_all)
            classes = torch.cat(classes_all)
            nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            boxes, scores, classes = boxes[nonempty], scores[nonempty], classes[nonempty]
            keep = batched_nms(boxes, scores, classes, self.test_nms_thresh)[: self.max_detections_per_image]
            results.append(
                Instances(image_size, pred_boxes=Boxes(boxes[keep]), scores=scores[keep], pred_classes=classes[keep])
            )
        return results
