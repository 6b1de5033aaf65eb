"""mmdetection 3.x's single-image training transforms of RTMDet, on d2lite's
augmentation design (an :class:`~d2lite.data.transforms.Augmentation` draws the
parameters, a deterministic :class:`~d2lite.data.transforms.Transform` moves the
image and the boxes).

Differences from d2lite's own augmentations, all needed to follow mmdetection:

* randomness comes from ``aug_input.rng``, an explicit ``np.random.Generator`` made
  per sample by :class:`rtmdet.mapper.RTMDetDatasetMapper` (never the global numpy
  state), so a sample's draws depend only on its seed;
* the input is a :class:`DetAugInput`, which also carries the class labels, so a step
  can drop boxes (mmdetection's ``is_inside`` rule after a crop) together with their
  labels, and reject the sample (:class:`SampleRejected`, mmdetection's ``None``);
* boxes are float32 and the arithmetic is mmdetection's (``HorizontalBoxes`` is float32);
* images are resized with a non-antialiased bilinear filter on uint8, as OpenCV's
  ``INTER_LINEAR`` (what ``mmcv.imresize`` uses), through torch (no OpenCV dependency);
  pixel values may differ from OpenCV's by 1 (fixed-point rounding).

Sizes are ``(height, width)`` in pixels (mmdetection writes ``img_scale`` as (h, w) and
``scale``/``size`` as (w, h); the RTMDet recipe uses squares only). Boxes are XYXY
absolute pixels, shape ``(N, 4)``.
"""

from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from d2lite.data import transforms as T

__all__ = [
    "SampleRejected",
    "DetAugInput",
    "resize_bilinear",
    "rescale_size",
    "clip_boxes",
    "boxes_inside",
    "LinearResizeTransform",
    "HSVTransform",
    "bgr_to_hsv",
    "hsv_to_bgr",
    "RandomResize",
    "RandomCrop",
    "YOLOXHSVRandomAug",
    "RandomFlip",
    "Pad",
]


class SampleRejected(Exception):
    """Raised by an augmentation that rejects the sample (mmdetection's transforms
    return ``None``; its dataset then loads another random index). The mapper turns it
    into ``None``, on which d2lite's :class:`~d2lite.data.MapDataset` maps another
    random index."""


class DetAugInput(T.AugInput):
    """An :class:`~d2lite.data.transforms.AugInput` with class labels and a random generator.

    Args:
        image: ``(H, W, C)`` uint8 array.
        boxes: ``(N, 4)`` XYXY absolute-pixel boxes (stored as float32).
        classes: ``(N,)`` integer labels (stored as int64).
        rng: the generator every augmentation draws from. Defaults to a fresh
            ``np.random.default_rng()`` (unseeded).
        image_format: channel order of ``image``, "BGR" or "RGB". Defaults to "BGR".
    """

    def __init__(
        self,
        image: np.ndarray,
        *,
        boxes: Optional[np.ndarray] = None,
        classes: Optional[np.ndarray] = None,
        rng: Optional[np.random.Generator] = None,
        image_format: str = "BGR",
    ):
        boxes = np.zeros((0, 4), np.float32) if boxes is None else np.asarray(boxes, np.float32).reshape(-1, 4)
        classes = np.zeros((len(boxes),), np.int64) if classes is None else np.asarray(classes, np.int64).reshape(-1)
        if len(classes) != len(boxes):
            raise ValueError(f"DetAugInput: {len(boxes)} boxes but {len(classes)} classes.")
        if image_format not in ("BGR", "RGB"):
            raise ValueError(f"DetAugInput: image_format must be 'BGR' or 'RGB', got {image_format!r}.")
        super().__init__(image, boxes=boxes)
        self.classes = classes
        self.rng = rng if rng is not None else np.random.default_rng()
        self.image_format = image_format

    def transform(self, tfm: T.Transform) -> None:
        """Apply ``tfm`` to the image and the boxes (kept float32) in place."""
        self.image = tfm.apply_image(self.image)
        if len(self.boxes):
            self.boxes = np.asarray(tfm.apply_box(self.boxes), dtype=np.float32).reshape(-1, 4)

    def keep(self, mask: np.ndarray) -> None:
        """Keep the boxes (and labels) where ``mask`` is True."""
        self.boxes = self.boxes[mask]
        self.classes = self.classes[mask]


