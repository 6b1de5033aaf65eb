"""Single-image transforms of the RTMDet recipe on hand-made images with known boxes:
resize / crop / flip / pad box arithmetic, HSV values, the resize filter."""

import numpy as np
import pytest
from rtmdet_testing import ScriptedRng

from rtmdet.transforms import (
    DetAugInput,
    HSVTransform,
    Pad,
    RandomCrop,
    RandomFlip,
    RandomResize,
    SampleRejected,
    YOLOXHSVRandomAug,
    bgr_to_hsv,
    boxes_inside,
    hsv_to_bgr,
    rescale_size,
    resize_bilinear,
)


def _input(h, w, boxes, classes=None, rng=None, value=None):
    img = np.full((h, w, 3), 7, np.uint8) if value is None else value
    classes = list(range(len(boxes))) if classes is None else classes
    return DetAugInput(img, boxes=np.array(boxes, np.float32).reshape(-1, 4), classes=classes, rng=rng)


def test_rescale_size_follows_mmcv():
    assert rescale_size((640, 480), (1280, 1280)) == ((1280, 960), 2.0)
    assert rescale_size((640, 480), (640, 640)) == ((640, 480), 1.0)
    # long edge bound: 1000x500 into 640 -> 0.64 -> (640, 320); short edge bound: min(1280/1000, 640/500)
    assert rescale_size((1000, 500), (640, 640))[0] == (640, 320)
    (w, h), f = rescale_size((333, 500), (100, 200))  # factor min(200/500, 100/333) = 0.3003
    assert f == pytest.approx(100 / 333) and (w, h) == (100, 150)


def test_random_resize_scales_and_clips_boxes():
    # ratio = 1/3 * (2.0 - 0.5) + 0.5 = 1.0 -> target 1280x1280 -> a 480x640 image doubles
    aug = RandomResize(scale=(1280, 1280), ratio_range=(0.5, 2.0))
    x = _input(480, 640, [[10, 20, 110, 220], [600, 400, 640, 480]], rng=ScriptedRng(random=[1 / 3]))
    tfm = aug(x)
    assert x.image.shape == (960, 1280, 3) and (tfm.new_h, tfm.new_w) == (960, 1280)
    np.testing.assert_allclose(x.boxes, [[20, 40, 220, 440], [1200, 800, 1280, 960]])
    assert x.boxes.dtype == np.float32 and x.classes.tolist() == [0, 1]
    # ratio 0.5 -> target 640x640: factor min(640/640, 640/480) = 1, image unchanged in size
    x = _input(480, 640, [[10, 20, 110, 220]], rng=ScriptedRng(random=[0.0]))
    aug(x)
    assert x.image.shape == (480, 640, 3)
    np.testing.assert_allclose(x.boxes, [[10, 20, 110, 220]])
    # keep_ratio=False: exactly the target; boxes by (new_w / w, new_h / h), clipped to the image
    x = _input(100, 200, [[100, 50, 250, 100]], rng=ScriptedRng(random=[0.0]))
    RandomResize(scale=(300, 100), ratio_range=(1.0, 1.0), keep_ratio=False)(x)
    assert x.image.shape == (300, 100, 3)
    np.testing.assert_allclose(x.boxes, [[50, 150, 100, 300]])


