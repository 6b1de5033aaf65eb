"""Concrete augmentations (detectron2's ``augmentation_impl``), box-detection subset.

Sizes are ``(height, width)`` in pixels unless the argument name says otherwise.
"""

import logging
import numbers
import sys
from typing import Sequence, Tuple, Union

import numpy as np
from fvcore.transforms.transform import (
    BlendTransform,
    CropTransform,
    HFlipTransform,
    NoOpTransform,
    PadTransform,
    Transform,
    TransformList,
    VFlipTransform,
)
from PIL import Image

from .augmentation import Augmentation, _transform_to_aug
from .transform import ExtentTransform, ResizeTransform

__all__ = [
    "FixedSizeCrop",
    "RandomApply",
    "RandomBrightness",
    "RandomContrast",
    "RandomCrop",
    "RandomExtent",
    "RandomFlip",
    "RandomSaturation",
    "RandomLighting",
    "Resize",
    "ResizeScale",
    "ResizeShortestEdge",
]

logger = logging.getLogger(__name__)


class RandomApply(Augmentation):
    """Apply the wrapped transform/augmentation with probability ``prob``.

    Args:
        tfm_or_aug: a :class:`Transform` (applied as is) or an :class:`Augmentation`.
        prob: probability in [0, 1] of applying it. Checked first, so a bad
            probability is reported as such whatever ``tfm_or_aug`` is. Defaults to 0.5.
    """

    def __init__(self, tfm_or_aug: Union[Transform, Augmentation], prob: float = 0.5):
        super().__init__()
        if isinstance(prob, bool) or not isinstance(prob, numbers.Real):
            raise TypeError(f"RandomApply: probability must be a number in [0, 1], got {prob!r}.")
        if not 0.0 <= prob <= 1.0:  # also rejects NaN
            raise ValueError(f"RandomApply: probability must be in [0, 1], got {prob}.")
        self.aug = _transform_to_aug(tfm_or_aug)
        self.prob = prob

    def get_transform(self, *args) -> Transform:
        do = self._rand_range() < self.prob
        if do:
            return self.aug.get_transform(*args)
        return NoOpTransform()

    def __call__(self, aug_input) -> Transform:
        do = self._rand_range() < self.prob
        if do:
            return self.aug(aug_input)
        return NoOpTransform()


class RandomFlip(Augmentation):
    """Flip the image horizontally or vertically with probability ``prob``."""

    def __init__(self, prob: float = 0.5, *, horizontal: bool = True, vertical: bool = False):
        super().__init__()
        if horizontal and vertical:
            raise ValueError("Cannot do both horiz and vert. Please use two Flip instead.")
        if not horizontal and not vertical:
            raise ValueError("At least one of horiz or vert has to be True!")
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> Transform:
        h, w = image.shape[:2]
        do = self._rand_range() < self.prob
        if do:
            if self.horizontal:
                return HFlipTransform(w)
            return VFlipTransform(h)
        return NoOpTransform()


class Resize(Augmentation):
    """Resize the image to a fixed target size ``shape`` = (h, w) or an int for a square."""

    def __init__(self, shape: Union[int, Tuple[int, int]], interp: int = Image.BILINEAR):
        if isinstance(shape, int):
            shape = (shape, shape)
        shape = tuple(shape)
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> Transform:
        return ResizeTransform(image.shape[0], image.shape[1], self.shape[0], self.shape[1], self.interp)


class ResizeShortestEdge(Augmentation):
    """Resize so the shorter edge equals a sampled length, capping the longer edge at ``max_size``.

    Args:
        short_edge_length: with ``sample_style="range"``, ``(min, max)`` sampled uniformly
            (integers, inclusive); with ``"choice"``, a list of lengths to pick from.
            An int means a fixed length. A sampled length of 0 means "no resize".
        max_size: maximum allowed longer edge. Defaults to ``sys.maxsize``.
        sample_style: ``"range"`` or ``"choice"``. Defaults to ``"range"``.
        interp: PIL interpolation. Defaults to bilinear.

    Example: a 480x640 image with short edge 800 and max_size 1000 becomes 750x1000.
    """

    def __init__(
        self,
        short_edge_length: Union[int, Sequence[int]],
        max_size: int = sys.maxsize,
        sample_style: str = "range",
        interp: int = Image.BILINEAR,
    ):
        super().__init__()
        if sample_style not in ("range", "choice"):
            raise ValueError(f"sample_style must be 'range' or 'choice', got '{sample_style}'.")
        self.is_range = sample_style == "range"
        if isinstance(short_edge_length, int):
            short_edge_length = (short_edge_length, short_edge_length)
        if self.is_range and len(short_edge_length) != 2:
            raise ValueError(
                f"short_edge_length must be two values using 'range' sample style. Got {short_edge_length}!"
            )
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> Transform:
        h, w = image.shape[:2]
        if self.is_range:
            size = np.random.randint(self.short_edge_length[0], self.short_edge_length[1] + 1)
        else:
            size = np.random.choice(self.short_edge_length)
        if size == 0:
            return NoOpTransform()
        newh, neww = ResizeShortestEdge.get_output_shape(h, w, size, self.max_size)
        return ResizeTransform(h, w, newh, neww, self.interp)

    @staticmethod
    def get_output_shape(oldh: int, oldw: int, short_edge_length: int, max_size: int) -> Tuple[int, int]:
        """Target ``(h, w)`` for an ``oldh x oldw`` image (rounded half-up)."""
        h, w = oldh, oldw
        size = short_edge_length * 1.0
        scale = size / min(h, w)
        if h < w:
            newh, neww = size, scale * w
        else:
            newh, neww = scale * h, size
        if max(newh, neww) > max_size:
            scale = max_size * 1.0 / max(newh, neww)
            newh = newh * scale
            neww = neww * scale
        neww = int(neww + 0.5)
        newh = int(newh + 0.5)
        return (newh, neww)