def resize_bilinear(img: np.ndarray, new_w: int, new_h: int) -> np.ndarray:
    """Resize ``img`` ((H, W) or (H, W, C)) to ``(new_h, new_w)`` with a bilinear filter
    on half-pixel centres and no antialiasing (as OpenCV's ``INTER_LINEAR``).

    uint8 images use torch's fixed-point uint8 kernel (results within 1 of the float
    computation, as OpenCV's); float images are interpolated in float32.
    """
    if new_w <= 0 or new_h <= 0:
        raise ValueError(f"resize_bilinear: target size must be positive, got (w={new_w}, h={new_h}).")
    if img.shape[:2] == (new_h, new_w):
        return img.copy()
    x = torch.from_numpy(np.ascontiguousarray(img))
    x = x[..., None] if x.ndim == 2 else x
    x = x.permute(2, 0, 1)[None]  # (1, C, H, W), channels-last memory
    if x.dtype != torch.uint8:
        x = x.float()
    y = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=False)
    out = y[0].permute(1, 2, 0).numpy()
    if img.dtype != np.uint8:
        out = out.astype(img.dtype, copy=False)
    return out[..., 0] if img.ndim == 2 else out


def rescale_size(old_wh: Tuple[int, int], scale: Tuple[int, int]) -> Tuple[Tuple[int, int], float]:
    """mmcv's ``rescale_size``: the largest size of ``old_wh`` with the same aspect ratio
    whose long edge is <= max(scale) and short edge <= min(scale).

    Returns:
        ``((new_w, new_h), factor)`` with ``factor = min(max(scale) / max(w, h),
        min(scale) / min(w, h))`` and ``new = int(old * factor + 0.5)``.

    Example: ``rescale_size((640, 480), (1280, 1280))`` -> ``((1280, 960), 2.0)``.
    """
    w, h = old_wh
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return (int(w * float(factor) + 0.5), int(h * float(factor) + 0.5)), factor


def clip_boxes(boxes: np.ndarray, height: float, width: float) -> np.ndarray:
    """Clip XYXY boxes to ``[0, width] x [0, height]`` (mmdetection's ``clip_``); returns a new array."""
    out = boxes.copy()
    out[:, 0::2] = np.clip(out[:, 0::2], 0, width)
    out[:, 1::2] = np.clip(out[:, 1::2], 0, height)
    return out


def boxes_inside(boxes: np.ndarray, height: float, width: float) -> np.ndarray:
    """mmdetection's ``is_inside`` (``all_inside=False``): True for boxes that overlap the
    image, ``x1 < width and y1 < height and x2 > 0 and y2 > 0``. A box clipped onto the
    border (e.g. ``x1 == x2 == width``) is outside."""
    return (boxes[:, 0] < width) & (boxes[:, 1] < height) & (boxes[:, 2] > 0) & (boxes[:, 3] > 0)


class LinearResizeTransform(T.ResizeTransform):
    """Resize from ``(h, w)`` to ``(new_h, new_w)`` with :func:`resize_bilinear` (OpenCV's
    ``INTER_LINEAR`` behaviour); coordinates are scaled by ``new_w / w`` and ``new_h / h``
    in float32 (mmdetection's ``Resize`` scale factor)."""

    def __init__(self, h: int, w: int, new_h: int, new_w: int):
        super().__init__(h, w, new_h, new_w)

    def apply_image(self, img: np.ndarray, interp: Optional[int] = None) -> np.ndarray:
        if img.shape[:2] != (self.h, self.w):
            raise ValueError(
                f"LinearResizeTransform expects an image of size {(self.h, self.w)}, got {tuple(img.shape[:2])}."
            )
        return resize_bilinear(img, self.new_w, self.new_h)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords = np.asarray(coords, dtype=np.float32).copy()
        coords[:, 0] *= np.float32(self.new_w / self.w)
        coords[:, 1] *= np.float32(self.new_h / self.h)
        return coords

    def inverse(self) -> T.Transform:
        return LinearResizeTransform(self.new_h, self.new_w, self.h, self.w)


