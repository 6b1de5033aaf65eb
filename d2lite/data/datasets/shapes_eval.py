"""``shapes_eval``: a second synthetic generator of the shapes classes, for evaluation only.

It tests whether a model trained on ``shapes_train`` learned *circles, squares and
triangles* or the look of :mod:`.shapes`. Its drawing code shares nothing with
:func:`.shapes.render_shapes_image` except the annotation conventions (COCO json,
tight box of the visible pixels, objects less than 40 % visible are not annotated):

* backgrounds are textures (stripes, checkerboards, smooth value noise) in colours
  drawn from HSV, not two-colour gradients;
* objects are filled with a gradient or a texture of two colours (their mean at least
  70 RGB units from the colours under the object), half of them get a dark or light outline, and they are stretched by an aspect ratio of 0.75-1.33
  (ellipses, rectangles and squat/tall triangles that are still clearly the class);
* sizes are 10-110 px (shapes: 12-90), images 160-320 px (shapes: 128-256);
* the clutter is other shapes: five-pointed stars, crosses, long thin bars and
  hexagons' outlines, plus a Gaussian blur on some images and stronger noise.

``register_shapes_eval(root)`` registers ``shapes_eval`` (200 images, seed 7) with the
classes of ``shapes_train``; like shapes, the files are written under
``<root>/shapes_eval`` on the first ``DatasetCatalog.get("shapes_eval")``.
"""

from __future__ import annotations

import math
import os
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .shapes import CLASS_NAMES, ShapesImage, generate_shapes, shapes_class_metadata

__all__ = ["SHAPES_EVAL_SPLITS", "render_shapes_eval_image", "register_shapes_eval"]

# dataset name -> (split, number of images, seed)
SHAPES_EVAL_SPLITS: dict[str, tuple[str, int, int]] = {"shapes_eval": ("eval", 200, 7)}

GENERATOR_VERSION = 1
IMAGE_SIDE_RANGE = (160, 320)  # inclusive
OBJECTS_PER_IMAGE = (1, 7)  # inclusive
OBJECT_SIZE_RANGE = (10.0, 110.0)  # longest side of the unoccluded object's box, pixels
ASPECT_RANGE = (0.75, 4.0 / 3.0)  # width / height stretch of an object
MIN_VISIBLE_FRACTION = 0.4
PLACEMENT_TRIES = 10
MIN_CONTRAST = 70.0  # RGB distance of an object's mean fill colour to the mean colour under it
MIN_CONTRAST_TRIES = 10
_SEED_SALT = 0x0E7A15  # keeps these generators apart from shapes' (seed, index) streams


