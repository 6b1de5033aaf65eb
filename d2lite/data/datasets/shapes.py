"""The built-in synthetic "shapes" detection dataset.

A small, deterministic detection task that a detector can learn from scratch on a
laptop CPU: circles, (rotated) squares and (rotated) triangles of random colours on
a gradient background with pixel noise and unlabelled clutter (irregular blobs,
thick curves, straight lines, dots) that can cross the objects. Later objects may
partially hide earlier ones.

The images are real JPEG files (quality 95, no chroma subsampling: encoding and
decoding take ~0.2 ms per image, 4-8x faster than PNG) and the annotations a real COCO json,
written on first use under ``<root>/shapes``::

    <root>/shapes/train/000000.jpg ...   <root>/shapes/train.json
    <root>/shapes/val/000000.jpg ...     <root>/shapes/val.json

``register_all_shapes(root)`` registers ``shapes_train`` (1000 images, seed 0),
``shapes_val`` (200 images, seed 1) and ``shapes_val_50`` (its first 50 images, for
quick evaluations) in the ``DatasetCatalog``; the files are
generated when ``DatasetCatalog.get(name)`` is called the first time, not at import.

Generation is deterministic: image ``i`` of a split with seed ``s`` is drawn by its
own ``numpy.random.Generator`` seeded with ``(s, i)`` (see :func:`render_shapes_image`),
so any single image can be regenerated, with its object masks, without the others.

Annotation conventions (COCO): ``bbox`` is ``[x, y, w, h]`` in absolute pixels, the
tight box of the *visible* pixels of the object (pixel ``j`` covers ``[j, j + 1)``),
``area`` is the number of visible pixels. Objects with less than
``MIN_VISIBLE_FRACTION`` of their pixels visible are drawn but not annotated.
Every image has between 1 and 6 annotated objects.
"""
from __future__ import annotations

import errno
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "CLASS_NAMES",
    "SHAPES_SPLITS",
    "SHAPES_SUBSETS",
    "ShapesImage",
    "render_shapes_image",
    "generate_shapes",
    "register_shapes",
    "register_all_shapes",
    "register_shapes_subset",
]

logger = logging.getLogger(__name__)

CLASS_NAMES: tuple[str, ...] = ("circle", "square", "triangle")
"""Class names; the COCO category id of ``CLASS_NAMES[i]`` is ``i + 1``."""

# dataset name -> (split, number of images, seed)
SHAPES_SPLITS: dict[str, tuple[str, int, int]] = {
    "shapes_train": ("train", 1000, 0),
    "shapes_val": ("val", 200, 1),
}

# dataset name -> (parent split, number of images): the parent's first images, for quick
# evaluations (smoke tests, README examples), as detectron2's coco_2017_val_100.
SHAPES_SUBSETS: dict[str, tuple[str, int]] = {
    "shapes_val_50": ("shapes_val", 50),
}

GENERATOR_VERSION = 1
IMAGE_SIDE_RANGE = (128, 256)  # inclusive; height and width are drawn independently
OBJECTS_PER_IMAGE = (1, 6)  # inclusive
OBJECT_SIZE_RANGE = (12.0, 90.0)  # longest side of the unoccluded object's box, pixels
# The object size is 12 * 7.5 ** (u ** SIZE_EXPONENT), u ~ U(0, 1): a log-uniform size
# (exponent 1) gives ~61 % COCO-small objects (visible area < 32^2); 0.75 gives ~53 %.
SIZE_EXPONENT = 0.75
MIN_VISIBLE_FRACTION = 0.4
# While placing an object, positions that leave an earlier object less visible than
# this are re-drawn (a few tries), so heavy occlusion is rare but possible.
PLACEMENT_VISIBLE_FRACTION = 0.6
PLACEMENT_TRIES = 10
MIN_COLOR_DISTANCE = 100.0  # Euclidean RGB distance to the mean colour under the object
COLOR_TRIES = 20
JPEG_QUALITY = 95
STALE_TMP_AGE_S = 3600.0  # temporary folders untouched this long belong to killed processes
_SEED_SALT = 0x5EA9E5  # keeps shapes' generators apart from other (seed, index) users

_CATEGORIES = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CLASS_NAMES)]


