import sys

import numpy as np
import pytest
from PIL import Image, ImageOps

from d2lite.data import transforms as T


def _img(h, w, c=3):
    return np.arange(h * w * c, dtype=np.uint8).reshape(h, w, c)


def test_import_path():
    import d2lite.data.transforms as T2

    assert T2.ResizeShortestEdge is T.ResizeShortestEdge
    for name in [
        "Transform",
        "NoOpTransform",
        "HFlipTransform",
        "VFlipTransform",
        "ResizeTransform",
        "CropTransform",
        "ExtentTransform",
        "ColorTransform",
        "PILColorTransform",
        "Augmentation",
        "AugInput",
        "AugmentationList",
        "RandomApply",
        "RandomFlip",
        "Resize",
        "ResizeShortestEdge",
        "ResizeScale",
        "RandomCrop",
        "FixedSizeCrop",
        "RandomBrightness",
        "RandomContrast",
        "RandomSaturation",
        "RandomLighting",
        "TransformList",
    ]:
        assert hasattr(T, name), name


def test_hflip_vflip_boxes():
    box = np.array([[10.0, 20.0, 30.0, 40.0]])
    np.testing.assert_allclose(T.HFlipTransform(100).apply_box(box), [[70, 20, 90, 40]])
    np.testing.assert_allclose(T.VFlipTransform(50).apply_box(box), [[10, 10, 30, 30]])
    img = _img(4, 5)
    np.testing.assert_array_equal(T.HFlipTransform(5).apply_image(img), img[:, ::-1])


def test_resize_transform_boxes_and_inverse():
    t = T.ResizeTransform(100, 200, 50, 100)
    box = np.array([[10.0, 20.0, 30.0, 40.0]])
    np.testing.assert_allclose(t.apply_box(box), [[5, 10, 15, 20]])
    assert t.apply_image(_img(100, 200)).shape == (50, 100, 3)
    np.testing.assert_allclose(t.inverse().apply_box(t.apply_box(box)), box)
    f = np.random.rand(100, 200, 3).astype(np.float32)
    out = t.apply_image(f)
    assert out.shape == (50, 100, 3) and out.dtype == np.float32
    gray = _img(100, 200, 1)
    assert t.apply_image(gray).shape == (50, 100, 1)
    with pytest.raises(ValueError, match=r"\(100, 200\)"):
        t.apply_image(_img(10, 10))


def test_transform_list_inverse():
    tl = T.TransformList([T.ResizeTransform(40, 60, 80, 120), T.HFlipTransform(120)])
    box = np.array([[1.0, 2.0, 11.0, 22.0]])
    out = tl.apply_box(box)
    np.testing.assert_allclose(out, [[120 - 22, 4, 120 - 2, 44]])
    np.testing.assert_allclose(tl.inverse().apply_box(out), box)


def test_resize_shortest_edge_numbers():
    gos = T.ResizeShortestEdge.get_output_shape
    assert gos(480, 640, 800, sys.maxsize) == (800, 1067)  # 640 * 800 / 480 = 1066.67
    assert gos(480, 640, 800, 1000) == (750, 1000)
    assert gos(640, 480, 800, 1000) == (1000, 750)
    assert gos(100, 100, 32, 1333) == (32, 32)

    aug = T.ResizeShortestEdge(800, max_size=1000)
    inp = T.AugInput(_img(48, 64), boxes=np.array([[8.0, 4.0, 16.0, 12.0]]))
    tfm = aug(inp)
    assert inp.image.shape == (750, 1000, 3)
    np.testing.assert_allclose(inp.boxes, [[125, 62.5, 250, 187.5]])
    assert isinstance(tfm, T.ResizeTransform)

    aug = T.ResizeShortestEdge([16, 24], sample_style="choice")
    sizes = {min(aug.get_transform(_img(48, 64)).new_h, 99) for _ in range(30)}
    assert sizes == {16, 24}
    aug = T.ResizeShortestEdge((10, 12), sample_style="range")
    sizes = {aug.get_transform(_img(48, 64)).new_h for _ in range(60)}
    assert sizes == {10, 11, 12}
    assert isinstance(T.ResizeShortestEdge(0).get_transform(_img(4, 4)), T.NoOpTransform)
    with pytest.raises(ValueError, match="two values"):
        T.ResizeShortestEdge([1, 2, 3], sample_style="range")
    with pytest.raises(ValueError, match="sample_style"):
        T.ResizeShortestEdge(3, sample_style="bad")


