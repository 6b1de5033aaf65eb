"""Base class of dense (one-stage, per-location) detectors such as RetinaNet."""

import logging
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from d2lite.structures import Boxes, ImageList, Instances
from d2lite.utils.events import get_event_storage, has_event_storage

from ..backbone import Backbone
from ..postprocessing import detector_postprocess

__all__ = ["DenseDetector", "permute_to_N_HWA_K"]

logger = logging.getLogger(__name__)


def permute_to_N_HWA_K(tensor: Tensor, K: int) -> Tensor:
    """Transpose/reshape a tensor from (N, (A x K), H, W) to (N, (H x W x A), K)."""
    if tensor.dim() != 4:
        raise ValueError(f"permute_to_N_HWA_K expects a (N, A*K, H, W) tensor, got shape {tuple(tensor.shape)}")
    N, _, H, W = tensor.shape
    tensor = tensor.view(N, -1, K, H, W)
    tensor = tensor.permute(0, 3, 4, 1, 2)
    return tensor.reshape(N, -1, K)  # (N, H*W*A, K)


class DenseDetector(nn.Module):
    """
    Base class of dense detectors: a fully-convolutional model making per-location
    predictions on a list of feature maps.

    ``forward`` normalizes and batches the images, runs ``backbone`` and
    ``head(features)`` on ``head_in_features``, then calls
    :meth:`forward_training` (training) or :meth:`forward_inference` (eval), which
    subclasses implement. In eval mode the results are rescaled to each input's
    "height"/"width" by :func:`detector_postprocess`.

    Extension points for subclasses (public and stable; RetinaNet and projects/RTMDet
    use only these):

    * :meth:`forward_training`, :meth:`forward_inference`: must be implemented.
    * :meth:`preprocess_image`: override to change normalisation/padding; call
      :meth:`input_image` to read and check one input's image.
    * :meth:`transpose_dense_predictions`: per-level (N, A*K, H, W) -> (N, H*W*A, K).
    * :attr:`current_inputs`: the raw input dicts of the running ``forward`` (None
      outside it), and :meth:`visualize_training_if_due`, which draws them every
      ``vis_period`` iterations.
    * :attr:`update_running_state`: when False (set by
      :class:`d2lite.engine.validation_loss.ValidationLoss` during its pass), running
      state kept outside parameters and buffers, e.g. RetinaNet's ``loss_normalizer``
      EMA updated through :meth:`_ema_update`, is used but not updated.
    * :meth:`running_state_dict` / :meth:`load_running_state_dict`: that running state
      (not in ``state_dict()``, whose keys stay detectron2's), saved and restored by the
      trainer so that a resumed run continues exactly.
    """

    def __init__(
        self,
        backbone: Backbone,
        head: nn.Module,
        head_in_features: Optional[List[str]] = None,
        *,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        input_format: str = "BGR",
        vis_period: int = 0,
    ):
        """
        Args:
            backbone: a :class:`Backbone`; its ``size_divisibility`` and
                ``padding_constraints`` drive image batching.
            head: module called as ``head(list of feature maps)``.
            head_in_features: backbone features fed to the head, in order. Defaults to all
                backbone outputs sorted by stride.
            pixel_mean, pixel_std: per-channel normalization, in the channel order of the
                input images (e.g. BGR means [103.53, 116.28, 123.675] for BGR input).
            input_format: channel order of the input images, "BGR" or "RGB"; used to show
                them in RGB for visualization. Defaults to "BGR".
            vis_period: if > 0, :meth:`visualize_training_if_due` draws the ground truth
                and predictions every ``vis_period`` iterations. Defaults to 0.
        """
        super().__init__()
        self.backbone = backbone
        self.head = head
        if head_in_features is None:
            shapes = self.backbone.output_shape()
            self.head_in_features = sorted(shapes.keys(), key=lambda x: shapes[x].stride)
        else:
            self.head_in_features = list(head_in_features)
            missing = [f for f in self.head_in_features if f not in self.backbone.output_shape()]
            if missing:
                raise ValueError(
                    f"{type(self).__name__}: head_in_features {missing} are not backbone outputs "
                    f"({list(self.backbone.output_shape())})"
                )
        if len(pixel_mean) != len(pixel_std):
            raise ValueError(
                f"{type(self).__name__}: pixel_mean {list(pixel_mean)} and pixel_std "
                f"{list(pixel_std)} must have the same length"
            )
        if input_format not in ("BGR", "RGB"):
            raise ValueError(f"{type(self).__name__}: input_format must be 'BGR' or 'RGB', got {input_format!r}")
        self.input_format = input_format
        self.vis_period = vis_period
        self.update_running_state = True
        self._current_inputs: Optional[List[Dict]] = None
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def current_inputs(self) -> Optional[List[Dict]]:
        """The raw input dicts of the running :meth:`forward` (unnormalised images, for
        visualization); None outside a forward."""
        return self._current_inputs

    def forward(self, batched_inputs: List[Dict]):
        """
        Args:
            batched_inputs: one dict per image with
                * "image": (C, H, W) tensor in the model's input format;
                * "instances": :class:`Instances` with gt_boxes / gt_classes (training);
                * optional "height", "width": output resolution of the predictions
                  (defaults to the image size).

        Returns:
            training: dict[str, Tensor] of scalar losses.
            inference: list of {"instances": Instances(pred_boxes, scores, pred_classes)},
            boxes in the "height" x "width" coordinate frame.
        """
        self._current_inputs = batched_inputs
        try:
            return self._forward(batched_inputs)
        finally:
            self._current_inputs = None

    def _forward(self, batched_inputs: List[Dict]):
        if self.training:
            missing = [i for i, x in enumerate(batched_inputs) if "instances" not in x]
            if missing:
                raise ValueError(
                    f"{type(self).__name__} in training mode needs 'instances' in every input dict "
                    f"(missing in inputs {missing}); call model.eval() for inference"
                )
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        features = [features[f] for f in self.head_in_features]
        predictions = self.head(features)

        if self.training:
            gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
            return self.forward_training(images, features, predictions, gt_instances)

        results = self.forward_inference(images, features, predictions)
        processed_results = []
        for results_per_image, input_per_image, image_size in zip(results, batched_inputs, images.image_sizes):
            height = input_per_image.get("height", image_size[0])
            width = input_per_image.get("width", image_size[1])
            processed_results.append({"instances": detector_postprocess(results_per_image, height, width)})
        return processed_results

    def forward_training(
        self,
        images: ImageList,
        features: List[Tensor],
        predictions: List[List[Tensor]],
        gt_instances: List[Instances],
    ) -> Dict[str, Tensor]:
        """Compute the training losses from the head's ``predictions``."""
        raise NotImplementedError(f"{type(self).__name__} must implement forward_training")

    def forward_inference(
        self, images: ImageList, features: List[Tensor], predictions: List[List[Tensor]]
    ) -> List[Instances]:
        """Turn the head's ``predictions`` into one Instances per image, in input-image pixels."""
        raise NotImplementedError(f"{type(self).__name__} must implement forward_inference")

    def input_image(self, i: int, x: Dict) -> Tensor:
        """The (C, H, W) "image" of input dict ``x`` (the ``i``-th of the batch) on the model's
        device; a clear error naming ``i`` if it is missing or has the wrong number of channels."""
        if "image" not in x:
            raise ValueError(f"{type(self).__name__}: input {i} has no 'image' key (keys: {list(x)})")
        img = x["image"]
        if img.dim() != 3 or img.shape[0] != self.pixel_mean.shape[0]:
            raise ValueError(
                f"{type(self).__name__}: input {i} 'image' must be (C, H, W) with "
                f"C={self.pixel_mean.shape[0]} (len(pixel_mean)), got shape {tuple(img.shape)}"
            )
        return img.to(self.device)

    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        """Normalize, pad and batch the input images."""
        images = [(self.input_image(i, x) - self.pixel_mean) / self.pixel_std for i, x in enumerate(batched_inputs)]
        return ImageList.from_tensors(
            images,
            self.backbone.size_divisibility,
            padding_constraints=self.backbone.padding_constraints,
        )

    def transpose_dense_predictions(
        self, predictions: Sequence[List[Tensor]], dims_per_anchor: List[int]
    ) -> List[List[Tensor]]:
        """
        Transpose dense per-level predictions.

        Args:
            predictions: a list of outputs, each a list of per-level tensors of shape
                (N, Ai x K, Hi, Wi), Ai anchors per location, K values per anchor.
            dims_per_anchor: the K of each output, e.g. [num_classes, 4].

        Returns:
            the same structure with tensors of shape (N, Hi x Wi x Ai, K).
        """
        if len(predictions) != len(dims_per_anchor):
            raise ValueError(
                f"transpose_dense_predictions: {len(predictions)} outputs but {len(dims_per_anchor)} dims_per_anchor"
            )
        return [
            [permute_to_N_HWA_K(x, dim_per_anchor) for x in pred]
            for pred, dim_per_anchor in zip(predictions, dims_per_anchor)
        ]

    # detectron2's name, for projects written against it
    _transpose_dense_predictions = transpose_dense_predictions

    def _ema_update(self, name: str, value: float, initial_value: float, momentum: float = 0.9) -> float:
        """
        Return ``old * momentum + value * (1 - momentum)``, with ``old`` = ``self.<name>``
        (``initial_value`` on the first call), and store it in ``self.<name>`` unless
        :attr:`update_running_state` is False.

        Used for the loss normalizer: normalizing by the #foreground of a single batch is
        noisy with small batches, so an EMA of #foreground is used instead.
        """
        old = getattr(self, name) if hasattr(self, name) else initial_value
        new = old * momentum + value * (1 - momentum)
        if self.update_running_state:
            setattr(self, name, new)
            self._running_state_names = getattr(self, "_running_state_names", set()) | {name}
        return new

    def running_state_dict(self) -> Dict[str, float]:
        """The running values kept outside parameters and buffers (updated through
        :meth:`_ema_update`, e.g. RetinaNet's ``loss_normalizer``): ``{name: value}``."""
        return {name: float(getattr(self, name)) for name in sorted(getattr(self, "_running_state_names", ()))}

    def load_running_state_dict(self, state: Dict[str, float]) -> None:
        """Restore values returned by :meth:`running_state_dict`."""
        for name, value in state.items():
            setattr(self, name, float(value))
        self._running_state_names = getattr(self, "_running_state_names", set()) | set(state)

    def _decode_per_level_predictions(
        self,
        anchors: Boxes,
        pred_scores: Tensor,
        pred_deltas: Tensor,
        score_thresh: float,
        topk_candidates: int,
        image_size: Tuple[int, int],
    ) -> Instances:
        """
        Decode one feature level: keep scores > ``score_thresh``, then the
        ``topk_candidates`` best (anchor, class) pairs, and transform their deltas.
        (When more pairs than that pass the threshold, the top k of all pairs are taken
        directly: the same pairs, without gathering every kept score first.)

        Args:
            anchors: the level's R anchors.
            pred_scores: (R, K) probabilities.
            pred_deltas: (R, 4) box deltas.

        Returns:
            Instances with "pred_boxes", "scores", "pred_classes".
        """
        keep_idxs = pred_scores > score_thresh
        num_kept = int(keep_idxs.sum())
        if num_kept > topk_candidates:
            # Most pairs pass the threshold: take the top k of all pairs directly (they are
            # all above it) instead of gathering the kept ones first: the same pairs (up to
            # ties at the k-th score), in decreasing order.
            pred_scores, flat_idxs = pred_scores.flatten().topk(topk_candidates)
            num_classes = keep_idxs.shape[1]
            anchor_idxs, classes_idxs = flat_idxs // num_classes, flat_idxs % num_classes
        else:
            pred_scores = pred_scores[keep_idxs]
            topk_idxs = torch.nonzero(keep_idxs)  # (K', 2): (anchor index, class index)
            pred_scores, idxs = pred_scores.topk(num_kept)
            anchor_idxs, classes_idxs = topk_idxs[idxs].unbind(dim=1)

        pred_boxes = self.box2box_transform.apply_deltas(pred_deltas[anchor_idxs], anchors.tensor[anchor_idxs])
        return Instances(image_size, pred_boxes=Boxes(pred_boxes), scores=pred_scores, pred_classes=classes_idxs)

    def _decode_multi_level_predictions(
        self,
        anchors: List[Boxes],
        pred_scores: List[Tensor],
        pred_deltas: List[Tensor],
        score_thresh: float,
        topk_candidates: int,
        image_size: Tuple[int, int],
    ) -> Instances:
        """Run :meth:`_decode_per_level_predictions` on every level and concatenate."""
        predictions = [
            self._decode_per_level_predictions(
                anchors_i, box_cls_i, box_reg_i, score_thresh, topk_candidates, image_size
            )
            for box_cls_i, box_reg_i, anchors_i in zip(pred_scores, pred_deltas, anchors)
        ]
        return Instances.cat(predictions)

    def visualize_training_if_due(
        self, images: ImageList, features: List[Tensor], predictions: Sequence[List[Tensor]]
    ) -> None:
        """In training, every ``vis_period`` iterations (storage iteration), run
        :meth:`forward_inference` on detached ``predictions`` and call
        :meth:`visualize_training` with :attr:`current_inputs`. Call it from
        :meth:`forward_training`."""
        if self.vis_period <= 0 or self._current_inputs is None or not has_event_storage():
            return
        if get_event_storage().iter % self.vis_period != 0:
            return
        with torch.no_grad():
            detached = [[x.detach() for x in p] for p in predictions]
            results = self.forward_inference(images, features, detached)
        self.visualize_training(self._current_inputs, results)

    def visualize_training(self, batched_inputs: List[Dict], results: List[Instances]) -> None:
        """
        Put into the event storage an image showing the ground-truth boxes (top) and the
        20 highest-scoring predictions (bottom) of the first input image.

        Args:
            batched_inputs: the model inputs.
            results: per-image predictions in input-image pixels (from forward_inference).
        """
        from torchvision.utils import draw_bounding_boxes

        if len(batched_inputs) != len(results):
            raise ValueError("visualize_training: need one result per input")
        max_boxes = 20
        img = batched_inputs[0]["image"].detach().cpu()
        if self.input_format == "BGR":
            img = img.flip(0)
        img = img.clamp(0, 255).to(torch.uint8)
        gt_boxes = batched_inputs[0]["instances"].gt_boxes.tensor.detach().cpu()
        pred = detector_postprocess(results[0], img.shape[1], img.shape[2])
        pred_boxes = pred.pred_boxes.tensor.detach().cpu()[:max_boxes]
        top = draw_bounding_boxes(img, gt_boxes, colors="green")
        bottom = draw_bounding_boxes(img, pred_boxes, colors="red")
        vis_img = torch.cat([top, bottom], dim=1).float() / 255.0
        name = f"Top: GT bounding boxes; Bottom: {max_boxes} Highest Scoring Results"
        get_event_storage().put_image(name, vis_img)
