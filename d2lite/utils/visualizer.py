"""Draw detection boxes on images (used by TensorBoard images and the tools).

Only boxes, class names and scores: d2lite is box detection only, so a few
lines of PIL replace detectron2's full Visualizer.
"""

from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageDraw

__all__ = ["draw_boxes", "image_to_rgb", "layout_labels"]

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


Rect = Tuple[float, float, float, float]


def _overlap(a: Rect, b: Rect) -> float:
    """Area of the intersection of two XYXY rectangles."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return max(w, 0.0) * max(h, 0.0)


def layout_labels(
    boxes: Sequence[Rect], sizes: Sequence[Tuple[float, float]], image_size: Tuple[int, int]
) -> List[Rect]:
    """Place one label per box: inside the image, off the labelled box where there is
    room, and not over another label where there is room.

    Labels are placed in the given order (put the most important first). Each one
    tries, in turn: above the box, below it, one and two label rows further out, then
    inside its top and bottom edges (each left- then right-aligned); every position is
    shifted into the image. It takes
    the position with the least overlap with labels placed before, then the least
    cover of its own box, then of the other boxes, then the earliest in that list.

    Args:
        boxes: (N,) XYXY boxes in pixels.
        sizes: (N,) label (width, height) in pixels.
        image_size: (height, width) of the image.

    Returns:
        (N,) XYXY label rectangles, inside ``[0, width] x [0, height]`` (a label
        larger than the image starts at its top-left corner).
    """
    height, width = image_size
    placed: List[Rect] = []
    for (x0, y0, x1, y1), (w, h) in zip(boxes, sizes):
        candidates = []
        # above, below, then a row further out each, then inside the top and bottom edges
        for top in (y0 - h, y1, y0 - 2 * h, y1 + h, y0 - 3 * h, y1 + 2 * h, y0, y1 - h):
            for left in (x0, x1 - w):
                x = min(max(left, 0.0), max(width - w, 0.0))
                y = min(max(top, 0.0), max(height - h, 0.0))
                candidates.append((x, y, x + w, y + h))
        best = min(
            range(len(candidates)),
            key=lambda i: (
                sum(_overlap(candidates[i], p) for p in placed),
                _overlap(candidates[i], (x0, y0, x1, y1)),
                sum(_overlap(candidates[i], b) for b in boxes),
                i,
            ),
        )
        placed.append(candidates[best])
    return placed


def draw_boxes(
    image: np.ndarray,
    boxes,
    classes: Optional[Sequence[int]] = None,
    scores: Optional[Sequence[float]] = None,
    class_names: Optional[Sequence[str]] = None,
    line_width: int = 2,
) -> np.ndarray:
    """Draw boxes with optional "name score" labels.

    Identical boxes (e.g. one RetinaNet anchor scoring for two classes) are drawn once
    with one label listing the classes by decreasing score ("circle 0.81, square
    0.12"). Labels are laid out by :func:`layout_labels` (highest score first): inside
    the image, off their box where there is room, never over another label where
    there is room.

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
    boxes = _to_numpy(boxes).reshape(-1, 4).astype(np.float64)
    classes = None if classes is None else _to_numpy(classes).reshape(-1)
    scores = None if scores is None else _to_numpy(scores).reshape(-1)
    canvas = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    draw = ImageDraw.Draw(canvas)

    # One entry per distinct box: (box, [(score, class index or None)]), best score first.
    order = np.argsort(-scores, kind="stable") if scores is not None else np.arange(len(boxes))
    entries: List[Tuple[Rect, List[Tuple[Optional[float], Optional[int]]]]] = []
    for i in order.tolist():
        box = tuple(boxes[i].tolist())
        item = (None if scores is None else float(scores[i]), None if classes is None else int(classes[i]))
        for other, items in entries:
            if max(abs(a - b) for a, b in zip(box, other)) < 0.5:
                items.append(item)
                break
        else:
            entries.append((box, [item]))

    def name(cls: Optional[int]) -> str:
        if cls is None:
            return ""
        return class_names[cls] if class_names is not None and cls < len(class_names) else str(cls)

    texts, colors = [], []
    for box, items in entries:
        cls = items[0][1]
        colors.append(_PALETTE[(cls or 0) % len(_PALETTE)])
        draw.rectangle(list(box), outline=colors[-1], width=line_width)
        parts = [" ".join(p for p in (name(c), "" if sc is None else f"{sc:.2f}") if p) for sc, c in items]
        texts.append(", ".join(p for p in parts if p))

    labelled = [i for i, t in enumerate(texts) if t]
    pad = 1
    extents = [draw.textbbox((0, 0), texts[i]) for i in labelled]
    sizes = [(r - lft + 2 * pad, b - t + 2 * pad) for lft, t, r, b in extents]
    rects = layout_labels([entries[i][0] for i in labelled], sizes, (canvas.height, canvas.width))
    for i, (lft, t, _, _), rect in zip(labelled, extents, rects):
        draw.rectangle([rect[0], rect[1], rect[2] - 1, rect[3] - 1], fill=colors[i])
        draw.text((rect[0] + pad - lft, rect[1] + pad - t), texts[i], fill=(0, 0, 0))
    return np.asarray(canvas)


def image_to_rgb(image: torch.Tensor, input_format: str = "BGR") -> np.ndarray:
    """(C, H, W) model-input tensor in ``input_format`` -> (H, W, 3) uint8 RGB array."""
    array = _to_numpy(image).transpose(1, 2, 0)
    if input_format == "BGR":
        array = array[:, :, ::-1]
    elif input_format == "L":
        array = np.repeat(array, 3, axis=2)
    return np.clip(array, 0, 255).astype(np.uint8)