def _hsv_color(rng: np.random.Generator, value: tuple[float, float] = (0.15, 1.0)) -> np.ndarray:
    """An RGB colour (float32, 0-255) from uniform hue, saturation 0.2-1 and the given value range."""
    h, s, v = rng.uniform(0, 1), rng.uniform(0.2, 1.0), rng.uniform(*value)
    i = int(h * 6) % 6
    f = h * 6 - math.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.asarray(rgb, dtype=np.float32) * 255.0


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(H, W) float32 in [0, 1]: stripes, a checkerboard or smooth value noise."""
    kind = int(rng.integers(0, 3))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == 0:  # stripes at a random angle and period
        theta, period = rng.uniform(0, math.pi), rng.uniform(6.0, 40.0)
        proj = math.cos(theta) * xx + math.sin(theta) * yy
        return (0.5 + 0.5 * np.sin(2 * math.pi * proj / period)).astype(np.float32)
    if kind == 1:  # checkerboard
        cell = int(rng.integers(8, 48))
        return (((yy // cell) + (xx // cell)) % 2).astype(np.float32)
    # value noise: a coarse random grid, bilinearly upsampled by PIL
    gh, gw = int(rng.integers(3, 9)), int(rng.integers(3, 9))
    coarse = (rng.uniform(0, 255, (gh, gw))).astype(np.uint8)
    smooth = Image.fromarray(coarse, mode="L").resize((w, h), Image.BILINEAR)
    return np.asarray(smooth, dtype=np.float32) / 255.0


def _mask(h: int, w: int, draw: Callable[[ImageDraw.ImageDraw], None]) -> np.ndarray:
    canvas = Image.new("L", (w, h), 0)
    draw(ImageDraw.Draw(canvas))
    return np.asarray(canvas) > 0


def _object_polygon(rng: np.random.Generator, category_id: int, size: float) -> np.ndarray:
    """(K, 2) outline of a stretched, rotated object (K=64 for the circle), box longest side ``size``,
    top-left corner of its box at (0, 0)."""
    aspect = rng.uniform(*ASPECT_RANGE)
    if category_id == 1:
        t = np.linspace(0, 2 * math.pi, 64, endpoint=False)
        pts = np.stack([np.cos(t), np.sin(t)], axis=1)
    else:
        k = 4 if category_id == 2 else 3
        t = rng.uniform(0, 2 * math.pi) + 2 * math.pi * np.arange(k) / k
        pts = np.stack([np.cos(t), np.sin(t)], axis=1)
    pts = pts * [aspect, 1.0]  # stretch before rotating the ellipse/rectangle as a whole
    angle = rng.uniform(0, 2 * math.pi)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    pts = pts @ rot.T
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    return (pts - lo) * ((size - 1) / (hi - lo).max())


def _star_or_cross(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Clutter: a five-pointed star, a cross, a long thin bar or a hexagon outline."""
    kind = int(rng.integers(0, 4))
    r = rng.uniform(6.0, 40.0)
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    a0 = rng.uniform(0, 2 * math.pi)
    if kind == 0:  # star: alternating outer / inner radius
        t = a0 + np.arange(10) * math.pi / 5
        rr = np.where(np.arange(10) % 2 == 0, r, 0.4 * r)
        poly = list(zip((cx + rr * np.cos(t)).tolist(), (cy + rr * np.sin(t)).tolist()))
        return _mask(h, w, lambda d: d.polygon(poly, fill=1))
    if kind == 1:  # cross: two perpendicular thick lines
        width = max(2, int(r / 3))
        ends = [(cx + r * math.cos(a0 + k * math.pi / 2), cy + r * math.sin(a0 + k * math.pi / 2)) for k in range(4)]

        def draw_cross(d: ImageDraw.ImageDraw) -> None:
            d.line([ends[0], ends[2]], fill=1, width=width)
            d.line([ends[1], ends[3]], fill=1, width=width)

        return _mask(h, w, draw_cross)
    if kind == 2:  # bar: aspect ratio 6-15, never a square
        length, width = 2.5 * r, max(2, int(2.5 * r / rng.uniform(6, 15)))
        p0 = (cx - length * math.cos(a0), cy - length * math.sin(a0))
        p1 = (cx + length * math.cos(a0), cy + length * math.sin(a0))
        return _mask(h, w, lambda d: d.line([p0, p1], fill=1, width=width))
    t = a0 + np.arange(6) * math.pi / 3  # hexagon outline
    poly = list(zip((cx + r * np.cos(t)).tolist(), (cy + r * np.sin(t)).tolist()))
    return _mask(h, w, lambda d: d.polygon(poly, outline=1, width=max(1, int(r / 8))))


