"""RetinaNet (Lin et al., "Focal Loss for Dense Object Detection"), as in detectron2."""

import logging
import math
from typing import Any, Dict, List, Sequence, Tuple

import torch
from torch import Tensor, nn

from d2lite.config import configurable
from d2lite.layers import ShapeSpec, batched_nms, get_norm, sigmoid_focal_loss_from_labels
from d2lite.structures import Boxes, ImageList, Instances, pairwise_iou
from d2lite.utils.events import get_event_storage

from ..anchor_generator import DefaultAnchorGenerator, build_anchor_generator
from ..backbone import Backbone, build_backbone
from ..box_regression import Box2BoxTransform, _dense_box_regression_loss
from ..matcher import Matcher
from .build import META_ARCH_REGISTRY
from .dense_detector import DenseDetector, permute_to_N_HWA_K  # noqa: F401 (detectron2 also exposes it here)

__all__ = ["RetinaNet", "RetinaNetHead"]

logger = logging.getLogger(__name__)


@META_ARCH_REGISTRY.register()
class RetinaNet(DenseDetector):
    """
    RetinaNet: backbone (e.g. ResNet-FPN P3-P7) + shared classification/box subnets on
    anchors, trained with the sigmoid focal loss and a box regression loss.

    Training returns ``{"loss_cls", "loss_box_reg"}``, both divided by an EMA of the
    number of foreground anchors (starts at 100, momentum 0.9), and writes
    "num_pos_anchors" (per image) to the event storage.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        head: nn.Module,
        head_in_features: List[str],
        anchor_generator: DefaultAnchorGenerator,
        box2box_transform: Box2BoxTransform,
        anchor_matcher: Matcher,
        num_classes: int,
        focal_loss_alpha: float = 0.25,
        focal_loss_gamma: float = 2.0,
        smooth_l1_beta: float = 0.0,
        box_reg_loss_type: str = "smooth_l1",
        test_score_thresh: float = 0.05,
        test_topk_candidates: int = 1000,
        test_nms_thresh: float = 0.5,
        max_detections_per_image: int = 100,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        vis_period: int = 0,
        input_format: str = "BGR",
    ):
        """
        Args:
            backbone: a :class:`Backbone` (e.g. FPN on ResNet).
            head: module mapping a list of per-level features to
                ``(pred_logits, pred_anchor_deltas)``, each a per-level list of
                (N, A*num_classes, Hi, Wi) / (N, A*4, Hi, Wi) tensors.
            head_in_features: backbone features used by the head, e.g. ["p3", ..., "p7"].
            anchor_generator: creates the anchors of each level.
            box2box_transform: anchor <-> box delta transform.
            anchor_matcher: labels anchors by IoU with ground truth (RetinaNet: thresholds
                [0.4, 0.5], labels [0, -1, 1], allow_low_quality_matches=True).
            num_classes: number of foreground classes; background is label num_classes.
            focal_loss_alpha, focal_loss_gamma: focal loss parameters. Defaults 0.25, 2.0.
            smooth_l1_beta: smooth L1 beta for box regression; 0 = L1. Defaults to 0.0.
            box_reg_loss_type: "smooth_l1" (default), "giou", "diou" or "ciou".
            test_score_thresh: inference keeps (anchor, class) scores > this. Defaults to 0.05.
            test_topk_candidates: candidates kept per level before NMS. Defaults to 1000.
            test_nms_thresh: per-class NMS IoU threshold. Defaults to 0.5.
            max_detections_per_image: detections kept per image after NMS. Defaults to 100.
            pixel_mean, pixel_std: normalization in the channel order of the input images.
            vis_period: if > 0, every ``vis_period`` iterations put an image of the ground
                truth and the predictions into the event storage. Defaults to 0.
            input_format: channel order of the input images, "BGR" or "RGB". The model
                normalizes channels in input order (pixel_mean must be given in that order);
                the format is used to show images in RGB for visualization.
        """
        super().__init__(
            backbone,
            head,
            head_in_features,
            pixel_mean=pixel_mean,
            pixel_std=pixel_std,
            input_format=input_format,
            vis_period=vis_period,
        )
        if len(self.backbone.output_shape()) != len(self.head_in_features):
            logger.warning("[RetinaNet] Backbone produces unused features.")
        if box_reg_loss_type not in ("smooth_l1", "giou", "diou", "ciou"):
            raise ValueError(
                f"RetinaNet: box_reg_loss_type must be 'smooth_l1', 'giou', 'diou' or 'ciou', got {box_reg_loss_type!r}"
            )

        self.anchor_generator = anchor_generator
        self.box2box_transform = box2box_transform
        self.anchor_matcher = anchor_matcher

        self.num_classes = num_classes
        # Loss parameters:
        self.focal_loss_alpha = focal_loss_alpha
        self.focal_loss_gamma = focal_loss_gamma
        self.smooth_l1_beta = smooth_l1_beta
        self.box_reg_loss_type = box_reg_loss_type
        # Inference parameters:
        self.test_score_thresh = test_score_thresh
        self.test_topk_candidates = test_topk_candidates
        self.test_nms_thresh = test_nms_thresh
        self.max_detections_per_image = max_detections_per_image

        # Detectron1 normalized the losses by the #foreground of the batch; with 1 image
        # per GPU that is noisy, so an EMA of #foreground is used. Any reasonable #fg that
        # is not too small works as the initial value.
        self.loss_normalizer = 100
        self.loss_normalizer_momentum = 0.9

    @classmethod
    def from_config(cls, cfg: Any) -> Dict[str, Any]:
        """Arguments from a detectron2-style config: the backbone from
        ``cfg.MODEL.BACKBONE.NAME``, the head and anchors on ``MODEL.RETINANET.IN_FEATURES``,
        the rest from ``MODEL.RETINANET``, ``MODEL.PIXEL_{MEAN,STD}``,
        ``TEST.DETECTIONS_PER_IMAGE``, ``VIS_PERIOD`` and ``INPUT.FORMAT``."""
        backbone = build_backbone(cfg)
        backbone_shape = backbone.output_shape()
        missing = [f for f in cfg.MODEL.RETINANET.IN_FEATURES if f not in backbone_shape]
        if missing:
            raise ValueError(
                f"MODEL.RETINANET.IN_FEATURES has {missing}, which the backbone ({cfg.MODEL.BACKBONE.NAME}) "
                f"does not produce; it outputs {list(backbone_shape)}"
            )
        feature_shapes = [backbone_shape[f] for f in cfg.MODEL.RETINANET.IN_FEATURES]
        r = cfg.MODEL.RETINANET
        return {
            "backbone": backbone,
            "head": RetinaNetHead(cfg, feature_shapes),
            "anchor_generator": build_anchor_generator(cfg, feature_shapes),
            "box2box_transform": Box2BoxTransform(weights=r.BBOX_REG_WEIGHTS),
            "anchor_matcher": Matcher(r.IOU_THRESHOLDS, r.IOU_LABELS, allow_low_quality_matches=True),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "num_classes": r.NUM_CLASSES,
            "head_in_features": r.IN_FEATURES,
            # Loss parameters:
            "focal_loss_alpha": r.FOCAL_LOSS_ALPHA,
            "focal_loss_gamma": r.FOCAL_LOSS_GAMMA,
            "smooth_l1_beta": r.SMOOTH_L1_LOSS_BETA,
            "box_reg_loss_type": r.BBOX_REG_LOSS_TYPE,
            # Inference parameters:
            "test_score_thresh": r.SCORE_THRESH_TEST,
            "test_topk_candidates": r.TOPK_CANDIDATES_TEST,
            "test_nms_thresh": r.NMS_THRESH_TEST,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            # Visualization:
            "vis_period": cfg.VIS_PERIOD,
            "input_format": cfg.INPUT.FORMAT,
        }

    def forward_training(
        self,
        images: ImageList,
        features: List[Tensor],
        predictions: List[List[Tensor]],
        gt_instances: List[Instances],
    ) -> Dict[str, Tensor]:
        # Transpose the Hi*Wi*A dimension to the middle:
        pred_logits, pred_anchor_deltas = self.transpose_dense_predictions(predictions, [self.num_classes, 4])
        anchors = self.anchor_generator(features)
        gt_labels, gt_boxes = self.label_anchors(anchors, gt_instances)
        losses = self.losses(anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes)

        self.visualize_training_if_due(images, features, predictions)
        return losses

    def losses(
        self,
        anchors: List[Boxes],
        pred_logits: List[Tensor],
        gt_labels: List[Tensor],
        pred_anchor_deltas: List[Tensor],
        gt_boxes: List[Tensor],
    ) -> Dict[str, Tensor]:
        """
        Args:
            anchors: #levels Boxes.
            pred_logits, pred_anchor_deltas: #levels tensors of shape (N, Hi*Wi*A, K or 4).
            gt_labels, gt_boxes: output of :meth:`label_anchors`, N tensors of shape (R,)
                and (R, 4), R = sum(Hi*Wi*A).

        Returns:
            {"loss_cls", "loss_box_reg"}: scalars, sums divided by the EMA of #foreground.
        """
        num_images = len(gt_labels)
        gt_labels = torch.stack(gt_labels)  # (N, R)

        valid_mask = gt_labels >= 0
        pos_mask = valid_mask & (gt_labels != self.num_classes)
        num_pos_anchors = pos_mask.sum().item()
        get_event_storage().put_scalar("num_pos_anchors", num_pos_anchors / num_images)
        normalizer = self._ema_update(
            "loss_normalizer", max(num_pos_anchors, 1), 100, momentum=self.loss_normalizer_momentum
        )

        # Focal loss against one-hot targets without a column for the background class
        # (label num_classes), ignored anchors (label -1) excluded; computed level by
        # level on the (N, Hi*Wi*A, K) predictions, without concatenating them.
        labels_per_level = gt_labels.split([x.shape[1] for x in pred_logits], dim=1)
        loss_cls = sum(
            sigmoid_focal_loss_from_labels(logits, labels, alpha=self.focal_loss_alpha, gamma=self.focal_loss_gamma)
            for logits, labels in zip(pred_logits, labels_per_level)
        )
        loss_box_reg = _dense_box_regression_loss(
            anchors,
            self.box2box_transform,
            pred_anchor_deltas,
            gt_boxes,
            pos_mask,
            box_reg_loss_type=self.box_reg_loss_type,
            smooth_l1_beta=self.smooth_l1_beta,
        )
        return {"loss_cls": loss_cls / normalizer, "loss_box_reg": loss_box_reg / normalizer}

    @torch.no_grad()
    def label_anchors(self, anchors: List[Boxes], gt_instances: List[Instances]) -> Tuple[List[Tensor], List[Tensor]]:
        """
        Match anchors to ground truth with ``anchor_matcher`` (IoU), per image.

        Ground-truth boxes with zero width or height are ignored (detectron2's data
        pipeline removes them before they reach the model; kept they would turn every
        anchor into a foreground with an infinite regression target).

        Args:
            anchors: #levels Boxes, the anchors of every level.
            gt_instances: N Instances with "gt_boxes" and "gt_classes".

        Returns:
            gt_labels: N tensors of shape (R,), values in {-1 (ignore), 0..K-1 (class),
                K (background)}, R = total number of anchors, K = num_classes.
            matched_gt_boxes: N tensors of shape (R, 4), the matched gt box of every
                anchor (undefined for non-foreground anchors).
        """
        anchors = Boxes.cat(anchors)  # (R, 4)

        gt_labels = []
        matched_gt_boxes = []
        for img_idx, gt_per_image in enumerate(gt_instances):
            gt_classes = gt_per_image.gt_classes
            # One device sync per image; min/max are only computed for the error message.
            if bool(((gt_classes < 0) | (gt_classes >= self.num_classes)).any()):
                raise ValueError(
                    f"RetinaNet: image {img_idx} has gt_classes in [{int(gt_classes.min())}, "
                    f"{int(gt_classes.max())}] but num_classes={self.num_classes}; classes must be "
                    "contiguous ids in [0, num_classes)"
                )
            gt_per_image = gt_per_image[gt_per_image.gt_boxes.nonempty()]
            match_quality_matrix = pairwise_iou(gt_per_image.gt_boxes, anchors)
            matched_idxs, anchor_labels = self.anchor_matcher(match_quality_matrix)
            del match_quality_matrix

            if len(gt_per_image) > 0:
                matched_gt_boxes_i = gt_per_image.gt_boxes.tensor[matched_idxs]
                gt_labels_i = gt_per_image.gt_classes[matched_idxs]
                gt_labels_i[anchor_labels == 0] = self.num_classes  # background
                gt_labels_i[anchor_labels == -1] = -1  # ignored
            else:
                matched_gt_boxes_i = torch.zeros_like(anchors.tensor)
                gt_labels_i = torch.zeros_like(matched_idxs) + self.num_classes

            gt_labels.append(gt_labels_i)
            matched_gt_boxes.append(matched_gt_boxes_i)
        return gt_labels, matched_gt_boxes

    def forward_inference(
        self, images: ImageList, features: List[Tensor], predictions: List[List[Tensor]]
    ) -> List[Instances]:
        """
        Returns:
            one Instances per image (pred_boxes in input-image pixels, scores, pred_classes),
            at most ``max_detections_per_image`` after per-class NMS.
        """
        pred_logits, pred_anchor_deltas = self.transpose_dense_predictions(predictions, [self.num_classes, 4])
        anchors = self.anchor_generator(features)

        results: List[Instances] = []
        for img_idx, image_size in enumerate(images.image_sizes):
            scores_per_image = [x[img_idx].sigmoid() for x in pred_logits]
            deltas_per_image = [x[img_idx] for x in pred_anchor_deltas]
            results.append(self.inference_single_image(anchors, scores_per_image, deltas_per_image, image_size))
        return results

    def inference_single_image(
        self,
        anchors: List[Boxes],
        box_cls: List[Tensor],
        box_delta: List[Tensor],
        image_size: Tuple[int, int],
    ) -> Instances:
        """
        Single-image inference: per-level score threshold and top-k, decoding, then
        per-class NMS over all levels.

        Args:
            anchors: #levels Boxes.
            box_cls: #levels (Hi*Wi*A, K) class probabilities.
            box_delta: #levels (Hi*Wi*A, 4) deltas.
            image_size: (H, W) of the input image.
        """
        pred = self._decode_multi_level_predictions(
            anchors, box_cls, box_delta, self.test_score_thresh, self.test_topk_candidates, image_size
        )
        keep = batched_nms(pred.pred_boxes.tensor, pred.scores, pred.pred_classes, self.test_nms_thresh)
        return pred[keep[: self.max_detections_per_image]]


class RetinaNetHead(nn.Module):
    """
    The RetinaNet head: two parallel subnets (classification and box regression) of
    3x3 conv + ReLU layers, shared across feature levels, followed by ``cls_score`` and
    ``bbox_pred`` 3x3 convs.
    """

    @configurable
    def __init__(
        self,
        *,
        input_shape: List[ShapeSpec],
        num_classes: int,
        num_anchors: int,
        conv_dims: List[int],
        norm="",
        prior_prob: float = 0.01,
    ):
        """
        Args:
            input_shape: shapes of the input features (all must have the same channels).
            num_classes: number of foreground classes.
            num_anchors: anchors per location (same at every level).
            conv_dims: output channels of each subnet conv.
            norm: normalization after each subnet conv (not the output convs), see
                :func:`d2lite.layers.get_norm`. Defaults to "" (none).
            prior_prob: initial foreground probability of every anchor; sets the bias of
                ``cls_score`` to ``-log((1 - prior_prob) / prior_prob)``. Defaults to 0.01.
        """
        super().__init__()
        self._num_features = len(input_shape)
        if len({s.channels for s in input_shape}) > 1:
            raise ValueError(
                f"RetinaNetHead: all input features must have the same channels, got "
                f"{[s.channels for s in input_shape]}"
            )
        if norm == "BN" or norm == "SyncBN":
            logger.warning(
                f"Shared BatchNorm (norm={norm}) across levels does not work well in RetinaNetHead; expect poor results"
            )

        cls_subnet = []
        bbox_subnet = []
        for in_channels, out_channels in zip([input_shape[0].channels] + list(conv_dims), conv_dims):
            cls_subnet.append(nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1))
            if norm:
                cls_subnet.append(get_norm(norm, out_channels))
            cls_subnet.append(nn.ReLU())
            bbox_subnet.append(nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1))
            if norm:
                bbox_subnet.append(get_norm(norm, out_channels))
            bbox_subnet.append(nn.ReLU())

        self.cls_subnet = nn.Sequential(*cls_subnet)
        self.bbox_subnet = nn.Sequential(*bbox_subnet)
        self.cls_score = nn.Conv2d(conv_dims[-1], num_anchors * num_classes, kernel_size=3, stride=1, padding=1)
        self.bbox_pred = nn.Conv2d(conv_dims[-1], num_anchors * 4, kernel_size=3, stride=1, padding=1)

        for modules in [self.cls_subnet, self.bbox_subnet, self.cls_score, self.bbox_pred]:
            for layer in modules.modules():
                if isinstance(layer, nn.Conv2d):
                    torch.nn.init.normal_(layer.weight, mean=0, std=0.01)
                    torch.nn.init.constant_(layer.bias, 0)

        # Every anchor starts as foreground with probability prior_prob, which keeps the
        # huge number of background anchors from dominating the first iterations.
        bias_value = -(math.log((1 - prior_prob) / prior_prob))
        torch.nn.init.constant_(self.cls_score.bias, bias_value)

    @classmethod
    def from_config(cls, cfg: Any, input_shape: List[ShapeSpec]) -> Dict[str, Any]:
        """Arguments from ``cfg.MODEL.RETINANET.{NUM_CLASSES, NUM_CONVS, PRIOR_PROB, NORM}``;
        the subnet convs keep the input channels and ``num_anchors`` comes from the anchor
        generator that :func:`build_anchor_generator` makes for ``input_shape``."""
        num_anchors = build_anchor_generator(cfg, input_shape).num_cell_anchors
        if len(set(num_anchors)) != 1:
            raise ValueError(
                f"RetinaNetHead needs the same number of anchors at every level, but MODEL.ANCHOR_GENERATOR "
                f"gives {num_anchors}; use the same number of SIZES x ASPECT_RATIOS per level"
            )
        return {
            "input_shape": input_shape,
            "num_classes": cfg.MODEL.RETINANET.NUM_CLASSES,
            "conv_dims": [input_shape[0].channels] * cfg.MODEL.RETINANET.NUM_CONVS,
            "prior_prob": cfg.MODEL.RETINANET.PRIOR_PROB,
            "norm": cfg.MODEL.RETINANET.NORM,
            "num_anchors": num_anchors[0],
        }

    def forward(self, features: List[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        """
        Args:
            features: per-level feature maps (N, C, Hi, Wi), high to low resolution.

        Returns:
            logits: per-level (N, A*K, Hi, Wi) classification logits.
            bbox_reg: per-level (N, A*4, Hi, Wi) box deltas (dx, dy, dw, dh).
        """
        if len(features) != self._num_features:
            raise ValueError(f"RetinaNetHead was built for {self._num_features} feature levels, got {len(features)}")
        logits = []
        bbox_reg = []
        for feature in features:
            logits.append(self.cls_score(self.cls_subnet(feature)))
            bbox_reg.append(self.bbox_pred(self.bbox_subnet(feature)))
        return logits, bbox_reg