def test_random_crop_box_arithmetic_and_rejection():
    aug = RandomCrop(crop_size=(50, 80))
    boxes = [
        [110, 40, 150, 70],  # inside the window
        [90, 20, 120, 90],  # overlaps: shifted and clipped
        [0, 0, 50, 50],  # left of the window: clipped to zero width on the border, dropped
        [170, 75, 250, 99],  # overlaps the bottom-right corner
    ]
    rng = ScriptedRng(integers=[30, 100])  # offset_h, offset_w
    x = _input(100, 200, boxes, classes=[3, 4, 5, 6], rng=rng)
    x.image = np.arange(100 * 200 * 3, dtype=np.int64).reshape(100, 200, 3).astype(np.uint8)
    expected_pixels = x.image[30:80, 100:180].copy()
    tfm = aug(x)
    assert rng.calls == [("integers", (0, 51)), ("integers", (0, 121))]  # margins 50 and 120, inclusive
    assert (tfm.x0, tfm.y0, tfm.w, tfm.h) == (100, 30, 80, 50)
    np.testing.assert_array_equal(x.image, expected_pixels)
    np.testing.assert_allclose(x.boxes, [[10, 10, 50, 40], [0, 0, 20, 50], [70, 45, 80, 50]])
    assert x.classes.tolist() == [3, 4, 6]

    # a window larger than the image keeps it whole (offsets 0)
    x = _input(100, 200, boxes, rng=ScriptedRng(integers=[0, 0]))
    RandomCrop(crop_size=(640, 640))(x)
    assert x.image.shape == (100, 200, 3) and len(x.boxes) == 4

    # no box left: rejected (mmdetection returns None), unless allow_negative_crop
    with pytest.raises(SampleRejected, match="keeps no box"):
        aug(_input(100, 200, [[0, 0, 50, 50]], rng=ScriptedRng(integers=[30, 100])))
    with pytest.raises(SampleRejected):
        aug(_input(100, 200, [], rng=ScriptedRng(integers=[30, 100])))
    x = _input(100, 200, [[0, 0, 50, 50]], rng=ScriptedRng(integers=[30, 100]))
    RandomCrop(crop_size=(50, 80), allow_negative_crop=True)(x)
    assert x.boxes.shape == (0, 4) and x.classes.shape == (0,)


def test_boxes_inside_rule():
    boxes = np.array([[0, 0, 0, 10], [5, 5, 5, 5], [10, 0, 10, 5], [9, 9, 20, 20], [-5, -5, 0.5, 0.5]], np.float32)
    # x1 < w, y1 < h, x2 > 0, y2 > 0: a zero-size box inside the image counts as inside
    assert boxes_inside(boxes, 10, 10).tolist() == [False, True, False, True, True]


def test_random_flip_boxes_and_pixels():
    img = np.zeros((60, 200, 3), np.uint8)
    img[:, :100] = 255
    x = _input(60, 200, [[10, 20, 50, 60]], value=img, rng=ScriptedRng(random=[0.3]))
    RandomFlip(prob=0.5)(x)
    np.testing.assert_allclose(x.boxes, [[150, 20, 190, 60]])
    assert x.image[0, 0, 0] == 0 and x.image[0, 199, 0] == 255
    x = _input(60, 200, [[10, 20, 50, 60]], rng=ScriptedRng(random=[0.7]))  # 0.7 >= 0.5: no flip
    RandomFlip(prob=0.5)(x)
    np.testing.assert_allclose(x.boxes, [[10, 20, 50, 60]])
    x = _input(60, 200, [[10, 20, 50, 60]], rng=ScriptedRng(random=[0.0]))
    RandomFlip(prob=0.5, direction="vertical")(x)
    np.testing.assert_allclose(x.boxes, [[10, 0, 50, 40]])
    x = _input(60, 200, [[10, 20, 50, 60]], rng=ScriptedRng(random=[0.0]))
    RandomFlip(prob=0.5, direction="diagonal")(x)
    np.testing.assert_allclose(x.boxes, [[150, 0, 190, 40]])


def test_pad_bottom_right_with_114():
    img = np.full((50, 80, 3), 9, np.uint8)
    x = _input(50, 80, [[1, 2, 30, 40]], value=img)
    Pad(size=(64, 100), pad_val=114)(x)
    assert x.image.shape == (64, 100, 3)
    assert (x.image[:50, :80] == 9).all() and (x.image[50:] == 114).all() and (x.image[:, 80:] == 114).all()
    np.testing.assert_allclose(x.boxes, [[1, 2, 30, 40]])
    x = _input(700, 80, [[1, 2, 30, 40]])  # taller than the size: only the width is padded
    Pad(size=(640, 640))(x)
    assert x.image.shape == (700, 640, 3)


def test_hsv_conversion_of_known_colours():
    bgr = np.array([[[0, 0, 255], [255, 0, 0], [0, 255, 0], [128, 128, 128], [50, 100, 200]]], np.uint8)
    # (50, 100, 200): v = 200, diff = 150, s = 150 / 200 * 255 = 191.25 -> 191, hue 20 deg -> 10
    expected = [[0, 255, 255], [120, 255, 255], [60, 255, 255], [0, 0, 128], [10, 191, 200]]
    np.testing.assert_array_equal(bgr_to_hsv(bgr)[0], expected)
    np.testing.assert_array_equal(hsv_to_bgr(bgr_to_hsv(bgr))[0, :4], bgr[0, :4])