class ResizeScale(Augmentation):
    """Scale the image so it fits in ``scale * (target_height, target_width)`` keeping the
    aspect ratio; ``scale`` is sampled uniformly from ``[min_scale, max_scale]``
    (large-scale jitter, used with :class:`FixedSizeCrop`)."""

    def __init__(
        self, min_scale: float, max_scale: float, target_height: int, target_width: int, interp: int = Image.BILINEAR
    ):
        super().__init__()
        self._init(locals())

    def _get_resize(self, image: np.ndarray, scale: float) -> Transform:
        input_size = image.shape[:2]
        target_size = (self.target_height, self.target_width)
        target_scale_size = np.multiply(target_size, scale)
        output_scale = np.minimum(target_scale_size[0] / input_size[0], target_scale_size[1] / input_size[1])
        output_size = np.round(np.multiply(input_size, output_scale)).astype(int)
        return ResizeTransform(input_size[0], input_size[1], int(output_size[0]), int(output_size[1]), self.interp)

    def get_transform(self, image: np.ndarray) -> Transform:
        random_scale = np.random.uniform(self.min_scale, self.max_scale)
        return self._get_resize(image, random_scale)


class FixedSizeCrop(Augmentation):
    """Randomly crop a ``crop_size`` = (h, w) window if the image is larger; if ``pad``,
    pad the bottom/right with ``pad_value`` up to ``crop_size`` when it is smaller."""

    def __init__(
        self, crop_size: Tuple[int, int], pad: bool = True, pad_value: float = 128.0, seg_pad_value: int = 255
    ):
        super().__init__()
        crop_size = tuple(crop_size)
        self._init(locals())

    def _get_crop(self, image: np.ndarray) -> Transform:
        input_size = image.shape[:2]
        output_size = self.crop_size
        max_offset = np.maximum(np.subtract(input_size, output_size), 0)
        offset = np.round(np.multiply(max_offset, np.random.uniform(0.0, 1.0))).astype(int)
        return CropTransform(
            int(offset[1]),
            int(offset[0]),
            int(output_size[1]),
            int(output_size[0]),
            int(input_size[1]),
            int(input_size[0]),
        )

    def _get_pad(self, image: np.ndarray) -> Transform:
        input_size = image.shape[:2]
        output_size = self.crop_size
        pad_size = np.maximum(np.subtract(output_size, input_size), 0)
        original_size = np.minimum(input_size, output_size)
        return PadTransform(
            0,
            0,
            int(pad_size[1]),
            int(pad_size[0]),
            int(original_size[1]),
            int(original_size[0]),
            self.pad_value,
            self.seg_pad_value,
        )

    def get_transform(self, image: np.ndarray) -> TransformList:
        transforms = [self._get_crop(image)]
        if self.pad:
            transforms.append(self._get_pad(image))
        return TransformList(transforms)


