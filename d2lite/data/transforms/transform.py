"""Deterministic transforms that complement :mod:`fvcore.transforms`.

As in detectron2, the base class, :class:`TransformList`, flips, crop, pad and
blend come from fvcore; this module adds resize, extent and colour transforms.
Coordinates are ``(N, 2)`` float arrays of absolute ``(x, y)`` pixels; boxes are
``(N, 4)`` XYXY absolute pixels; images are ``(H, W)`` or ``(H, W, C)`` arrays.
"""

from typing import Callable, Tuple

import numpy as np
import torch
import torch.nn.functional as F
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

__all__ = [
    "Transform",
    "TransformList",
    "NoOpTransform",
    "HFlipTransform",
    "VFlipTransform",
    "CropTransform",
    "PadTransform",
    "BlendTransform",
    "ResizeTransform",
    "ExtentTransform",
    "ColorTransform",
    "PILColorTransform",
]

_PIL_TO_TORCH_INTERP = {
    Image.NEAREST: "nearest",
    Image.BILINEAR: "bilinear",
    Image.BICUBIC: "bicubic",
}


class ResizeTransform(Transform):
    """Resize an image from ``(h, w)`` to ``(new_h, new_w)``.

    Args:
        h, w: original image size in pixels.
        new_h, new_w: output size in pixels.
        interp: a PIL interpolation constant. Defaults to ``Image.BILINEAR``.
    """

    def __init__(self, h: int, w: int, new_h: int, new_w: int, interp: int = None):
        super().__init__()
        if interp is None:
            interp = Image.BILINEAR
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray, interp: int = None) -> np.ndarray:
        if img.shape[:2] != (self.h, self.w):
            raise ValueError(
                f"ResizeTransform expects an image of size {(self.h, self.w)}, got {tuple(img.shape[:2])}."
            )
        interp_method = interp if interp is not None else self.interp
        if img.dtype == np.uint8 and (img.ndim == 2 or img.shape[2] in (1, 3, 4)):
            if img.ndim == 3 and img.shape[2] == 1:
                pil_image = Image.fromarray(img[:, :, 0], mode="L")
            else:
                pil_image = Image.fromarray(img)
            pil_image = pil_image.resize((self.new_w, self.new_h), interp_method)
            ret = np.asarray(pil_image)
            if img.ndim == 3 and img.shape[2] == 1:
                ret = np.expand_dims(ret, -1)
            return ret
        # Float images or unusual channel counts: resize with torch.
        shape = list(img.shape)
        shape_4d = shape[:2] + [1] * (4 - len(shape)) + shape[2:]
        t = torch.from_numpy(np.ascontiguousarray(img)).view(shape_4d).permute(2, 3, 0, 1)
        mode = _PIL_TO_TORCH_INTERP[interp_method]
        align_corners = None if mode == "nearest" else False
        t = F.interpolate(t.float(), (self.new_h, self.new_w), mode=mode, align_corners=align_corners)
        shape[:2] = (self.new_h, self.new_w)
        return t.permute(2, 3, 0, 1).reshape(shape).numpy().astype(img.dtype, copy=False)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords = np.asarray(coords, dtype=np.float64).copy()
        coords[:, 0] = coords[:, 0] * (self.new_w * 1.0 / self.w)
        coords[:, 1] = coords[:, 1] * (self.new_h * 1.0 / self.h)
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return self.apply_image(segmentation, interp=Image.NEAREST)

    def inverse(self) -> Transform:
        return ResizeTransform(self.new_h, self.new_w, self.h, self.w, self.interp)


class ExtentTransform(Transform):
    """Crop the rectangle ``src_rect`` (x0, y0, x1, y1; may extend outside the
    image, filled with ``fill``) and resize it to ``output_size`` (h, w)."""

    def __init__(
        self,
        src_rect: Tuple[float, float, float, float],
        output_size: Tuple[int, int],
        interp: int = Image.BILINEAR,
        fill: int = 0,
    ):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray, interp: int = None) -> np.ndarray:
        h, w = self.output_size
        if img.ndim == 3 and img.shape[2] == 1:
            pil_image = Image.fromarray(img[:, :, 0], mode="L")
        else:
            pil_image = Image.fromarray(img)
        pil_image = pil_image.transform(
            size=(w, h),
            method=Image.EXTENT,
            data=self.src_rect,
            resample=interp if interp is not None else self.interp,
            fill=self.fill,
        )
        ret = np.asarray(pil_image)
        if img.ndim == 3 and img.shape[2] == 1:
            ret = np.expand_dims(ret, -1)
        return ret

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        h, w = self.output_size
        x0, y0, x1, y1 = self.src_rect
        new_coords = np.asarray(coords, dtype=np.float32).copy()
        # Move the rectangle centre to the origin, scale, then move to the output centre.
        new_coords[:, 0] -= 0.5 * (x0 + x1)
        new_coords[:, 1] -= 0.5 * (y0 + y1)
        new_coords[:, 0] *= w / (x1 - x0)
        new_coords[:, 1] *= h / (y1 - y0)
        new_coords[:, 0] += 0.5 * w
        new_coords[:, 1] += 0.5 * h
        return new_coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return self.apply_image(segmentation, interp=Image.NEAREST)


class ColorTransform(Transform):
    """Apply ``op(img) -> img`` to the image only; coordinates and segmentation are unchanged."""

    def __init__(self, op: Callable[[np.ndarray], np.ndarray]):
        if not callable(op):
            raise ValueError(f"ColorTransform expects a callable op, got {type(op)}.")
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        return self.op(img)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords

    def inverse(self) -> Transform:
        return NoOpTransform()

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return segmentation


class PILColorTransform(ColorTransform):
    """Like :class:`ColorTransform`, but ``op`` takes and returns a ``PIL.Image``."""

    def __init__(self, op: Callable[[Image.Image], Image.Image]):
        if not callable(op):
            raise ValueError(f"PILColorTransform expects a callable op, got {type(op)}.")
        super().__init__(op)

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        return np.asarray(super().apply_image(Image.fromarray(img)))
