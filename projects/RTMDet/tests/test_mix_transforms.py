"""CachedMosaic and CachedMixUp: quadrants and box offsets for a fixed centre and fixed
cached images, mixup blending and box union, the caches and their draws."""

import numpy as np
import pytest
from rtmdet_testing import ScriptedRng

from rtmdet.mix_transforms import CachedMixUp, CachedMosaic, CachedSample, mosaic_combine
from rtmdet.transforms import DetAugInput


def _sample(h, w, value, boxes, classes):
    return CachedSample(
        np.full((h, w, 3), value, np.uint8), np.array(boxes, np.float32).reshape(-1, 4), np.array(classes, np.int64)
    )


def test_mosaic_combine_coordinates():
    # a 640x480 (w x h) image left-above the centre (700, 600): pasted at (60, 120)-(700, 600), uncut
    assert mosaic_combine("top_left", (700, 600), (640, 480), (640, 640)) == ((60, 120, 700, 600), (0, 0, 640, 480))
    # cut by the canvas: top-left of centre (100, 50) keeps the bottom-right 100x50 of the image
    assert mosaic_combine("top_left", (100, 50), (640, 480), (640, 640)) == ((0, 0, 100, 50), (540, 430, 640, 480))
    assert mosaic_combine("bottom_right", (1000, 1100), (640, 480), (640, 640)) == (
        (1000, 1100, 1280, 1280),
        (0, 0, 280, 180),
    )
    with pytest.raises(ValueError, match="unknown location"):
        mosaic_combine("middle", (0, 0), (1, 1), (1, 1))


def test_mosaic_quadrants_and_box_offsets():
    mosaic = CachedMosaic(img_scale=(100, 100))
    samples = [
        # 50x100 (h x w): scale min(100/50, 100/100) = 1; top-left of (120, 80): pasted at (20, 30)
        _sample(50, 100, 10, [[10, 10, 30, 40]], [0]),
        # 200x100: scale 0.5 -> 100x50 (h x w); top-right: (120, 0)-(170, 80), its top 20 rows cut
        _sample(200, 100, 20, [[0, 0, 100, 200]], [1]),
        # 100x100: bottom-left: (20, 80)-(120, 180)
        _sample(100, 100, 30, [[80, 0, 100, 20], [0, 90, 10, 100]], [2, 3]),
        # 100x150: scale 2/3 -> 66x100 (h x w); bottom-right: (120, 80)-(200, 146), its right 20 cut
        _sample(100, 150, 40, [[140, 90, 150, 100], [0, 0, 15, 15]], [4, 5]),
    ]
    out = mosaic.combine(samples, (120, 80))
    img = out.image
    assert img.shape == (200, 200, 3) and img.dtype == np.uint8
    at = {(y, x): int(img[y, x, 0]) for y, x in [(10, 10), (40, 50), (29, 50), (40, 150), (10, 175)]}
    assert at == {(10, 10): 114, (40, 50): 10, (29, 50): 114, (40, 150): 20, (10, 175): 114}
    assert img[100, 60, 0] == 30 and img[190, 60, 0] == 114  # bottom-left ends at y = 180
    assert img[100, 150, 0] == 40 and img[100, 199, 0] == 40 and img[150, 150, 0] == 114  # ends at y = 146
    r = np.float32(2 / 3)
    expected = np.array(
        [
            [30, 40, 50, 70],  # + (20, 30)
            [120, 0, 170, 80],  # * 0.5 + (120, -20) = (120, -20, 170, 80), clipped at y = 0
            [100, 80, 120, 100],  # + (20, 80)
            [20, 170, 30, 180],
            # (140, 90, 150, 100) * 2/3 + (120, 80) starts at x = 213 > 200: clipped to x1 = x2 = 200, dropped
            [120, 80, 120 + 15 * r, 80 + 15 * r],
        ],
        np.float32,
    )
    np.testing.assert_allclose(out.boxes, expected, rtol=0, atol=1e-4)
    assert out.boxes.dtype == np.float32 and out.classes.tolist() == [0, 1, 2, 3, 5]


def _input(value, classes, rng, size=(20, 30)):
    img = np.full(size + (3,), value, np.uint8)
    boxes = np.array([[1, 1, 5, 5]] * len(classes), np.float32).reshape(-1, 4)
    return DetAugInput(img, boxes=boxes, classes=classes, rng=rng)


def test_mosaic_cache_fill_fifo_and_draws():
    mosaic = CachedMosaic(img_scale=(32, 32), max_cached_images=5, random_pop=False)
    for i in range(4):  # cache <= 4 entries: the sample passes unchanged, nothing is drawn
        rng = ScriptedRng()
        x = _input(i, [i], rng)
        mosaic(x)
        assert x.image.shape == (20, 30, 3) and rng.calls == []
    # 5th sample: prob draw, three cached indices in [0, 4) (never the newest), the centre
    rng = ScriptedRng(uniform=[0.5, 1.0, 1.25], integers=[0, 3, 1])
    x = _input(4, [4], rng)
    mosaic(x)
    assert rng.calls == [
        ("uniform", (0, 1)),
        ("integers", (0, 4)),
        ("integers", (0, 4)),
        ("integers", (0, 4)),
        ("uniform", (0.5, 1.5)),
        ("uniform", (0.5, 1.5)),
    ]
    assert x.image.shape == (64, 64, 3)
    assert sorted(x.classes.tolist()) == [0, 1, 3, 4]  # current top-left + cached 0, 3, 1
    # full cache: FIFO pops the oldest
    for i in range(5, 8):
        mosaic(_input(i, [i], np.random.default_rng(i)))
    assert len(mosaic.cache) == 5
    assert [int(e.classes[0]) for e in mosaic.cache.entries] == [3, 4, 5, 6, 7]
    # cached entries are copies: later in-place edits of a sample's arrays do not reach them
    x = _input(8, [8], np.random.default_rng(0))
    mosaic(x)
    assert mosaic.cache.entries[-1].image is not x.image