# ---------------------------------------------------------------------------------- HSV
# OpenCV's 8-bit BGR<->HSV conversion (hue in [0, 180)), written out in numpy and checked
# against opencv-python 4.14 and 5.0 on every input value (all 256^3 BGR colours, all
# 180 x 256 x 256 HSV values).
_HSV_SHIFT = 12
_SDIV = np.zeros(256, np.int32)
_HDIV = np.zeros(256, np.int32)
_SDIV[1:] = np.rint((255 << _HSV_SHIFT) / np.arange(1, 256, dtype=np.float64))
_HDIV[1:] = np.rint((180 << _HSV_SHIFT) / (6.0 * np.arange(1, 256, dtype=np.float64)))


def _bgr_to_hsv_planes(img: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(h, s, v) int32 planes ``(H, W)`` of a uint8 BGR image (see :func:`bgr_to_hsv`)."""
    b, g, r = np.ascontiguousarray(img.transpose(2, 0, 1)).astype(np.int32)  # planar: fast elementwise ops
    v = np.maximum(np.maximum(b, g), r)
    diff = v - np.minimum(np.minimum(b, g), r)
    s = diff * _SDIV.take(v)
    s += 1 << (_HSV_SHIFT - 1)
    s >>= _HSV_SHIFT
    # hue numerator: g - b if v == r (takes precedence, as in OpenCV), b - r + 2 diff if v == g, else r - g + 4 diff
    h = np.where(v == r, g - b, np.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h *= _HDIV.take(diff)
    h += 1 << (_HSV_SHIFT - 1)
    h >>= _HSV_SHIFT
    h += 180 * (h < 0)
    return h, s, v


def bgr_to_hsv(img: np.ndarray) -> np.ndarray:
    """OpenCV's ``cvtColor(img, COLOR_BGR2HSV)`` for uint8 ``(H, W, 3)`` BGR images.

    Integer arithmetic as OpenCV: ``v = max``, ``diff = v - min``,
    ``s = (diff * round(255 * 2^12 / v) + 2^11) >> 12``, hue numerator ``g - b``
    (v == r), ``b - r + 2 diff`` (v == g) or ``r - g + 4 diff``, times
    ``round(180 * 2^12 / (6 diff))``, rounded shift by 12, + 180 if negative.
    Returns uint8 ``(H, W, 3)``: H in [0, 180) (degrees / 2), S and V in [0, 255].
    Example: BGR (0, 0, 255) (red) -> HSV (0, 255, 255); BGR (255, 0, 0) -> (120, 255, 255).
    """
    return np.stack(_bgr_to_hsv_planes(img), axis=-1).astype(np.uint8)


def _hsv_multipliers() -> np.ndarray:
    """``(180 * 256, 3)`` float32: for each (h, s), the factor of ``v / 255`` that gives
    b, g, r in OpenCV's vectorised 8-bit HSV2BGR: ``h' = h * 6/180``, sector
    ``trunc(h') mod 6``, ``f = h' - trunc(h')``, factors ``1``, ``1 - s``,
    ``1 - s f``, ``1 - s (1 - f)`` (``s`` in [0, 1]; ``1 - s*x`` rounded once, as the
    fused multiply-add of OpenCV's build) picked per sector."""
    f32 = np.float32
    h = np.arange(180, dtype=f32)[:, None] * f32(6.0 / 180.0)
    s = np.arange(256, dtype=f32)[None, :] * f32(1.0 / 255.0)
    h, s = np.broadcast_arrays(h, s)
    pre = np.trunc(h)
    f = h - pre
    s64 = s.astype(np.float64)
    factors = np.stack(
        [np.ones_like(s), f32(1.0) - s, (1.0 - s64 * f).astype(f32), (1.0 - s64 * (f32(1.0) - f)).astype(f32)], -1
    )
    sector = (pre - np.trunc(pre * f32(1.0 / 6.0)) * f32(6.0)).astype(np.int64)
    which = np.array([[1, 3, 0], [1, 0, 2], [3, 0, 1], [0, 2, 1], [0, 1, 3], [2, 1, 0]])  # b, g, r per sector
    return np.take_along_axis(factors, which[sector], axis=-1).reshape(180 * 256, 3)


_HSV_FACTORS = _hsv_multipliers()
_V_SCALED = np.arange(256, dtype=np.float32) * np.float32(1.0 / 255.0)


def _hsv_planes_to_bgr(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """uint8 ``(H, W, 3)`` BGR from integer h (0-179), s, v planes (see :func:`hsv_to_bgr`)."""
    shape = h.shape + (3,)
    out = _HSV_FACTORS.take((h.astype(np.int32) * 256 + s).reshape(-1), axis=0)  # (N, 3) factors of b, g, r
    out *= _V_SCALED.take(v.reshape(-1))[:, None]
    out *= np.float32(255.0)
    return out.astype(np.uint8).reshape(shape)


def hsv_to_bgr(hsv: np.ndarray) -> np.ndarray:
    """OpenCV's ``cvtColor(hsv, COLOR_HSV2BGR)`` for uint8 ``(H, W, 3)`` with H in [0, 180).

    Each channel is ``trunc(float32(v / 255) * factor(h, s) * 255)`` with the factors of
    OpenCV's vectorised path (:func:`_hsv_multipliers`): equal to opencv-python 4.14
    and 5.0 on all 11.8M HSV values. OpenCV itself runs the last ``W mod 64`` pixels of
    each row (64 on AVX-512 CPUs, 32 with AVX2) through a scalar path that rounds
    instead of truncating, so for such widths those pixels may differ by 1.
    Example: HSV (0, 255, 255) -> BGR (0, 0, 255).
    """
    if hsv[..., 0].max(initial=0) >= 180:
        raise ValueError("hsv_to_bgr: hue must be in [0, 180).")
    return _hsv_planes_to_bgr(hsv[..., 0], hsv[..., 1], hsv[..., 2])


class HSVTransform(T.Transform):
    """Shift hue, saturation and value of a uint8 image by integer ``gains`` as
    mmdetection's ``YOLOXHSVRandomAug``: convert to HSV (OpenCV's 8-bit arithmetic),
    ``h = (h + gains[0]) % 180``, ``s = clip(s + gains[1], 0, 255)``,
    ``v = clip(v + gains[2], 0, 255)``, convert back (also for zero gains: the round
    trip itself changes some pixels, as in mmdetection). Boxes are unchanged.

    Args:
        gains: three ints (hue, saturation, value).
        image_format: "BGR" or "RGB" (the conversion is defined on BGR). Defaults to "BGR".
    """

    def __init__(self, gains: Sequence[int], image_format: str = "BGR"):
        super().__init__()
        if image_format not in ("BGR", "RGB"):
            raise ValueError(f"HSVTransform: image_format must be 'BGR' or 'RGB', got {image_format!r}.")
        self.gains = tuple(int(g) for g in gains)
        self.image_format = image_format

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"HSVTransform needs a uint8 (H, W, 3) image, got {img.dtype} {img.shape}.")
        bgr = img if self.image_format == "BGR" else img[..., ::-1]
        h, s, v = _bgr_to_hsv_planes(bgr)
        # the shifts as lookup tables over the 180 / 256 possible values
        dh, ds, dv = self.gains
        levels = np.arange(256, dtype=np.int32)
        h = ((np.arange(180, dtype=np.int32) + dh) % 180).take(h)
        s = np.clip(levels + ds, 0, 255).take(s)
        v = np.clip(levels + dv, 0, 255).take(v)
        out = _hsv_planes_to_bgr(h, s, v)
        return out if self.image_format == "BGR" else np.ascontiguousarray(out[..., ::-1])

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords

    def inverse(self) -> T.Transform:
        return T.NoOpTransform()


# -------------------------------------------------------------------------- augmentations
def _check_hw(name: str, value: Union[int, Sequence[int]]) -> Tuple[int, int]:
    size = (value, value) if isinstance(value, int) else tuple(value)
    if len(size) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in size):
        raise ValueError(f"{name} must be a positive int or (height, width) of positive ints, got {value!r}.")
    return int(size[0]), int(size[1])


class RandomResize(T.Augmentation):
    """Resize to a random scale (mmcv's ``RandomResize`` with mmdetection's ``Resize``).

    ``ratio`` is drawn uniformly from ``ratio_range`` and the target is
    ``(int(scale[0] * ratio), int(scale[1] * ratio))``; with ``keep_ratio`` the image
    is rescaled to the largest size inside it with the same aspect ratio
    (:func:`rescale_size`), else resized to it exactly. Boxes are scaled by
    ``new_w / w``, ``new_h / h`` and clipped to the new image (``clip_object_border``).

    Args:
        scale: (height, width) base scale. RTMDet: (1280, 1280) in stage 1, (640, 640) in stage 2.
        ratio_range: (min, max) ratio. RTMDet: (0.5, 2.0) for tiny and s, (0.1, 2.0) for l.
        keep_ratio: Defaults to True.
        clip_object_border: Defaults to True.

    Example: a 640x480 (w x h) image, ``scale=(1280, 1280)`` and ratio 0.5 -> target
    640x640 -> 640x480 (factor 1.0).
    """

    def __init__(
        self,
        scale: Union[int, Tuple[int, int]],
        ratio_range: Tuple[float, float],
        keep_ratio: bool = True,
        clip_object_border: bool = True,
    ):
        super().__init__()
        self.scale = _check_hw("RandomResize: scale", scale)
        lo, hi = (float(r) for r in ratio_range)
        if not 0 < lo <= hi:
            raise ValueError(f"RandomResize: ratio_range must be (min, max) with 0 < min <= max, got {ratio_range}.")
        self.ratio_range = (lo, hi)
        self.keep_ratio = keep_ratio
        self.clip_object_border = clip_object_border

    def target_size(self, h: int, w: int, ratio: float) -> Tuple[int, int]:
        """Output ``(new_h, new_w)`` of an ``h x w`` image for a drawn ``ratio``."""
        target_h, target_w = int(self.scale[0] * ratio), int(self.scale[1] * ratio)
        if not self.keep_ratio:
            return max(target_h, 1), max(target_w, 1)
        (new_w, new_h), _ = rescale_size((w, h), (target_w, target_h))
        return max(new_h, 1), max(new_w, 1)

    def get_transform(self, image: np.ndarray, rng: np.random.Generator) -> T.Transform:
        lo, hi = self.ratio_range
        ratio = rng.random() * (hi - lo) + lo
        h, w = image.shape[:2]
        new_h, new_w = self.target_size(h, w, ratio)
        return LinearResizeTransform(h, w, new_h, new_w)

    def __call__(self, aug_input: DetAugInput) -> T.Transform:
        tfm = self.get_transform(aug_input.image, aug_input.rng)
        aug_input.transform(tfm)
        if self.clip_object_border and len(aug_input.boxes):
            aug_input.boxes = clip_boxes(aug_input.boxes, tfm.new_h, tfm.new_w)
        return tfm


class RandomCrop(T.Augmentation):
    """Crop a random window (mmdetection's ``RandomCrop``, ``crop_type="absolute"``).

    The window is ``(min(crop_h, H), min(crop_w, W))`` at a uniform random integer
    offset. Boxes are shifted, clipped to the window (``bbox_clip_border``) and kept if
    they overlap it (:func:`boxes_inside`). If no box is left and
    ``allow_negative_crop`` is False, :class:`SampleRejected` is raised (mmdetection
    returns None and its dataset loads another image; d2lite's MapDataset does the same).

    Args:
        crop_size: (height, width). RTMDet: (640, 640).
        allow_negative_crop: Defaults to False.
        bbox_clip_border: Defaults to True.
    """

    def __init__(
        self,
        crop_size: Union[int, Tuple[int, int]],
        allow_negative_crop: bool = False,
        bbox_clip_border: bool = True,
    ):
        super().__init__()
        self.crop_size = _check_hw("RandomCrop: crop_size", crop_size)
        self.allow_negative_crop = allow_negative_crop
        self.bbox_clip_border = bbox_clip_border

    def get_transform(self, image: np.ndarray, rng: np.random.Generator) -> T.CropTransform:
        h, w = image.shape[:2]
        crop_h, crop_w = min(self.crop_size[0], h), min(self.crop_size[1], w)
        offset_h = int(rng.integers(0, max(h - crop_h, 0) + 1))
        offset_w = int(rng.integers(0, max(w - crop_w, 0) + 1))
        return T.CropTransform(offset_w, offset_h, crop_w, crop_h, w, h)

    def __call__(self, aug_input: DetAugInput) -> T.Transform:
        tfm = self.get_transform(aug_input.image, aug_input.rng)
        aug_input.transform(tfm)
        boxes = aug_input.boxes
        if self.bbox_clip_border:
            boxes = clip_boxes(boxes, tfm.h, tfm.w)
        aug_input.boxes = boxes
        valid = boxes_inside(boxes, tfm.h, tfm.w)
        if not valid.any() and not self.allow_negative_crop:
            raise SampleRejected(f"RandomCrop: the {tfm.w}x{tfm.h} crop at ({tfm.x0}, {tfm.y0}) keeps no box")
        aug_input.keep(valid)
        return tfm


class YOLOXHSVRandomAug(T.Augmentation):
    """mmdetection's ``YOLOXHSVRandomAug``: gains ``uniform(-1, 1, 3) * (hue_delta,
    saturation_delta, value_delta)``, each kept with probability 1/2
    (``* randint(0, 2, 3)``), truncated to int16; then :class:`HSVTransform`.

    Args:
        hue_delta: Defaults to 5 (hue units of 2 degrees).
        saturation_delta: Defaults to 30.
        value_delta: Defaults to 30.
    """

    def __init__(self, hue_delta: int = 5, saturation_delta: int = 30, value_delta: int = 30):
        super().__init__()
        self.hue_delta = hue_delta
        self.saturation_delta = saturation_delta
        self.value_delta = value_delta

    def draw_gains(self, rng: np.random.Generator) -> np.ndarray:
        """Three int16 gains (hue, saturation, value)."""
        gains = rng.uniform(-1, 1, 3) * [self.hue_delta, self.saturation_delta, self.value_delta]
        gains *= rng.integers(0, 2, 3)
        return gains.astype(np.int16)

    def get_transform(self, rng: np.random.Generator, image_format: str = "BGR") -> HSVTransform:
        return HSVTransform(self.draw_gains(rng), image_format)

    def __call__(self, aug_input: DetAugInput) -> T.Transform:
        tfm = self.get_transform(aug_input.rng, aug_input.image_format)
        aug_input.transform(tfm)
        return tfm


class RandomFlip(T.Augmentation):
    """Flip with probability ``prob`` (mmdetection's ``RandomFlip`` with one direction):
    ``x -> W - x`` (horizontal), ``y -> H - y`` (vertical) or both ("diagonal").

    Args:
        prob: Defaults to 0.5.
        direction: "horizontal", "vertical" or "diagonal". Defaults to "horizontal".
    """

    def __init__(self, prob: float = 0.5, direction: str = "horizontal"):
        super().__init__()
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"RandomFlip: prob must be in [0, 1], got {prob}.")
        if direction not in ("horizontal", "vertical", "diagonal"):
            raise ValueError(f"RandomFlip: direction must be horizontal, vertical or diagonal, got {direction!r}.")
        self.prob = prob
        self.direction = direction

    def get_transform(self, image: np.ndarray, rng: np.random.Generator) -> T.Transform:
        h, w = image.shape[:2]
        if not rng.random() < self.prob:
            return T.NoOpTransform()
        if self.direction == "horizontal":
            return T.HFlipTransform(w)
        if self.direction == "vertical":
            return T.VFlipTransform(h)
        return T.TransformList([T.HFlipTransform(w), T.VFlipTransform(h)])

    def __call__(self, aug_input: DetAugInput) -> T.Transform:
        tfm = self.get_transform(aug_input.image, aug_input.rng)
        aug_input.transform(tfm)
        return tfm


class Pad(T.Augmentation):
    """Pad the bottom and right to ``size`` with ``pad_val`` (mmdetection's ``Pad(size=...)``);
    an image already larger in a dimension is left as is there. Boxes are unchanged.

    Args:
        size: (height, width). RTMDet: (640, 640).
        pad_val: image padding value. Defaults to 114.
    """

    def __init__(self, size: Union[int, Tuple[int, int]], pad_val: float = 114):
        super().__init__()
        self.size = _check_hw("Pad: size", size)
        self.pad_val = pad_val

    def get_transform(self, image: np.ndarray) -> T.Transform:
        h, w = image.shape[:2]
        pad_h, pad_w = max(self.size[0] - h, 0), max(self.size[1] - w, 0)
        if pad_h == 0 and pad_w == 0:
            return T.NoOpTransform()
        return T.PadTransform(0, 0, pad_w, pad_h, w, h, pad_value=self.pad_val)

    def __call__(self, aug_input: DetAugInput) -> T.Transform:
        tfm = self.get_transform(aug_input.image)
        aug_input.transform(tfm)
        return tfm
