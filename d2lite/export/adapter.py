"""The whole detector as one function of tensors, and how a model type finds its adapter.

An *export adapter* wraps a trained dense detector (weights shared, not copied) as an
``nn.Module`` whose ``forward`` torch.export, TorchScript and the ONNX exporter all take:

    ``adapter(image, original_size) -> (boxes, scores, classes)``

* ``image``: (C, H, W) uint8, in the model's input format (``model.input_format``, BGR
  for the d2lite configs), already resized by the test-time augmentations of the config
  (e.g. ``ResizeShortestEdge``) -- exactly the ``"image"`` the test data loader gives the
  model. H and W may vary within :meth:`DetectorExportAdapter.size_range`.
* ``original_size``: (2,) int64 ``(height, width)`` of the image before resizing (the
  ``"height"``/``"width"`` of the data loader's dict); outputs are in its pixels.
* ``boxes``: (N, 4) float32 XYXY, ``scores``: (N,) float32, ``classes``: (N,) int64,
  by decreasing score: the ``pred_boxes``, ``scores`` and ``pred_classes`` that the eager
  model returns for ``[{"image": image, "height": h, "width": w}]``.

``forward`` is :meth:`~DetectorExportAdapter.preprocess` (normalisation, padding),
``network`` (backbone and head, see :class:`DenseNetwork`), :meth:`~DetectorExportAdapter.decode`
(per model: scores, boxes, top-k, NMS) and :meth:`~DetectorExportAdapter.postprocess`
(rescale to ``original_size``, clip, drop empty boxes, as
:func:`d2lite.modeling.postprocessing.detector_postprocess`). Each step repeats the tensor
operations of the eager model in the same order, so an exported model gives the same
numbers; the code is TorchScript-compatible (typed, no Python objects such as Boxes or
Instances, no control flow on tensor values).

Extension point (projects): a model type gets its adapter from
:func:`register_export_adapter`::

    from d2lite.export import DetectorExportAdapter, register_export_adapter

    @register_export_adapter(MyDetector)
    class MyDetectorExportAdapter(DetectorExportAdapter):
        def __init__(self, model: MyDetector):
            super().__init__(model)
            ...  # copy the inference settings the decode needs

        def decode(self, outputs: List[Tensor], height: int, width: int) -> Tuple[Tensor, Tensor, Tensor]:
            ...  # boxes (N, 4) in input-image pixels, scores (N,), classes (N,)

Everything the decode needs must be tensors (buffers) or plain ints, floats, bools, strings
and lists of them, copied in ``__init__``; ``decode`` must be TorchScript-compatible
(type hints, no Python objects, no ``.item()`` or branches on tensor values). Override
:meth:`~DetectorExportAdapter.preprocess` for another normalisation or padding, and
:meth:`~DetectorExportAdapter.smallest_size` / :meth:`~DetectorExportAdapter.largest_size`
when the model limits the image size. Import the module that registers the adapter from the
package's ``__init__`` (projects/RTMDet does ``from . import export``), so that building the
model from a config also makes it exportable. :func:`build_export_adapter` looks the
model's classes up in method resolution order, so a subclass of a registered type uses its
parent's adapter; it then sets the adapter's size range to ``default_size_range()``.
"""

from typing import Callable, Dict, List, Tuple, Type, TypeVar

import torch
from torch import Tensor, nn

from d2lite.modeling.meta_arch.dense_detector import DenseDetector

__all__ = [
    "DenseNetwork",
    "DetectorExportAdapter",
    "register_export_adapter",
    "build_export_adapter",
    "registered_model_types",
]

DEFAULT_SIZE_RANGE = (32, 2048)
"""Default (min, max) image height and width, in pixels, that an export accepts."""


class DenseNetwork(nn.Module):
    """Backbone and head of a dense detector: padded, normalised (1, C, H, W) images ->
    the head's per-level outputs, flattened into one list (all tensors of the head's first
    output, then of the second, ...), e.g. RetinaNet: [logits p3..p7, deltas p3..p7].

    A plain module of tensors in and tensors out: the TorchScript export traces it (its
    ops do not depend on values, and its shapes follow the input's).
    """

    def __init__(self, model: DenseDetector):
        super().__init__()
        self.backbone = model.backbone
        self.head = model.head
        self.in_features = list(model.head_in_features)

    def forward(self, images: Tensor) -> List[Tensor]:
        features = self.backbone(images)
        predictions = self.head([features[f] for f in self.in_features])
        return [t for per_level in predictions for t in per_level]