class RandomCrop(Augmentation):
    """Randomly crop a sub-image.

    Args:
        crop_type: one of
            * "relative": crop ``(H * crop_size[0], W * crop_size[1])``;
            * "relative_range": uniformly sample relative sizes from ``[crop_size[0], 1]``
              and ``[crop_size[1], 1]``;
            * "absolute": crop ``(min(crop_size[0], H), min(crop_size[1], W))``;
            * "absolute_range": sample h in ``[crop_size[0], min(H, crop_size[1])]`` and
              w in ``[crop_size[0], min(W, crop_size[1])]``.
        crop_size: two numbers, see ``crop_type``.
    """

    def __init__(self, crop_type: str, crop_size: Tuple[float, float]):
        super().__init__()
        if crop_type not in ("relative_range", "relative", "absolute", "absolute_range"):
            raise ValueError(f"Unknown crop_type '{crop_type}'.")
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> Transform:
        h, w = image.shape[:2]
        croph, cropw = self.get_crop_size((h, w))
        assert h >= croph and w >= cropw, f"Shape computation in {self} has bugs."
        h0 = np.random.randint(h - croph + 1)
        w0 = np.random.randint(w - cropw + 1)
        return CropTransform(w0, h0, cropw, croph)

    def get_crop_size(self, image_size: Tuple[int, int]) -> Tuple[int, int]:
        """Crop ``(h, w)`` for an image of size ``image_size`` = (H, W)."""
        h, w = image_size
        if self.crop_type == "relative":
            ch, cw = self.crop_size
            return int(h * ch + 0.5), int(w * cw + 0.5)
        if self.crop_type == "relative_range":
            crop_size = np.asarray(self.crop_size, dtype=np.float32)
            ch, cw = crop_size + np.random.rand(2) * (1 - crop_size)
            return int(h * ch + 0.5), int(w * cw + 0.5)
        if self.crop_type == "absolute":
            return (min(self.crop_size[0], h), min(self.crop_size[1], w))
        # absolute_range
        if self.crop_size[0] > self.crop_size[1]:
            raise ValueError(f"absolute_range crop_size must be (min, max), got {self.crop_size}.")
        ch = np.random.randint(min(h, self.crop_size[0]), min(h, self.crop_size[1]) + 1)
        cw = np.random.randint(min(w, self.crop_size[0]), min(w, self.crop_size[1]) + 1)
        return ch, cw


class RandomExtent(Augmentation):
    """Crop a random rectangle scaled by ``scale_range`` and shifted by up to
    ``shift_range`` (fraction of the half-size) around the image centre; areas outside
    the image are filled with 0. The output keeps the rectangle's size."""

    def __init__(self, scale_range: Tuple[float, float], shift_range: Tuple[float, float]):
        super().__init__()
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> Transform:
        img_h, img_w = image.shape[:2]
        src_rect = np.array([-0.5 * img_w, -0.5 * img_h, 0.5 * img_w, 0.5 * img_h])
        src_rect *= np.random.uniform(self.scale_range[0], self.scale_range[1])
        src_rect[0::2] += self.shift_range[0] * img_w * (np.random.rand() - 0.5)
        src_rect[1::2] += self.shift_range[1] * img_h * (np.random.rand() - 0.5)
        src_rect[0::2] += 0.5 * img_w
        src_rect[1::2] += 0.5 * img_h
        return ExtentTransform(
            src_rect=(src_rect[0], src_rect[1], src_rect[2], src_rect[3]),
            output_size=(int(src_rect[3] - src_rect[1]), int(src_rect[2] - src_rect[0])),
        )


class RandomContrast(Augmentation):
    """Blend the image with its mean: ``img * w + mean * (1 - w)``, w ~ U[intensity_min, intensity_max]."""

    def __init__(self, intensity_min: float, intensity_max: float):
        super().__init__()
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> Transform:
        w = np.random.uniform(self.intensity_min, self.intensity_max)
        return BlendTransform(src_image=image.mean(), src_weight=1 - w, dst_weight=w)


class RandomBrightness(Augmentation):
    """Scale the image: ``img * w``, w ~ U[intensity_min, intensity_max]."""

    def __init__(self, intensity_min: float, intensity_max: float):
        super().__init__()
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> Transform:
        w = np.random.uniform(self.intensity_min, self.intensity_max)
        return BlendTransform(src_image=0, src_weight=1 - w, dst_weight=w)


class RandomSaturation(Augmentation):
    """Blend an RGB/BGR image with its grayscale: ``img * w + gray * (1 - w)``."""

    def __init__(self, intensity_min: float, intensity_max: float):
        super().__init__()
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> Transform:
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"RandomSaturation only works on 3-channel images, got shape {image.shape}.")
        w = np.random.uniform(self.intensity_min, self.intensity_max)
        grayscale = image.dot([0.299, 0.587, 0.114])[:, :, np.newaxis]
        return BlendTransform(src_image=grayscale, src_weight=1 - w, dst_weight=w)


class RandomLighting(Augmentation):
    """AlexNet-style PCA lighting noise; ``scale`` is the std of the eigenvalue weights.
    Uses the ImageNet RGB eigenvectors/eigenvalues."""

    def __init__(self, scale: float):
        super().__init__()
        self._init(locals())
        self.eigen_vecs = np.array([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]])
        self.eigen_vals = np.array([0.2175, 0.0188, 0.0045])

    def get_transform(self, image: np.ndarray) -> Transform:
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"RandomLighting only works on 3-channel images, got shape {image.shape}.")
        weights = np.random.normal(scale=self.scale, size=3)
        return BlendTransform(src_image=self.eigen_vecs.dot(weights * self.eigen_vals), src_weight=1.0, dst_weight=1.0)
