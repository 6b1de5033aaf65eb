"""mmdetection 3.x's multi-image training transforms: ``CachedMosaic`` and ``CachedMixUp``.

Both mix the current sample with samples from a *cache of recent samples*, as in
mmdetection. Where the cache comes from depends on who maps the sample:

* **In a d2lite training stream** (:class:`~d2lite.data.stream.TrainDataStream`, i.e.
  ``build_detection_train_loader`` with :class:`rtmdet.mapper.RTMDetDatasetMapper`):
  the cache is *the stream's recent samples* at the transform's stage of the
  pipeline. The cache of the sample at position ``t`` of the rank's stream holds the
  samples at positions ``t - max_cached_images + 1 .. t`` (FIFO, ``random_pop=False``,
  which is exactly mmdetection's cache with one worker), or, with ``random_pop``, the
  entries left by mmdetection's pop rule simulated over the last ``4 * max_cached_images``
  positions, each pop drawn from its position's seed. An entry is the earlier sample
  mapped under its own seed up to this transform (what mmdetection cached when that
  sample passed), computed when a mix first needs it and memoised per process. So a
  sample's mix depends only on (seed, position in the stream): the same with any
  number of data-loader workers and after a resume (d2lite's exact resume).
* **Anywhere else** (called directly, or by a mapper outside a stream): the cache lives
  *inside the augmentation object*, filled with the samples it saw, as mmdetection
  does; each data-loader worker's copy has its own.

Each sample is added to the cache *before* the mix, so with ``random_pop`` a cache
holds a random subset of the last samples; the mixed-in samples are drawn from the
cache without the current one (mmdetection draws ``randint(0, len(cache) - 1)``,
whose upper bound is exclusive, so the newest entry, the current sample, is never
drawn). While the cache is short (<= 4 entries for the mosaic, <= 1 for mixup) the
sample passes unchanged.

The augmentations work on :class:`rtmdet.transforms.DetAugInput` (image, boxes, labels,
random generator) in place. They return a :class:`~d2lite.data.transforms.NoOpTransform`:
a mix is not a single-image transform, the result is in the input.
"""

import collections
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from d2lite.data import transforms as T

from .transforms import DetAugInput, boxes_inside, clip_boxes, resize_bilinear

__all__ = ["CachedSample", "CachedMosaic", "CachedMixUp", "StreamHistory", "mosaic_combine"]


class CachedSample(NamedTuple):
    """A cache entry: ``image`` (H, W, C) uint8, ``boxes`` (N, 4) float32 XYXY, ``classes`` (N,) int64."""

    image: np.ndarray
    boxes: np.ndarray
    classes: np.ndarray


class _ResultCache:
    """A list of at most ``max_size`` samples; when full, one entry is popped after each
    append (a random one but never the newest if ``random_pop``, else the oldest)."""

    def __init__(self, max_size: int, random_pop: bool):
        self.max_size = max_size
        self.random_pop = random_pop
        self.entries: List[CachedSample] = []

    def add(self, aug_input: DetAugInput) -> None:
        self.entries.append(CachedSample(aug_input.image.copy(), aug_input.boxes.copy(), aug_input.classes.copy()))
        if len(self.entries) > self.max_size:
            index = int(aug_input.rng.integers(0, len(self.entries) - 1)) if self.random_pop else 0
            self.entries.pop(index)

    def __len__(self) -> int:
        return len(self.entries)