def test_resize_scale_and_fixed_size_crop():
    img = _img(100, 200)
    t = T.ResizeScale(1.0, 1.0, 64, 64).get_transform(img)
    assert (t.new_h, t.new_w) == (32, 64)  # min(64/100, 64/200) = 0.32
    t = T.ResizeScale(2.0, 2.0, 64, 64).get_transform(img)
    assert (t.new_h, t.new_w) == (64, 128)

    # smaller than the crop: padded bottom/right with pad_value
    inp = T.AugInput(np.zeros((32, 64, 3), np.uint8), boxes=np.array([[1.0, 2.0, 10.0, 20.0]]))
    T.FixedSizeCrop((64, 64))(inp)
    assert inp.image.shape == (64, 64, 3)
    assert (inp.image[32:] == 128).all() and (inp.image[:32] == 0).all()
    np.testing.assert_allclose(inp.boxes, [[1, 2, 10, 20]])

    # larger than the crop: cropped at a random offset, boxes shifted by it
    np.random.seed(3)
    inp = T.AugInput(_img(64, 128), boxes=np.array([[70.0, 10.0, 90.0, 30.0]]))
    tfm = T.FixedSizeCrop((64, 64))(inp)
    crop = tfm.transforms[0]
    assert inp.image.shape == (64, 64, 3)
    assert crop.y0 == 0 and 0 <= crop.x0 <= 64
    np.testing.assert_allclose(inp.boxes, [[70 - crop.x0, 10, 90 - crop.x0, 30]])
    np.testing.assert_array_equal(inp.image, _img(64, 128)[:, crop.x0 : crop.x0 + 64])

    inp = T.AugInput(np.zeros((32, 64, 3), np.uint8))
    T.FixedSizeCrop((64, 64), pad=False)(inp)
    assert inp.image.shape == (32, 64, 3)


def test_random_crop_sizes():
    img = _img(50, 60)
    assert T.RandomCrop("absolute", (20, 30)).get_transform(img).apply_image(img).shape == (20, 30, 3)
    assert T.RandomCrop("absolute", (80, 80)).get_transform(img).apply_image(img).shape == (50, 60, 3)
    assert T.RandomCrop("relative", (0.5, 0.5)).get_transform(img).apply_image(img).shape == (25, 30, 3)
    for _ in range(10):
        h, w = T.RandomCrop("relative_range", (0.5, 0.5)).get_crop_size((50, 60))
        assert 25 <= h <= 50 and 30 <= w <= 60
        h, w = T.RandomCrop("absolute_range", (20, 40)).get_crop_size((50, 60))
        assert 20 <= h <= 40 and 20 <= w <= 40
    t = T.CropTransform(5, 10, 20, 30)
    np.testing.assert_allclose(t.apply_box(np.array([[10.0, 20.0, 15.0, 25.0]])), [[5, 10, 10, 15]])
    with pytest.raises(ValueError, match="crop_type"):
        T.RandomCrop("bogus", (1, 1))


def test_random_flip():
    img = _img(10, 20)
    assert isinstance(T.RandomFlip(1.0).get_transform(img), T.HFlipTransform)
    assert T.RandomFlip(1.0).get_transform(img).width == 20
    v = T.RandomFlip(1.0, horizontal=False, vertical=True).get_transform(img)
    assert isinstance(v, T.VFlipTransform) and v.height == 10
    assert isinstance(T.RandomFlip(0.0).get_transform(img), T.NoOpTransform)
    with pytest.raises(ValueError):
        T.RandomFlip(horizontal=True, vertical=True)
    with pytest.raises(ValueError):
        T.RandomFlip(horizontal=False, vertical=False)
    np.random.seed(0)
    n = sum(isinstance(T.RandomFlip(0.5).get_transform(img), T.HFlipTransform) for _ in range(400))
    assert 150 < n < 250


def test_resize_and_aug_list():
    inp = T.AugInput(_img(10, 20), boxes=np.array([[2.0, 2.0, 4.0, 6.0]]))
    tl = T.AugmentationList([T.Resize((20, 40)), T.RandomFlip(1.0), T.NoOpTransform()])(inp)
    assert isinstance(tl, T.TransformList)
    assert inp.image.shape == (20, 40, 3)
    np.testing.assert_allclose(inp.boxes, [[40 - 8, 4, 40 - 4, 12]])
    assert T.Resize(8).get_transform(_img(4, 4)).new_w == 8


def test_random_apply():
    img = _img(10, 20)
    assert isinstance(T.RandomApply(T.HFlipTransform(20), prob=0.0).get_transform(img), T.NoOpTransform)
    inp = T.AugInput(img.copy())
    t = T.RandomApply(T.RandomFlip(1.0), prob=1.0)(inp)
    assert isinstance(t, T.HFlipTransform)
    np.testing.assert_array_equal(inp.image, img[:, ::-1])
    with pytest.raises(ValueError):
        T.RandomApply(T.RandomFlip(), prob=1.5)