class DetectorExportAdapter(nn.Module):
    """Base class of export adapters (see the module docstring for the contract).

    Subclasses implement :meth:`decode`, and override :meth:`preprocess` when their model
    normalises or pads differently from :meth:`DenseDetector.preprocess_image` (normalise,
    then pad with 0 to the backbone's ``size_divisibility`` or ``square_size``).

    Args:
        model: the trained detector in eval mode; its modules are shared, not copied.
    """

    def __init__(self, model: DenseDetector):
        super().__init__()
        if not isinstance(model, DenseDetector):
            raise TypeError(f"{type(self).__name__} exports a d2lite DenseDetector, got {type(model).__name__}")
        self.network = DenseNetwork(model)
        self.register_buffer("pixel_mean", model.pixel_mean.detach().clone(), False)
        self.register_buffer("pixel_std", model.pixel_std.detach().clone(), False)
        constraints = model.backbone.padding_constraints or {}
        self.size_divisibility = int(constraints.get("size_divisibility", model.backbone.size_divisibility))
        self.square_size = int(constraints.get("square_size", 0))
        self.num_levels = len(model.head_in_features)
        shapes = model.backbone.output_shape()
        self.max_stride = max(int(shapes[f].stride or 1) for f in model.head_in_features)
        self.input_format = model.input_format
        # build_export_adapter narrows this to default_size_range() once the subclass is built.
        self.min_size, self.max_size = DEFAULT_SIZE_RANGE

    def default_size_range(self) -> Tuple[int, int]:
        """(min, max) image height and width accepted unless :meth:`set_size_range` changes
        it: from max(32, :meth:`smallest_size`) to min(2048, :meth:`largest_size`), e.g. 33 to
        2048 pixels for the shapes-demo RetinaNet (P3-P5), 129 to 2048 for RetinaNet R50-FPN
        (P3-P7, stride 128)."""
        low, high = DEFAULT_SIZE_RANGE
        return max(low, self.smallest_size()), min(high, self.largest_size())

    def smallest_size(self) -> int:
        """The smallest image height and width an export can take: one pixel more than the
        largest feature stride when the padded size follows the image (torch.export cannot
        keep a size dynamic that makes the coarsest feature map a single row or column),
        else 2."""
        return self.max_stride + 1 if self.square_size == 0 else 2

    def largest_size(self) -> int:
        """The largest image height and width the model can take: its fixed padded size if
        it has one, else unbounded (2**30)."""
        return self.square_size if self.square_size > 0 else 1 << 30

    def set_size_range(self, min_size: int, max_size: int) -> None:
        """Accept images whose height and width lie in [min_size, max_size] pixels.

        Raises:
            ValueError: the range is empty or outside [:meth:`smallest_size`, :meth:`largest_size`].
        """
        if min_size > max_size:
            raise ValueError(f"image size range [{min_size}, {max_size}] is empty")
        if min_size < self.smallest_size():
            raise ValueError(
                f"min image size {min_size} is below {self.smallest_size()}, the smallest input of "
                f"{type(self).__name__} for this model (see DetectorExportAdapter.smallest_size)"
            )
        if max_size > self.largest_size():
            raise ValueError(
                f"max image size {max_size} exceeds {self.largest_size()}, the largest input of "
                f"{type(self).__name__} (its fixed padded size)"
            )
        self.min_size, self.max_size = int(min_size), int(max_size)

    def check_image(self, image: Tensor) -> None:
        """Raise on an image that is not (C, H, W) uint8 with H and W in the size range (the
        TorchScript export runs this; a torch.export program checks the same itself)."""
        if image.dim() != 3 or image.shape[0] != self.pixel_mean.shape[0]:
            raise ValueError("image must be a (C, H, W) tensor with the model's number of channels")
        if image.dtype != torch.uint8:
            raise ValueError("image must be uint8")
        height, width = image.shape[1], image.shape[2]
        if height < self.min_size or height > self.max_size or width < self.min_size or width > self.max_size:
            raise ValueError("image height and width must lie in the size range of the export (export.json)")

    def padded_size(self, height: int, width: int) -> Tuple[int, int]:
        """Size of the padded network input for an ``height`` x ``width`` image (as
        :meth:`d2lite.structures.ImageList.from_tensors`)."""
        if self.square_size > 0:
            height, width = self.square_size, self.square_size
        d = self.size_divisibility
        if d > 1:
            height = (height + d - 1) // d * d
            width = (width + d - 1) // d * d
        return height, width

    def preprocess(self, image: Tensor) -> Tensor:
        """(C, H, W) uint8 -> (1, C, H', W') float32: normalise, then pad with 0 at the
        bottom and right to :meth:`padded_size`."""
        height, width = image.shape[1], image.shape[2]
        padded_h, padded_w = self.padded_size(height, width)
        x = (image - self.pixel_mean) / self.pixel_std
        x = torch.nn.functional.pad(x, [0, padded_w - width, 0, padded_h - height], value=0.0)
        return x.unsqueeze(0)

    def decode(self, outputs: List[Tensor], height: int, width: int) -> Tuple[Tensor, Tensor, Tensor]:
        """Detections of one image from the flattened head outputs of :class:`DenseNetwork`.

        Args:
            outputs: the head's per-level tensors, each with batch size 1.
            height, width: size of the unpadded input image.

        Returns:
            boxes (N, 4) float32 XYXY in input-image pixels, scores (N,), classes (N,) int64,
            as the model's ``forward_inference`` (before rescaling).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement decode")

    def postprocess(
        self, boxes: Tensor, scores: Tensor, classes: Tensor, height: int, width: int, original_size: Tensor
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """Rescale boxes from the ``height`` x ``width`` input to ``original_size``, clip them
        to it and drop the empty ones (:func:`d2lite.modeling.postprocessing.detector_postprocess`).
        The scales are computed in float64 and rounded to float32, as the eager code
        multiplies float32 boxes by Python floats."""
        size = original_size.to(torch.float64)
        scale_y = (size[0] / height).to(torch.float32)
        scale_x = (size[1] / width).to(torch.float32)
        x = (boxes[:, 0::2] * scale_x).clamp(min=0.0)
        y = (boxes[:, 1::2] * scale_y).clamp(min=0.0)
        x = torch.minimum(x, size[1].to(torch.float32))
        y = torch.minimum(y, size[0].to(torch.float32))
        boxes = torch.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], dim=1)
        keep = ((boxes[:, 2] - boxes[:, 0]) > 0) & ((boxes[:, 3] - boxes[:, 1]) > 0)
        return boxes[keep], scores[keep], classes[keep]

    def forward(self, image: Tensor, original_size: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """(C, H, W) uint8 image and its original (height, width) -> boxes, scores, classes."""
        self.check_image(image)
        height, width = image.shape[1], image.shape[2]
        outputs = self.network(self.preprocess(image))
        boxes, scores, classes = self.decode(outputs, height, width)
        return self.postprocess(boxes, scores, classes, height, width, original_size)


AdapterT = TypeVar("AdapterT", bound=Type[DetectorExportAdapter])
_ADAPTERS: Dict[type, Callable[[nn.Module], DetectorExportAdapter]] = {}


def register_export_adapter(model_type: type) -> Callable[[AdapterT], AdapterT]:
    """Class decorator: ``adapter_class(model)`` exports models of ``model_type`` (and of its
    subclasses without an adapter of their own). Registering a type again replaces its adapter."""
    if not isinstance(model_type, type):
        raise TypeError(f"register_export_adapter takes a model class, got {model_type!r}")

    def register(adapter_class: AdapterT) -> AdapterT:
        if not (isinstance(adapter_class, type) and issubclass(adapter_class, DetectorExportAdapter)):
            raise TypeError(f"{adapter_class!r} registered for {model_type.__name__} is not a DetectorExportAdapter")
        _ADAPTERS[model_type] = adapter_class
        return adapter_class

    return register


def registered_model_types() -> List[str]:
    """Qualified names of the model types that have an export adapter."""
    return sorted(f"{t.__module__}.{t.__qualname__}" for t in _ADAPTERS)


def build_export_adapter(model: nn.Module) -> DetectorExportAdapter:
    """The export adapter of ``model`` from the registry (see the module docstring), in eval
    mode, accepting its :meth:`~DetectorExportAdapter.default_size_range`.

    Raises:
        TypeError: no adapter is registered for the model's type or its bases; the message
            names the type and the registered ones.
    """
    for cls in type(model).__mro__:
        if cls in _ADAPTERS:
            adapter = _ADAPTERS[cls](model)
            adapter.set_size_range(*adapter.default_size_range())
            return adapter.eval()
    raise TypeError(
        f"no export adapter is registered for {type(model).__module__}.{type(model).__qualname__} "
        f"(registered: {', '.join(registered_model_types()) or 'none'}); write a DetectorExportAdapter "
        "for it and register it with d2lite.export.register_export_adapter"
    )
