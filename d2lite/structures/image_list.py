"""A batch of images of different sizes padded into one tensor: :class:`ImageList`."""

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch.nn import functional as F

__all__ = ["ImageList"]


class ImageList:
    """Images of possibly different sizes, padded into a single tensor.

    Attributes:
        tensor: (N, C, Hmax, Wmax) (or (N, Hmax, Wmax)) padded batch; images sit at
            the top-left, padding is at the right and bottom.
        image_sizes: list of N (height, width) of each image before padding.
    """

    def __init__(self, tensor: torch.Tensor, image_sizes: List[Tuple[int, int]]):
        self.tensor = tensor
        self.image_sizes = image_sizes

    def __len__(self) -> int:
        return len(self.image_sizes)

    def __getitem__(self, idx: int) -> torch.Tensor:
        """Returns: image ``idx`` without padding, shape (C, H, W)."""
        size = self.image_sizes[idx]
        return self.tensor[idx, ..., : size[0], : size[1]]

    def to(self, *args: Any, **kwargs: Any) -> "ImageList":
        return ImageList(self.tensor.to(*args, **kwargs), self.image_sizes)

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    @staticmethod
    def from_tensors(
        tensors: Sequence[torch.Tensor],
        size_divisibility: int = 0,
        pad_value: float = 0.0,
        padding_constraints: Optional[Dict[str, int]] = None,
    ) -> "ImageList":
        """Pad and batch a list of images.

        Args:
            tensors: images of shape (..., H, W) with identical leading dims (e.g. C).
            size_divisibility: if > 1, pad the batch so H and W are multiples of it
                (the backbone's largest stride, e.g. 32 or 128).
            pad_value: value of the padded pixels.
            padding_constraints: optional dict with ``"size_divisibility"`` (overrides
                the argument) and/or ``"square_size"`` (pad to a square of that size).

        Returns:
            ImageList with tensor (N, ..., Hpad, Wpad) and the original sizes.
        """
        if len(tensors) == 0:
            raise ValueError("ImageList.from_tensors needs at least one image")
        if not isinstance(tensors, (tuple, list)):
            raise TypeError(f"ImageList.from_tensors expects a list/tuple of tensors, got {type(tensors)}")
        for i, t in enumerate(tensors):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"ImageList.from_tensors: image {i} is {type(t)}, not a Tensor")
            if t.shape[:-2] != tensors[0].shape[:-2]:
                raise ValueError(
                    f"ImageList.from_tensors: image {i} has shape {tuple(t.shape)}, whose leading dims "
                    f"differ from image 0's {tuple(tensors[0].shape)}"
                )

        image_sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in tensors]
        max_h = max(s[0] for s in image_sizes)
        max_w = max(s[1] for s in image_sizes)

        if padding_constraints is not None:
            square_size = padding_constraints.get("square_size", 0)
            if square_size > 0:
                if square_size < max(max_h, max_w):
                    raise ValueError(
                        f"padding_constraints square_size={square_size} is smaller than the largest "
                        f"image ({max_h}x{max_w})"
                    )
                max_h = max_w = square_size
            if "size_divisibility" in padding_constraints:
                size_divisibility = padding_constraints["size_divisibility"]
        if size_divisibility > 1:
            stride = size_divisibility
            max_h = (max_h + stride - 1) // stride * stride
            max_w = (max_w + stride - 1) // stride * stride

        if len(tensors) == 1:
            h, w = image_sizes[0]
            padding = [0, max_w - w, 0, max_h - h]  # (left, right, top, bottom)
            batched = F.pad(tensors[0], padding, value=pad_value).unsqueeze_(0)
        else:
            batch_shape = [len(tensors)] + list(tensors[0].shape[:-2]) + [max_h, max_w]
            batched = tensors[0].new_full(batch_shape, pad_value)
            for img, pad_img in zip(tensors, batched):
                pad_img[..., : img.shape[-2], : img.shape[-1]].copy_(img)
        return ImageList(batched.contiguous(), image_sizes)