@pytest.mark.parametrize("first", [T.RandomFlip(), T.HFlipTransform(20), "not an augmentation", None])
@pytest.mark.parametrize(
    "prob, error", [(1.5, ValueError), (-0.1, ValueError), (float("nan"), ValueError), ("0.5", TypeError)]
)
def test_random_apply_checks_prob_before_the_transform(first, prob, error):
    # detectron2 documents prob in [0, 1]; the probability is reported whatever the first argument is
    with pytest.raises(error, match="RandomApply: probability must be"):
        T.RandomApply(first, prob=prob)


def test_random_apply_bad_transform_with_good_prob():
    with pytest.raises(TypeError, match="Transform or an Augmentation"):
        T.RandomApply("not an augmentation", prob=0.5)


def test_extent_transform():
    t = T.ExtentTransform(src_rect=(0, 0, 100, 50), output_size=(25, 50))
    np.testing.assert_allclose(t.apply_coords(np.array([[10.0, 20.0], [100.0, 50.0]])), [[5, 10], [50, 25]])
    assert t.apply_image(_img(50, 100)).shape == (25, 50, 3)


def test_color_transforms():
    img = _img(4, 6)
    t = T.ColorTransform(lambda x: 255 - x)
    np.testing.assert_array_equal(t.apply_image(img), 255 - img)
    coords = np.array([[1.0, 2.0]])
    np.testing.assert_array_equal(t.apply_coords(coords), coords)
    assert isinstance(t.inverse(), T.NoOpTransform)
    p = T.PILColorTransform(ImageOps.invert)
    np.testing.assert_array_equal(p.apply_image(img), 255 - img)
    with pytest.raises(ValueError):
        T.ColorTransform(3)


def test_photometric_augmentations():
    img = np.full((4, 4, 3), 100, dtype=np.float32)
    img[0, 0] = [200, 50, 20]
    out = T.RandomBrightness(0.5, 0.5).get_transform(img).apply_image(img.copy())
    np.testing.assert_allclose(out, img * 0.5)
    out = T.RandomContrast(0.0, 0.0).get_transform(img).apply_image(img.copy())
    np.testing.assert_allclose(out, np.full_like(img, img.mean()))
    out = T.RandomSaturation(0.0, 0.0).get_transform(img).apply_image(img.copy())
    gray = img.dot([0.299, 0.587, 0.114])
    np.testing.assert_allclose(out, np.repeat(gray[:, :, None], 3, axis=2), rtol=1e-5)
    out = T.RandomLighting(0.0).get_transform(img).apply_image(img.copy())
    np.testing.assert_allclose(out, img)
    with pytest.raises(ValueError, match="3-channel"):
        T.RandomSaturation(0.5, 1.5).get_transform(np.zeros((4, 4, 1), np.float32))


def test_aug_input_checks():
    with pytest.raises(TypeError):
        T.AugInput(np.zeros((4, 4), dtype=np.int32))
    with pytest.raises(TypeError):
        T.AugInput([[1, 2]])

    class Bad(T.Augmentation):
        def get_transform(self, image):
            return "not a transform"

    with pytest.raises(TypeError, match="must return an instance of Transform"):
        Bad()(T.AugInput(_img(2, 2)))


def test_augmentation_with_boxes_input():
    class BoxAware(T.Augmentation):
        def get_transform(self, image, boxes):
            return T.HFlipTransform(image.shape[1]) if len(boxes) else T.NoOpTransform()

    inp = T.AugInput(_img(4, 10), boxes=np.array([[0.0, 0.0, 2.0, 2.0]]))
    assert isinstance(BoxAware()(inp), T.HFlipTransform)
    np.testing.assert_allclose(inp.boxes, [[8, 0, 10, 2]])
    assert "RandomFlip(" in repr(T.RandomFlip(0.3))
    img, tfms = T.apply_augmentations([T.Resize((2, 5))], _img(4, 10))
    assert img.shape == (2, 5, 3) and isinstance(tfms, T.TransformList)


def test_resize_interp_nearest_keeps_values():
    img = np.zeros((2, 2, 3), np.uint8)
    img[0, 0] = 255
    out = T.ResizeTransform(2, 2, 4, 4, Image.NEAREST).apply_image(img)
    assert (out[:2, :2] == 255).all() and (out[2:, 2:] == 0).all()
