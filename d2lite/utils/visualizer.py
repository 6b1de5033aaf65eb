"""Draw detection boxes on images (used by TensorBoard images and the tools).

Only boxes, class names and scores: d2lite is box detection only, so a few
lines of PIL replace detectron2's full Visualizer.
"""

from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

_PALETTE = [
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (220, 190, 255),
    (170, 110, 40),
    (128, 0, 0),
    (170, 255, 195),
]


def _to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def draw_boxes(
    image: np.ndarray,
    boxes,
    classes: Optional[Sequence[int]] = None,
    scores: Optional[Sequence[float]] = None,
    class_names: Optional[Sequence[str]] = None,
    line_width: int = 2,
) -> np.ndarray:
    """Draw boxes with optional "name score" labels.

    Args:
        image: (H, W, 3) uint8 RGB image.
        boxes: (N, 4) XYXY absolute pixels (array, tensor or d2lite Boxes).
        classes: (N,) contiguous class indices; picks the colour and the name.
        scores: (N,) confidences in [0, 1], printed after the name.
        class_names: names indexed by class; defaults to the index.

    Returns:
        (H, W, 3) uint8 RGB image with the boxes drawn (the input is not modified).
    """
    if hasattr(boxes, "tensor"):
        boxes = boxes.tensor
    boxes = _to_numpy(boxes).reshape(-1, 4)
    classes = None if classes is None else _to_numpy(classes).reshape(-1)
    scores = None if scores is None else _to_numpy(scores).reshape(-1)
    canvas = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    draw = ImageDraw.Draw(canvas)
    for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        cls = int(classes[i]) if classes is not None else 0
        color = _PALETTE[cls % len(_PALETTE)]
        draw.rectangle([x0, y0, x1, y1], outline=color, width=line_width)
        label = []
        if classes is not None:
            label.append(class_names[cls] if class_names is not None and cls < len(class_names) else str(cls))
        if scores is not None:
            label.append(f"{float(scores[i]):.2f}")
        if label:
            text = " ".join(label)
            tx, ty = x0, max(0.0, y0 - 11)
            text_box = draw.textbbox((tx, ty), text)
            draw.rectangle(text_box, fill=color)
            draw.text((tx, ty), text, fill=(0, 0, 0))
    return np.asarray(canvas)


def image_to_rgb(image: torch.Tensor, input_format: str = "BGR") -> np.ndarray:
    """(C, H, W) model-input tensor in ``input_format`` -> (H, W, 3) uint8 RGB array."""
    array = _to_numpy(image).transpose(1, 2, 0)
    if input_format == "BGR":
        array = array[:, :, ::-1]
    elif input_format == "L":
        array = np.repeat(array, 3, axis=2)
    return np.clip(array, 0, 255).astype(np.uint8)