def render_shapes_eval_image(seed: int, index: int) -> ShapesImage:
    """Render image ``index`` of the shapes_eval split generated with ``seed``.

    Deterministic in ``(seed, index)``. Drawing order: textured background, star/cross/
    bar/hexagon clutter, the objects (gradient or striped fill, optional outline; later
    ones may hide earlier ones), more clutter on top, optional blur, pixel noise.

    Returns:
        ShapesImage with the (H, W, 3) uint8 RGB image, 160 <= H, W <= 320, and 1-7
        annotated objects (category ids as shapes: 1 circle, 2 square, 3 triangle).
    """
    rng = np.random.default_rng([_SEED_SALT, int(seed), int(index)])
    h, w = (int(v) for v in rng.integers(IMAGE_SIDE_RANGE[0], IMAGE_SIDE_RANGE[1] + 1, 2))
    c0, c1 = _hsv_color(rng), _hsv_color(rng)
    canvas = c0 + (c1 - c0) * _texture(rng, h, w)[..., None]  # (H, W, 3) float32

    for _ in range(int(rng.integers(1, 5))):
        canvas[_star_or_cross(rng, h, w)] = _hsv_color(rng)

    owner = np.zeros((h, w), dtype=np.int32)
    categories: list[int] = []
    sizes: list[float] = []
    full_masks: list[np.ndarray] = []
    fills: list[np.ndarray] = []
    for k in range(int(rng.integers(OBJECTS_PER_IMAGE[0], OBJECTS_PER_IMAGE[1] + 1))):
        category_id = int(rng.integers(1, len(CLASS_NAMES) + 1))
        lo, hi = OBJECT_SIZE_RANGE
        size = float(lo * (hi / lo) ** rng.uniform())
        for _ in range(PLACEMENT_TRIES):
            pts = _object_polygon(rng, category_id, size)
            ext = pts.max(axis=0)
            pts = pts + [rng.uniform(0, max(w - 1 - ext[0], 0)), rng.uniform(0, max(h - 1 - ext[1], 0))]
            poly = [tuple(p) for p in pts.tolist()]
            mask = _mask(h, w, lambda d: d.polygon(poly, fill=1))
            covered = np.bincount(owner[mask], minlength=k + 1)[1:]
            areas = np.array([m.sum() for m in full_masks]) if full_masks else np.zeros(0)
            if k == 0 or np.all(covered <= 0.5 * areas):
                break
        # fill: a texture or a linear gradient between two colours whose mean stands out
        # from what lies under the object (the best of a few draws)
        if rng.uniform() < 0.5:
            weight = _texture(rng, h, w)
        else:
            theta = rng.uniform(0, 2 * math.pi)
            yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
            t = math.cos(theta) * xx + math.sin(theta) * yy
            t = (t - t[mask].min()) / max(float(np.ptp(t[mask])), 1.0) if mask.any() else t
            weight = np.clip(t, 0, 1)
        under = canvas[mask].mean(axis=0) if mask.any() else canvas.mean(axis=(0, 1))
        best, best_dist = None, -1.0
        for _ in range(MIN_CONTRAST_TRIES):
            a, b = _hsv_color(rng), _hsv_color(rng)
            dist = float(np.linalg.norm((a + b) / 2 - under))
            if dist > best_dist:
                best, best_dist = (a, b), dist
            if dist >= MIN_CONTRAST:
                break
        a, b = best
        fill = a + (b - a) * weight[..., None]
        canvas[mask] = fill[mask]
        if rng.uniform() < 0.5 and size > 16:
            outline = _mask(h, w, lambda d: d.polygon(poly, outline=1, width=int(rng.integers(1, 4))))
            canvas[outline] = _hsv_color(rng, (0.0, 0.25)) if rng.uniform() < 0.5 else _hsv_color(rng, (0.85, 1.0))
        owner[mask] = k + 1
        categories.append(category_id)
        sizes.append(size)
        full_masks.append(mask)
        fills.append(fill)

    for _ in range(int(rng.integers(0, 3))):
        m = _star_or_cross(rng, h, w)
        canvas[m] = _hsv_color(rng)
        owner[m] = 0

    full_areas = [int(m.sum()) for m in full_masks]
    visible = np.bincount(owner.ravel(), minlength=len(categories) + 1)[1:]
    keep = [i for i in range(len(categories)) if full_areas[i] > 0 and visible[i] >= MIN_VISIBLE_FRACTION * full_areas[i]]
    if not keep:  # repaint the last object on top so every image has one
        last = len(categories) - 1
        canvas[full_masks[last]] = fills[last][full_masks[last]]
        owner[full_masks[last]] = last + 1
        keep = [last]

    image = np.clip(canvas, 0, 255).astype(np.uint8)
    if rng.uniform() < 0.3:
        image = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.2))))
    noisy = image.astype(np.float32) + rng.standard_normal(image.shape, dtype=np.float32) * rng.uniform(3.0, 12.0)
    image = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)

    masks = np.stack([owner == i + 1 for i in keep])
    boxes = np.zeros((len(keep), 4), dtype=np.float64)
    for j, m in enumerate(masks):
        ys, xs = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
        boxes[j] = [xs[0], ys[0], xs[-1] + 1 - xs[0], ys[-1] + 1 - ys[0]]
    return ShapesImage(
        image=image,
        category_ids=[categories[i] for i in keep],
        boxes=boxes,
        masks=masks,
        sizes=np.asarray([sizes[i] for i in keep]),
        full_areas=np.asarray([full_areas[i] for i in keep], dtype=np.int64),
    )


def register_shapes_eval(root: str | None = None) -> None:
    """Register ``shapes_eval`` (200 images, seed 7); files under ``<root>/shapes_eval``,
    generated on the first ``DatasetCatalog.get("shapes_eval")``.

    Args:
        root: the datasets folder. Defaults to ``$D2LITE_DATASETS`` or ``./datasets``.
    """
    from ..catalog import DatasetCatalog, MetadataCatalog
    from .coco import load_coco_json

    if root is None:
        root = os.getenv("D2LITE_DATASETS", "datasets")
    eval_root = os.path.join(os.path.abspath(os.path.expanduser(root)), "shapes_eval")
    for name, (split, num_images, seed) in SHAPES_EVAL_SPLITS.items():

        def load(name=name, split=split, num_images=num_images, seed=seed):
            json_file, image_root = generate_shapes(
                eval_root, split, num_images, seed, render=render_shapes_eval_image, version=GENERATOR_VERSION
            )
            return load_coco_json(json_file, image_root, name)

        DatasetCatalog.register(name, load)
        MetadataCatalog.get(name).set(
            **shapes_class_metadata(),
            json_file=os.path.join(eval_root, f"{split}.json"),
            image_root=os.path.join(eval_root, split),
            evaluator_type="coco",
        )