class StreamHistory:
    """The training stream as seen by the sample being mapped: given by
    :class:`~rtmdet.mapper.RTMDetDatasetMapper` to the augmentations (``aug_input.history``)
    while a :class:`~d2lite.data.stream.TrainDataStream` maps a sample.

    Args:
        position: the sample's position in this rank's stream (0, 1, 2, ...).
        seed_at: ``seed_at(p)``: the seed of the sample at position ``p`` (<= position).
        compute: ``compute(p, stage)``: the sample at position ``p`` mapped under its own
            seed up to (without) augmentation ``stage``, or None if an augmentation
            before ``stage`` rejected it.
        first_attempt: False when the mapper maps this position again (a replacement
            after a rejection): its state is then not the position's own.
    """

    def __init__(
        self,
        position: int,
        seed_at: Callable[[int], int],
        compute: Callable[[int, int], Optional[CachedSample]],
        first_attempt: bool = True,
    ):
        self.position = position
        self.seed_at = seed_at
        self.compute = compute
        self.first_attempt = first_attempt
        self.stage = 0  # the index of the augmentation being applied; set by the mapper


# Positions over which mmdetection's random pops are simulated, in cache sizes: an entry
# survives a pop with probability 1 - 1/max_cached_images, so after 4 sizes ~2% of the
# entries of the full history would still be older than the window.
_POP_WINDOW = 4