def test_mosaic_random_pop_never_pops_the_newest_and_prob():
    mosaic = CachedMosaic(img_scale=(32, 32), max_cached_images=4, random_pop=True, prob=0.0)
    for i in range(50):
        mosaic(_input(i, [i], np.random.default_rng(i)))
        assert len(mosaic.cache) <= 4
        assert int(mosaic.cache.entries[-1].classes[0]) == i
    x = _input(99, [99], np.random.default_rng(0))
    mosaic(x)  # prob 0: unchanged
    assert x.image.shape == (20, 30, 3)
    with pytest.raises(ValueError, match=">= 4"):
        CachedMosaic(max_cached_images=3)


def test_mixup_blend_and_box_union():
    mixup = CachedMixUp(img_scale=(64, 64), ratio_range=(1.0, 1.0))
    sample = _sample(64, 64, 100, [[0, 0, 10, 10]], [0])
    other = _sample(32, 64, 50, [[4, 4, 20, 16]], [1])  # fits at scale 1 into the top half
    out = mixup.mix(sample, other, jit_factor=1.0, flip=True)
    # top half: 0.5 * 100 + 0.5 * 50; bottom half: the 114 fill of the fitted canvas
    assert (out.image[:32] == 75).all() and (out.image[32:] == 107).all()
    np.testing.assert_allclose(out.boxes, [[0, 0, 10, 10], [44, 4, 60, 16]])  # flipped in the 64-wide canvas
    assert out.classes.tolist() == [0, 1]

    # jitter 0.5: a 32x32 canvas on a zero background; boxes scaled by 0.5
    out = mixup.mix(sample, other, jit_factor=0.5, flip=False)
    assert out.image[0, 0, 0] == 75 and out.image[20, 0, 0] == 107 and out.image[40, 40, 0] == 50
    np.testing.assert_allclose(out.boxes, [[0, 0, 10, 10], [2, 2, 10, 8]])

    # jitter 2: a 128x128 canvas cut at offset (x=40, y=8): the box ends at x = 40 -> dropped
    out = mixup.mix(sample, other, jit_factor=2.0, flip=False, offset_xy=(40, 8))
    np.testing.assert_allclose(out.boxes, [[0, 0, 10, 10]])
    assert out.classes.tolist() == [0]
    # the blend truncates: (0.5 * 101 + 0.5 * 50) = 75.5 -> 75
    odd = _sample(64, 64, 101, [[0, 0, 10, 10]], [0])
    assert mixup.mix(odd, other, 1.0, False).image[0, 0, 0] == 75


def test_mixup_cache_draws_skip_empty_entries():
    mixup = CachedMixUp(img_scale=(20, 30), ratio_range=(1.0, 1.0), max_cached_images=10, max_iters=15)
    x = _input(0, [], ScriptedRng())  # first sample: cache of 1, unchanged
    mixup(x)
    assert x.image[0, 0, 0] == 0
    # entries [empty, current]: only entry 0 can be drawn (15 times, max_iters), it has no box: unchanged
    x = _input(10, [7], ScriptedRng(uniform=[0.0], integers=[0] * 15))
    mixup(x)
    assert x.image[0, 0, 0] == 10 and x.classes.tolist() == [7]
    # entries [empty, box, current]: the draw retries past the empty entry 0 and takes entry 1
    rng = ScriptedRng(uniform=[0.0, 1.0, 0.0], integers=[0, 1])
    x = _input(30, [3], rng)
    mixup(x)
    assert rng.calls[:3] == [("uniform", (0, 1)), ("integers", (0, 2)), ("integers", (0, 2))]
    assert x.classes.tolist() == [3, 7] and x.image[0, 0, 0] == 20  # (30 + 10) / 2
    # max_iters draws all empty: unchanged
    mixup = CachedMixUp(img_scale=(20, 30), ratio_range=(1.0, 1.0), max_iters=2)
    for v in (1, 2):
        mixup(_input(v, [], np.random.default_rng(v)))
    x = _input(3, [3], ScriptedRng(uniform=[0.0], integers=[0, 1]))
    mixup(x)
    assert x.image[0, 0, 0] == 3 and x.classes.tolist() == [3]


def test_mixup_cache_bounded_and_prob():
    mixup = CachedMixUp(img_scale=(20, 30), max_cached_images=3, random_pop=False, prob=0.0)
    for i in range(10):
        x = _input(i, [i], np.random.default_rng(i))
        mixup(x)
        assert x.classes.tolist() == [i]  # prob 0: never mixed
    assert [int(e.classes[0]) for e in mixup.cache.entries] == [7, 8, 9]
    with pytest.raises(ValueError, match=">= 2"):
        CachedMixUp(max_cached_images=1)