@dataclass
class ShapesImage:
    """One rendered image with its annotations.

    Attributes:
        image: (H, W, 3) uint8 RGB.
        category_ids: COCO category id (1 circle, 2 square, 3 triangle) per annotated object.
        boxes: (N, 4) float64 XYWH tight boxes of the visible pixels, absolute pixels.
        masks: (N, H, W) bool visible-pixel masks of the annotated objects.
        sizes: (N,) the longest side (pixels) of each annotated object's unoccluded box
            as requested from the size distribution.
        full_areas: (N,) pixel count of each annotated object before occlusion.
    """

    image: np.ndarray
    category_ids: list[int] = field(default_factory=list)
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    masks: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), dtype=bool))
    sizes: np.ndarray = field(default_factory=lambda: np.zeros((0,)))
    full_areas: np.ndarray = field(default_factory=lambda: np.zeros((0,), dtype=np.int64))


def _draw_mask(h: int, w: int, draw: Callable[[ImageDraw.ImageDraw], None]) -> np.ndarray:
    canvas = Image.new("L", (w, h), 0)
    draw(ImageDraw.Draw(canvas))
    return np.asarray(canvas) > 0


def _unit_polygon(category_id: int, angle: float) -> np.ndarray:
    """(K, 2) vertices of a rotated shape with circumradius 1, centred at 0."""
    k = 4 if category_id == 2 else 3
    t = angle + 2.0 * math.pi * np.arange(k) / k
    return np.stack([np.cos(t), np.sin(t)], axis=1)


def _object_mask(
    rng: np.random.Generator, h: int, w: int, category_id: int, size: float
) -> np.ndarray:
    """Mask of one object of the given class whose unoccluded box's longest side is ``size``,
    at a random position fully inside the image."""
    if category_id == 1:
        r = size / 2.0
        cx = rng.uniform(r, w - r)
        cy = rng.uniform(r, h - r)
        # PIL's ellipse fills [x0, x1] inclusive: subtract one pixel to make the extent `size`.
        xy = [cx - r, cy - r, cx + r - 1, cy + r - 1]
        return _draw_mask(h, w, lambda d: d.ellipse(xy, fill=1))
    pts = _unit_polygon(category_id, rng.uniform(0.0, 2.0 * math.pi))
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    pts = (pts - lo) * ((size - 1) / (hi - lo).max())  # box of the vertices: [0, size-1]
    ext = pts.max(axis=0)
    pts = pts + [rng.uniform(0, w - 1 - ext[0]), rng.uniform(0, h - 1 - ext[1])]
    poly = [tuple(p) for p in pts.tolist()]
    return _draw_mask(h, w, lambda d: d.polygon(poly, fill=1))


def _blob_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """An irregular (usually non-convex) polygon: unlabelled clutter that is no shape class."""
    n = int(rng.integers(8, 15))
    radius = rng.uniform(4.0, 20.0)
    t = np.sort(rng.uniform(0.0, 2.0 * math.pi, n))
    rr = radius * rng.uniform(0.4, 1.0, n)
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    poly = list(zip((cx + rr * np.cos(t)).tolist(), (cy + rr * np.sin(t)).tolist()))
    return _draw_mask(h, w, lambda d: d.polygon(poly, fill=1))


def _curve_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A thick random-walk curve."""
    n = int(rng.integers(4, 9))
    step = rng.uniform(6.0, 20.0)
    heading = np.cumsum(rng.normal(0.0, 0.6, n)) + rng.uniform(0, 2 * math.pi)
    xs = rng.uniform(0, w) + np.concatenate([[0.0], np.cumsum(step * np.cos(heading))])
    ys = rng.uniform(0, h) + np.concatenate([[0.0], np.cumsum(step * np.sin(heading))])
    pts = list(zip(xs.tolist(), ys.tolist()))
    width = int(rng.integers(2, 6))
    return _draw_mask(h, w, lambda d: d.line(pts, fill=1, width=width))


def _line_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A thin straight line between two random points."""
    pts = [(rng.uniform(0, w), rng.uniform(0, h)), (rng.uniform(0, w), rng.uniform(0, h))]
    width = int(rng.integers(1, 4))
    return _draw_mask(h, w, lambda d: d.line(pts, fill=1, width=width))


def _dots_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A few dots of radius 1-2 px."""
    n = int(rng.integers(1, 9))
    xs, ys = rng.uniform(0, w, n), rng.uniform(0, h, n)
    rs = rng.uniform(1.0, 2.5, n)

    def draw(d: ImageDraw.ImageDraw) -> None:
        for x, y, r in zip(xs.tolist(), ys.tolist(), rs.tolist()):
            d.ellipse([x - r, y - r, x + r, y + r], fill=1)

    return _draw_mask(h, w, draw)


def _random_color(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, 3).astype(np.float32)


def _contrasting_color(rng: np.random.Generator, canvas: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A random colour at least MIN_COLOR_DISTANCE from the mean colour under ``mask``
    (the best of COLOR_TRIES draws if none is that far)."""
    local = canvas[mask].mean(axis=0)
    best, best_dist = None, -1.0
    for _ in range(COLOR_TRIES):
        color = _random_color(rng)
        dist = float(np.linalg.norm(color - local))
        if dist > best_dist:
            best, best_dist = color, dist
        if dist >= MIN_COLOR_DISTANCE:
            break
    return best