class _StreamCache:
    """mmdetection's result cache rebuilt from the stream (module docstring): which earlier
    positions it holds at a position, and their entries, memoised per process."""

    def __init__(self, max_size: int, random_pop: bool, salt: int):
        self.max_size = max_size
        self.random_pop = random_pop
        self.salt = salt
        self._entries: collections.OrderedDict[int, Optional[CachedSample]] = collections.OrderedDict()  # position ->
        self._pops: Dict[int, int] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_entries": collections.OrderedDict(), "_pops": {}}  # workers start empty

    def _pop_index(self, history: StreamHistory, position: int) -> int:
        """Which of the ``max_size`` older entries the sample at ``position`` pops (never itself)."""
        if position not in self._pops:
            rng = np.random.default_rng([history.seed_at(position), self.salt])
            self._pops[position] = int(rng.integers(0, self.max_size))
            if len(self._pops) > 8 * _POP_WINDOW * self.max_size:
                for key in sorted(self._pops)[: len(self._pops) // 2]:
                    del self._pops[key]
        return self._pops[position]

    def members(self, history: StreamHistory) -> List[int]:
        """The positions in the cache after adding the current sample, oldest first (the
        current one last), as mmdetection's cache of one worker would hold them."""
        t = history.position
        if not self.random_pop or t < self.max_size:
            return list(range(max(0, t - self.max_size + 1), t + 1))
        members: List[int] = []
        for q in range(max(0, t - _POP_WINDOW * self.max_size), t + 1):
            members.append(q)
            if len(members) > self.max_size:
                members.pop(self._pop_index(history, q))
        return members

    def remember(self, history: StreamHistory, aug_input: DetAugInput) -> None:
        """Memoise the current sample at this stage (it is the position's entry)."""
        if history.first_attempt:
            entry = CachedSample(aug_input.image.copy(), aug_input.boxes.copy(), aug_input.classes.copy())
            self._store(history.position, entry)

    def get(self, history: StreamHistory, position: int) -> Optional[CachedSample]:
        """The entry of ``position`` (None: the sample was rejected before this stage)."""
        if position in self._entries:
            self._entries.move_to_end(position)
            return self._entries[position]
        entry = history.compute(position, history.stage)
        self._store(position, entry)
        return entry

    def _store(self, position: int, entry: Optional[CachedSample]) -> None:
        self._entries[position] = entry  # one cache per transform, so one stage: keyed by position
        self._entries.move_to_end(position)
        while len(self._entries) > 2 * self.max_size:
            self._entries.popitem(last=False)


def _add_to_cache(
    aug_input: DetAugInput, cache: _ResultCache, stream_cache: _StreamCache
) -> Tuple[Optional[StreamHistory], list]:
    """Add the current sample to the cache a mix transform uses (module docstring) and return
    ``(history, members)``: in a training stream the input's :class:`StreamHistory` and the
    cached stream positions (entries via ``stream_cache.get``), else ``(None, cache entries)``."""
    history = getattr(aug_input, "history", None)
    if history is not None:
        stream_cache.remember(history, aug_input)
        return history, stream_cache.members(history)
    cache.add(aug_input)
    return None, cache.entries


def mosaic_combine(
    loc: str, center_xy: Tuple[int, int], img_wh: Tuple[int, int], img_scale: Tuple[int, int]
) -> Tuple[Tuple[int, int, int, int], Tuple[int, int, int, int]]:
    """Where a (resized) sub-image goes on the ``2 * img_scale`` mosaic canvas.

    Args:
        loc: "top_left", "top_right", "bottom_left" or "bottom_right" of the centre.
        center_xy: mosaic centre (x, y) on the canvas.
        img_wh: (width, height) of the sub-image.
        img_scale: (height, width) of one mosaic cell; the canvas is twice as large.

    Returns:
        ``(paste, crop)``: ``paste`` = (x1, y1, x2, y2) on the canvas and ``crop`` =
        (x1, y1, x2, y2) in the sub-image, of equal size. The top-left image touches the
        centre with its bottom-right corner and is cut at the canvas' top/left border, etc.

    Example: centre (700, 600), a 640x480 (w x h) image at "top_left" -> paste
    (60, 120, 700, 600), crop (0, 0, 640, 480).
    """
    cx, cy = center_xy
    w, h = img_wh
    if loc == "top_left":
        x1, y1, x2, y2 = max(cx - w, 0), max(cy - h, 0), cx, cy
        crop = (w - (x2 - x1), h - (y2 - y1), w, h)
    elif loc == "top_right":
        x1, y1, x2, y2 = cx, max(cy - h, 0), min(cx + w, img_scale[1] * 2), cy
        crop = (0, h - (y2 - y1), min(w, x2 - x1), h)
    elif loc == "bottom_left":
        x1, y1, x2, y2 = max(cx - w, 0), cy, cx, min(img_scale[0] * 2, cy + h)
        crop = (w - (x2 - x1), 0, w, min(y2 - y1, h))
    elif loc == "bottom_right":
        x1, y1, x2, y2 = cx, cy, min(cx + w, img_scale[1] * 2), min(img_scale[0] * 2, cy + h)
        crop = (0, 0, min(w, x2 - x1), min(y2 - y1, h))
    else:
        raise ValueError(f"mosaic_combine: unknown location {loc!r}.")
    return (x1, y1, x2, y2), crop


_LOCATIONS = ("top_left", "top_right", "bottom_left", "bottom_right")


class CachedMosaic(T.Augmentation):
    """mmdetection's ``CachedMosaic``: four images around a random centre on a
    ``2 * img_scale`` canvas filled with ``pad_val``.

    Steps (for a sample, with its ``rng``):

    1. add the sample to the cache (pop one entry when it holds ``max_cached_images + 1``);
       return unchanged if the cache has <= 4 entries or ``rng.uniform() > prob``;
    2. draw three cached samples (:mod:`module docstring <rtmdet.mix_transforms>`) and the
       centre ``(int(U(0.5, 1.5) * img_scale[1]), int(U(0.5, 1.5) * img_scale[0]))``;
    3. :meth:`combine`: the current sample top-left, the drawn ones top-right,
       bottom-left, bottom-right.

    State: the cache (module docstring: the stream's samples, or a per-worker cache).

    Args:
        img_scale: (height, width) of one mosaic cell. Defaults to (640, 640).
        center_ratio_range: Defaults to (0.5, 1.5).
        bbox_clip_border: clip boxes to the canvas. Defaults to True.
        pad_val: canvas fill value. Defaults to 114.
        prob: probability of a mosaic once the cache is full enough. Defaults to 1.0.
        max_cached_images: cache size (>= 4). Defaults to 40 (RTMDet-tiny: 20).
        random_pop: pop a random entry (True) or the oldest (False) from a full cache.
            Defaults to True (RTMDet-tiny: False).
    """

    def __init__(
        self,
        img_scale: Tuple[int, int] = (640, 640),
        center_ratio_range: Tuple[float, float] = (0.5, 1.5),
        bbox_clip_border: bool = True,
        pad_val: float = 114.0,
        prob: float = 1.0,
        max_cached_images: int = 40,
        random_pop: bool = True,
    ):
        super().__init__()
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"CachedMosaic: prob must be in [0, 1], got {prob}.")
        if max_cached_images < 4:
            raise ValueError(f"CachedMosaic: max_cached_images must be >= 4, got {max_cached_images}.")
        self.img_scale = (int(img_scale[0]), int(img_scale[1]))
        self.center_ratio_range = tuple(center_ratio_range)
        self.bbox_clip_border = bbox_clip_border
        self.pad_val = pad_val
        self.prob = prob
        self.max_cached_images = max_cached_images
        self.random_pop = random_pop
        self.cache = _ResultCache(max_cached_images, random_pop)
        self.stream_cache = _StreamCache(max_cached_images, random_pop, salt=0x4D05)

    def combine(self, samples: Sequence[CachedSample], center_xy: Tuple[int, int]) -> CachedSample:
        """The mosaic of four samples (top-left, top-right, bottom-left, bottom-right).

        Each image is resized by ``r = min(img_scale[0] / h, img_scale[1] / w)`` to
        ``(int(w * r), int(h * r))``, cropped and pasted (:func:`mosaic_combine`); its
        boxes are scaled by ``r`` and shifted by the paste offset; all boxes are clipped
        to the canvas (``bbox_clip_border``) and those outside it dropped
        (:func:`~rtmdet.transforms.boxes_inside`).
        """
        first = samples[0].image
        canvas_shape = (self.img_scale[0] * 2, self.img_scale[1] * 2) + first.shape[2:]
        canvas = np.full(canvas_shape, self.pad_val, dtype=first.dtype)
        all_boxes, all_classes = [], []
        for loc, sample in zip(_LOCATIONS, samples):
            h, w = sample.image.shape[:2]
            ratio = min(self.img_scale[0] / h, self.img_scale[1] / w)
            img = resize_bilinear(sample.image, int(w * ratio), int(h * ratio))
            (x1p, y1p, x2p, y2p), (x1c, y1c, x2c, y2c) = mosaic_combine(
                loc, center_xy, (img.shape[1], img.shape[0]), self.img_scale
            )
            canvas[y1p:y2p, x1p:x2p] = img[y1c:y2c, x1c:x2c]
            boxes = sample.boxes * np.float32(ratio)
            boxes = boxes + np.array([x1p - x1c, y1p - y1c] * 2, dtype=np.float32)
            all_boxes.append(boxes)
            all_classes.append(sample.classes)
        boxes = np.concatenate(all_boxes, 0).astype(np.float32, copy=False)
        classes = np.concatenate(all_classes, 0)
        height, width = canvas.shape[:2]
        if self.bbox_clip_border:
            boxes = clip_boxes(boxes, height, width)
        inside = boxes_inside(boxes, height, width)
        return CachedSample(canvas, boxes[inside], classes[inside])

    def __call__(self, aug_input: DetAugInput) -> T.Transform:
        rng = aug_input.rng
        history, members = _add_to_cache(aug_input, self.cache, self.stream_cache)
        if len(members) <= 4 or rng.uniform(0, 1) > self.prob:
            return T.NoOpTransform()
        indices = [int(rng.integers(0, len(members) - 1)) for _ in range(3)]
        center_x = int(rng.uniform(*self.center_ratio_range) * self.img_scale[1])
        center_y = int(rng.uniform(*self.center_ratio_range) * self.img_scale[0])
        if history is not None:
            others = [self.stream_cache.get(history, members[i]) for i in indices]  # positions -> entries
            if any(other is None for other in others):  # rejected before this stage (mosaic not first)
                return T.NoOpTransform()
        else:
            others = [members[i] for i in indices]
        current = CachedSample(aug_input.image, aug_input.boxes, aug_input.classes)
        out = self.combine([current] + others, (center_x, center_y))
        aug_input.image, aug_input.boxes, aug_input.classes = out
        return T.NoOpTransform()