def test_hsv_transform_against_a_hand_computed_pixel():
    # BGR (50, 100, 200) -> HSV (10, 191, 200); gains (5, -30, 20) -> (15, 161, 220):
    # 30 degrees = sector 0, f = 0.5: b = v(1 - s) = 220 * (1 - 161/255) = 81.1 -> 81,
    # g = v(1 - s(1 - f)) = 220 * (1 - 0.3157) = 150.5 -> 150, r = v = 220 (truncated as OpenCV)
    img = np.array([[[50, 100, 200]]], np.uint8)
    np.testing.assert_array_equal(HSVTransform((5, -30, 20)).apply_image(img)[0, 0], [81, 150, 220])
    # RGB input: the same colour gives the same colour
    rgb = img[..., ::-1].copy()
    np.testing.assert_array_equal(HSVTransform((5, -30, 20), "RGB").apply_image(rgb)[0, 0], [220, 150, 81])
    # hue wraps modulo 180, saturation/value clip to [0, 255]
    # red: HSV (0, 255, 255) -> (175, 255, 255): 350 deg, sector 5, f = 5/6:
    # b = v(1 - s f) = 255 / 6 = 42.5 -> 42, g = v(1 - s) = 0, r = v = 255
    red = np.array([[[0, 0, 255]]], np.uint8)
    np.testing.assert_array_equal(HSVTransform((-5, 30, 30)).apply_image(red)[0, 0], [42, 0, 255])


def test_yolox_hsv_gains_are_mmdetection_draws():
    # uniform(-1, 1, 3) * (5, 30, 30) = (-2.5, 9, -29.7), all kept, truncated toward 0
    rng = ScriptedRng(uniform=[np.array([-0.5, 0.3, -0.99])], integers=[np.array([1, 1, 1])])
    assert YOLOXHSVRandomAug().draw_gains(rng).tolist() == [-2, 9, -29]
    assert rng.calls == [("uniform", (-1, 1, 3)), ("integers", (0, 2, 3))]
    rng = ScriptedRng(uniform=[np.array([0.5, 0.3, 0.9])], integers=[np.array([1, 0, 1])])
    gains = YOLOXHSVRandomAug().draw_gains(rng)
    assert gains.dtype == np.int16 and gains.tolist() == [2, 0, 27]
    x = _input(4, 4, [[0, 0, 2, 2]], rng=np.random.default_rng(0))
    YOLOXHSVRandomAug()(x)
    assert x.image.shape == (4, 4, 3) and x.boxes.tolist() == [[0, 0, 2, 2]]


def test_resize_bilinear_is_linear_interpolation_without_antialiasing():
    # 1x4 -> 1x2: half-pixel centres sample between pixels 0/1 and 2/3 -> means, no wider filter
    img = np.array([[0, 100, 200, 250]], np.uint8)[..., None].repeat(3, -1)
    np.testing.assert_array_equal(resize_bilinear(img, 2, 1)[0, :, 0], [50, 225])
    up = resize_bilinear(np.array([[0, 200]], np.uint8), 4, 1)  # 2D, upsampling: 0, 50, 150, 200
    np.testing.assert_array_equal(up, [[0, 50, 150, 200]])
    f = resize_bilinear(np.array([[0.0, 1.0]], np.float32), 4, 1)
    np.testing.assert_allclose(f, [[0, 0.25, 0.75, 1.0]])
    with pytest.raises(ValueError, match="positive"):
        resize_bilinear(img, 0, 1)


def test_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match="ratio_range"):
        RandomResize((640, 640), (2.0, 0.5))
    with pytest.raises(ValueError, match="crop_size"):
        RandomCrop((0, 640))
    with pytest.raises(ValueError, match="direction"):
        RandomFlip(0.5, "sideways")
    with pytest.raises(ValueError, match="2 boxes but 1 classes"):
        DetAugInput(np.zeros((4, 4, 3), np.uint8), boxes=np.zeros((2, 4)), classes=[0])