def _object_size(rng: np.random.Generator) -> float:
    lo, hi = OBJECT_SIZE_RANGE
    return lo * (hi / lo) ** (rng.uniform() ** SIZE_EXPONENT)


def render_shapes_image(seed: int, index: int) -> ShapesImage:
    """Render image ``index`` of the split generated with ``seed``.

    Deterministic: the result depends only on ``(seed, index)``. Drawing order:
    gradient background, blobs and thick curves, the objects (each may hide parts
    of earlier ones), straight lines and dots (these cross objects), pixel noise.

    Returns:
        ShapesImage with the (H, W, 3) uint8 RGB image, 128 <= H, W <= 256, and its
        1-6 annotated objects (visible-pixel masks and tight XYWH boxes).
    """
    rng = np.random.default_rng([_SEED_SALT, int(seed), int(index)])
    h, w = (int(v) for v in rng.integers(IMAGE_SIDE_RANGE[0], IMAGE_SIDE_RANGE[1] + 1, 2))

    # Background: linear gradient between two colours in a random direction.
    c0, c1 = _random_color(rng), _random_color(rng)
    theta = rng.uniform(0.0, 2.0 * math.pi)
    proj = np.cos(theta) * np.arange(w, dtype=np.float32)[None, :] + np.sin(theta) * np.arange(
        h, dtype=np.float32
    )[:, None]
    t = (proj - proj.min()) / max(float(proj.max() - proj.min()), 1.0)
    canvas = c0 + (c1 - c0) * t[..., None]  # (H, W, 3) float32

    for _ in range(int(rng.integers(0, 4))):
        canvas[_blob_mask(rng, h, w)] = _random_color(rng)
    for _ in range(int(rng.integers(0, 3))):
        canvas[_curve_mask(rng, h, w)] = _random_color(rng)

    # Objects. `owner` holds 1 + object index of the object visible at each pixel, 0 elsewhere.
    owner = np.zeros((h, w), dtype=np.int32)
    full_areas: list[int] = []
    categories: list[int] = []
    sizes: list[float] = []
    colors: list[np.ndarray] = []
    full_masks: list[np.ndarray] = []
    for k in range(int(rng.integers(OBJECTS_PER_IMAGE[0], OBJECTS_PER_IMAGE[1] + 1))):
        category_id = int(rng.integers(1, len(CLASS_NAMES) + 1))
        size = _object_size(rng)
        for _ in range(PLACEMENT_TRIES):
            mask = _object_mask(rng, h, w, category_id, size)
            if k == 0:
                break
            hidden = np.bincount(owner[mask], minlength=k + 1)[1:]
            visible = np.bincount(owner.ravel(), minlength=k + 1)[1:] - hidden
            if np.all(visible >= PLACEMENT_VISIBLE_FRACTION * np.asarray(full_areas)):
                break
        color = _contrasting_color(rng, canvas, mask)
        canvas[mask] = color
        owner[mask] = k + 1
        full_areas.append(int(mask.sum()))
        categories.append(category_id)
        sizes.append(size)
        colors.append(color)
        full_masks.append(mask)

    # Clutter on top of the objects.
    for _ in range(int(rng.integers(0, 4))):
        m = _line_mask(rng, h, w)
        canvas[m] = _random_color(rng)
        owner[m] = 0
    if rng.uniform() < 0.5:
        m = _dots_mask(rng, h, w)
        canvas[m] = _random_color(rng)
        owner[m] = 0

    visible_areas = np.bincount(owner.ravel(), minlength=len(categories) + 1)[1:]
    keep = [i for i in range(len(categories)) if visible_areas[i] >= MIN_VISIBLE_FRACTION * full_areas[i]]
    if not keep:
        # Only clutter can hide the last object; repaint it so every image has an object.
        last = len(categories) - 1
        canvas[full_masks[last]] = colors[last]
        owner[full_masks[last]] = last + 1
        keep = [last]

    sigma = rng.uniform(2.0, 8.0)
    canvas += rng.standard_normal(canvas.shape, dtype=np.float32) * sigma
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)

    masks = np.stack([owner == i + 1 for i in keep])
    boxes = np.zeros((len(keep), 4), dtype=np.float64)
    for j, m in enumerate(masks):
        ys = np.flatnonzero(m.any(axis=1))
        xs = np.flatnonzero(m.any(axis=0))
        boxes[j] = [xs[0], ys[0], xs[-1] + 1 - xs[0], ys[-1] + 1 - ys[0]]
    return ShapesImage(
        image=image,
        category_ids=[categories[i] for i in keep],
        boxes=boxes,
        masks=masks,
        sizes=np.asarray([sizes[i] for i in keep]),
        full_areas=np.asarray([full_areas[i] for i in keep], dtype=np.int64),
    )