class CachedMixUp(T.Augmentation):
    """mmdetection's ``CachedMixUp``: blend the sample 0.5/0.5 with a cached one.

    Steps (for a sample, with its ``rng``):

    1. add the sample to the cache (pop one entry beyond ``max_cached_images``); return
       unchanged if the cache has <= 1 entry or ``rng.uniform() > prob``;
    2. draw a cached sample, redrawing up to ``max_iters`` times while it has no box;
       return unchanged if the last draw has none;
    3. :meth:`mix` with ``jit_factor = U(*ratio_range)``, ``flip = U(0, 1) > flip_ratio``
       and, where the jittered image is larger than the sample, random integer offsets.

    State: the cache (module docstring: the stream's samples, or a per-worker cache).

    Args:
        img_scale: (height, width) the cached image is fitted into. Defaults to (640, 640).
        ratio_range: scale jitter of the cached image. Defaults to (0.5, 1.5) (RTMDet: (1.0, 1.0)).
        flip_ratio: the cached image is flipped if ``U(0, 1) > flip_ratio``. Defaults to 0.5.
        pad_val: fill value around the fitted cached image. Defaults to 114.
        max_iters: draws to find a cached sample with boxes. Defaults to 15.
        bbox_clip_border: Defaults to True.
        max_cached_images: cache size (>= 2). Defaults to 20 (RTMDet-tiny: 10).
        random_pop: Defaults to True (RTMDet-tiny: False).
        prob: Defaults to 1.0 (RTMDet-tiny: 0.5).
    """

    def __init__(
        self,
        img_scale: Tuple[int, int] = (640, 640),
        ratio_range: Tuple[float, float] = (0.5, 1.5),
        flip_ratio: float = 0.5,
        pad_val: float = 114.0,
        max_iters: int = 15,
        bbox_clip_border: bool = True,
        max_cached_images: int = 20,
        random_pop: bool = True,
        prob: float = 1.0,
    ):
        super().__init__()
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"CachedMixUp: prob must be in [0, 1], got {prob}.")
        if max_cached_images < 2:
            raise ValueError(f"CachedMixUp: max_cached_images must be >= 2, got {max_cached_images}.")
        if max_iters < 1:
            raise ValueError(f"CachedMixUp: max_iters must be >= 1, got {max_iters}.")
        self.img_scale = (int(img_scale[0]), int(img_scale[1]))
        self.ratio_range = tuple(ratio_range)
        self.flip_ratio = flip_ratio
        self.pad_val = pad_val
        self.max_iters = max_iters
        self.bbox_clip_border = bbox_clip_border
        self.max_cached_images = max_cached_images
        self.random_pop = random_pop
        self.prob = prob
        self.cache = _ResultCache(max_cached_images, random_pop)
        self.stream_cache = _StreamCache(max_cached_images, random_pop, salt=0x313C)

    def mix(
        self,
        sample: CachedSample,
        other: CachedSample,
        jit_factor: float,
        flip: bool,
        offset_xy: Tuple[int, int] = (0, 0),
    ) -> CachedSample:
        """Blend ``other`` into ``sample`` (mmdetection's MixUp arithmetic).

        ``other`` is resized by ``r = min(img_scale[0] / h, img_scale[1] / w)`` into the
        top-left of an ``img_scale`` canvas of ``pad_val``, the canvas is resized by
        ``jit_factor`` (to ``int(size * jit_factor)``) and flipped if ``flip``; it is put
        on a zero canvas at least as large as ``sample`` and the window at ``offset_xy``
        of ``sample``'s size is cut out. Image: ``uint8(0.5 * sample + 0.5 * window)``
        (truncated). Boxes of ``other``: scaled by ``r * jit_factor``, clipped to the
        jittered canvas, flipped in it, shifted by ``-offset``, clipped to ``sample``;
        then ``sample``'s boxes followed by them, keeping those inside the image
        (:func:`~rtmdet.transforms.boxes_inside`).
        """
        ori = sample.image
        if ori.ndim != 3 or other.image.ndim != 3:
            raise ValueError("CachedMixUp needs (H, W, C) images.")
        target_h, target_w = ori.shape[:2]
        out = np.full(self.img_scale + other.image.shape[2:], self.pad_val, dtype=np.float32)
        h, w = other.image.shape[:2]
        ratio = min(self.img_scale[0] / h, self.img_scale[1] / w)
        fitted = resize_bilinear(other.image, int(w * ratio), int(h * ratio))
        out[: fitted.shape[0], : fitted.shape[1]] = fitted
        ratio *= jit_factor
        out = resize_bilinear(out, int(out.shape[1] * jit_factor), int(out.shape[0] * jit_factor))
        if flip:
            out = out[:, ::-1]
        origin_h, origin_w = out.shape[:2]
        padded = np.zeros((max(origin_h, target_h), max(origin_w, target_w)) + ori.shape[2:], dtype=np.uint8)
        padded[:origin_h, :origin_w] = out  # float -> uint8 truncates, as numpy does in mmdetection
        x_off, y_off = offset_xy
        window = padded[y_off : y_off + target_h, x_off : x_off + target_w]

        boxes = other.boxes * np.float32(ratio)
        if self.bbox_clip_border:
            boxes = clip_boxes(boxes, origin_h, origin_w)
        if flip:
            boxes = np.stack([origin_w - boxes[:, 2], boxes[:, 1], origin_w - boxes[:, 0], boxes[:, 3]], axis=1)
        boxes = boxes - np.array([x_off, y_off] * 2, dtype=np.float32)
        if self.bbox_clip_border:
            boxes = clip_boxes(boxes, target_h, target_w)

        mixed = (0.5 * ori.astype(np.float32) + 0.5 * window.astype(np.float32)).astype(np.uint8)
        all_boxes = np.concatenate([sample.boxes, boxes], 0).astype(np.float32, copy=False)
        all_classes = np.concatenate([sample.classes, other.classes], 0)
        inside = boxes_inside(all_boxes, target_h, target_w)
        return CachedSample(mixed, all_boxes[inside], all_classes[inside])

    def __call__(self, aug_input: DetAugInput) -> T.Transform:
        rng = aug_input.rng
        history, members = _add_to_cache(aug_input, self.cache, self.stream_cache)
        if len(members) <= 1 or rng.uniform(0, 1) > self.prob:
            return T.NoOpTransform()
        for _ in range(self.max_iters):
            index = int(rng.integers(0, len(members) - 1))
            other = self.stream_cache.get(history, members[index]) if history is not None else members[index]
            if other is not None and len(other.boxes) != 0:  # None: rejected before this stage
                break
        if other is None or len(other.boxes) == 0:
            return T.NoOpTransform()
        jit_factor = rng.uniform(*self.ratio_range)
        flip = rng.uniform(0, 1) > self.flip_ratio
        # the jittered canvas is int(img_scale * jit_factor); a larger one is cropped at random
        jit_h, jit_w = int(self.img_scale[0] * jit_factor), int(self.img_scale[1] * jit_factor)
        target_h, target_w = aug_input.image.shape[:2]
        y_off = int(rng.integers(0, jit_h - target_h)) if jit_h > target_h else 0
        x_off = int(rng.integers(0, jit_w - target_w)) if jit_w > target_w else 0
        current = CachedSample(aug_input.image, aug_input.boxes, aug_input.classes)
        out = self.mix(current, other, jit_factor, flip, (x_off, y_off))
        aug_input.image, aug_input.boxes, aug_input.classes = out
        return T.NoOpTransform()