def _file_name(index: int) -> str:
    return f"{index:06d}.jpg"


def _paths(root: str, split: str) -> tuple[str, str]:
    return os.path.join(root, f"{split}.json"), os.path.join(root, split)


def _check_existing(json_file: str, image_root: str, num_images: int, seed: int, version: int) -> None:
    """Raise if the finished split at ``json_file`` was made with other parameters."""
    with open(json_file) as f:
        try:
            info = json.load(f).get("info", {})
        except json.JSONDecodeError as e:
            raise ValueError(
                f"{json_file} is not valid json ({e}); delete it and {image_root} to regenerate the split."
            ) from e
    made = (info.get("num_images"), info.get("seed"), info.get("generator_version"))
    if made != (num_images, seed, version):
        raise ValueError(
            f"{json_file} holds a shapes split made with (num_images, seed, generator_version)"
            f"={made}, but {(num_images, seed, version)} was requested. Delete "
            f"{json_file} and {image_root} to regenerate, or use another root."
        )
    if not os.path.isdir(image_root):
        raise FileNotFoundError(
            f"{json_file} exists but its image folder {image_root} does not. Delete {json_file} "
            "to regenerate the split."
        )


def generate_shapes(
    root: str,
    split: str,
    num_images: int,
    seed: int,
    render: Callable[[int, int], ShapesImage] | None = None,
    version: int = GENERATOR_VERSION,
) -> tuple[str, str]:
    """Write the images and COCO json of one shapes split, unless they already exist.

    Safe to interrupt and safe to call from several processes at once: images go to
    ``<root>/.<split>.tmp-<pid>``, which is renamed to ``<root>/<split>`` when
    complete; the json ``<root>/<split>.json`` is written last, atomically, so its
    presence means the split is complete.

    Args:
        root: folder of the shapes dataset (e.g. ``datasets/shapes``).
        split: split name, used for the image folder and json names.
        num_images: number of images.
        seed: split seed; image ``i`` is ``render(seed, i)``.
        render: the drawing function ``(seed, index) -> ShapesImage``. Defaults to
            :func:`render_shapes_image` (another
            generator, e.g. :mod:`.shapes_eval`, passes its own).
        version: generator version stored in the json; a split on disk made with another
            version (or size, seed) is an error. Defaults to ``GENERATOR_VERSION``.

    Returns:
        (json_file, image_root)
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images} for shapes split {split!r}")
    if render is None:
        render = render_shapes_image
    json_file, image_root = _paths(root, split)
    if os.path.isfile(json_file):
        _check_existing(json_file, image_root, num_images, seed, version)
        return json_file, image_root

    os.makedirs(root, exist_ok=True)
    tmp_dir = os.path.join(root, f".{split}.tmp-{os.getpid()}")
    if os.path.exists(tmp_dir):  # left by a killed process that had our pid
        shutil.rmtree(tmp_dir)
    os.makedirs(tmp_dir)
    logger.info(f"Generating {num_images} shapes images (seed {seed}) into {image_root} ...")
    start = time.perf_counter()
    try:
        images, annotations = [], []
        for index in range(num_images):
            sample = render(seed, index)
            h, w = sample.image.shape[:2]
            Image.fromarray(sample.image).save(
                os.path.join(tmp_dir, _file_name(index)), format="JPEG", quality=JPEG_QUALITY, subsampling=0
            )
            image_id = index + 1
            images.append({"id": image_id, "file_name": _file_name(index), "height": h, "width": w})
            for cat, box, mask in zip(sample.category_ids, sample.boxes, sample.masks):
                annotations.append(
                    {
                        "id": len(annotations) + 1,  # COCOeval treats id 0 as "unmatched"
                        "image_id": image_id,
                        "category_id": cat,
                        "bbox": [float(v) for v in box],
                        "area": float(mask.sum()),
                        "iscrowd": 0,
                    }
                )
        coco = {
            "info": {
                "description": f"d2lite synthetic shapes, split {split}",
                "num_images": num_images,
                "seed": seed,
                "generator_version": version,
            },
            "images": images,
            "annotations": annotations,
            "categories": _CATEGORIES,
        }
        try:
            os.replace(tmp_dir, image_root)
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not os.path.isdir(image_root):
                raise
            # Another process finished the same (deterministic) split first; use its images.
            missing = [im["file_name"] for im in images if not os.path.isfile(os.path.join(image_root, im["file_name"]))]
            if missing:
                raise FileNotFoundError(
                    f"{image_root} exists but lacks {len(missing)} images (e.g. {missing[0]}). "
                    f"Delete {image_root} to regenerate the split."
                ) from e
            shutil.rmtree(tmp_dir)
        tmp_json = os.path.join(root, f".{split}.json.tmp-{os.getpid()}")
        with open(tmp_json, "w") as f:
            json.dump(coco, f)
        os.replace(tmp_json, json_file)
    except BaseException:
        # Remove the partial output (the exception propagates).
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    logger.info(
        f"Generated shapes split {split!r}: {num_images} images, {len(annotations)} objects "
        f"in {time.perf_counter() - start:.1f} s -> {json_file}"
    )
    _remove_stale_tmp_dirs(root, split)
    return json_file, image_root


def _remove_stale_tmp_dirs(root: str, split: str, max_age_s: float = STALE_TMP_AGE_S) -> None:
    """Delete temporary folders of killed generations (untouched for ``max_age_s``;
    a live generation writes into its folder every few milliseconds)."""
    prefix = f".{split}.tmp-"
    now = time.time()
    for name in os.listdir(root):
        path = os.path.join(root, name)
        if name.startswith(prefix) and os.path.isdir(path) and now - os.path.getmtime(path) > max_age_s:
            logger.info(f"Removing {path}, left by an interrupted shapes generation.")
            shutil.rmtree(path, ignore_errors=True)


def _load_shapes(root: str, split: str, num_images: int, seed: int, dataset_name: str) -> list[dict[str, Any]]:
    from .coco import load_coco_json

    json_file, image_root = generate_shapes(root, split, num_images, seed)
    return load_coco_json(json_file, image_root, dataset_name)


def shapes_class_metadata() -> dict[str, Any]:
    """``thing_classes`` and the COCO id -> contiguous id map shared by every shapes dataset."""
    return {
        "thing_classes": list(CLASS_NAMES),
        "thing_dataset_id_to_contiguous_id": {i + 1: i for i in range(len(CLASS_NAMES))},
    }


def register_shapes(name: str, root: str, split: str, num_images: int, seed: int) -> None:
    """Register a shapes split as ``name``; its files are generated on the first
    ``DatasetCatalog.get(name)``.

    Args:
        name: dataset name, e.g. "shapes_train".
        root: folder of the shapes dataset (images in ``root/split``, json ``root/split.json``).
        split, num_images, seed: see :func:`generate_shapes`.
    """
    from ..catalog import DatasetCatalog, MetadataCatalog

    json_file, image_root = _paths(root, split)
    DatasetCatalog.register(name, lambda: _load_shapes(root, split, num_images, seed, name))
    MetadataCatalog.get(name).set(
        **shapes_class_metadata(),
        json_file=json_file,
        image_root=image_root,
        evaluator_type="coco",
    )


def register_shapes_subset(name: str, parent: str, num_images: int) -> None:
    """Register the first ``num_images`` images of the registered dataset ``parent`` as
    ``name``. Its metadata has no ``json_file``: COCOEvaluator writes the subset's own COCO
    json (the parent's would count the other images' boxes as missed)."""
    from ..catalog import DatasetCatalog, MetadataCatalog

    DatasetCatalog.register(name, lambda: DatasetCatalog.get(parent)[:num_images])
    MetadataCatalog.get(name).set(
        **shapes_class_metadata(),
        evaluator_type="coco",
    )


def register_all_shapes(root: str | None = None) -> None:
    """Register "shapes_train" (1000 images, seed 0), "shapes_val" (200 images, seed 1)
    and "shapes_val_50" (the first 50 images of shapes_val).

    Args:
        root: the datasets folder; the data lives in ``<root>/shapes``. Defaults to
            ``$D2LITE_DATASETS`` or ``./datasets``.
    """
    if root is None:
        root = os.getenv("D2LITE_DATASETS", "datasets")
    shapes_root = os.path.join(os.path.abspath(os.path.expanduser(root)), "shapes")
    for name, (split, num_images, seed) in SHAPES_SPLITS.items():
        register_shapes(name, shapes_root, split, num_images, seed)
    for name, (parent, num_images) in SHAPES_SUBSETS.items():
        register_shapes_subset(name, parent, num_images)
