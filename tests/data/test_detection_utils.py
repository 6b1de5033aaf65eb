import numpy as np
import pytest
import torch
from PIL import Image

from d2lite.data import detection_utils as utils
from d2lite.data import transforms as T
from d2lite.structures import Boxes, BoxMode, Instances


def _write(path, arr, **kw):
    Image.fromarray(arr).save(str(path), **kw)
    return str(path)


def test_read_image_formats(tmp_path):
    arr = np.zeros((6, 8, 3), np.uint8)
    arr[..., 0] = 200  # red
    arr[..., 2] = 10
    f = _write(tmp_path / "x.png", arr)
    rgb = utils.read_image(f, format="RGB")
    assert rgb.shape == (6, 8, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 0]) == (200, 0, 10)
    bgr = utils.read_image(f, format="BGR")
    assert tuple(bgr[0, 0]) == (10, 0, 200)
    gray = utils.read_image(f, format="L")
    assert gray.shape == (6, 8, 1)
    assert gray[0, 0, 0] == int(round(200 * 0.299 + 10 * 0.114))
    assert utils.read_image(f).shape == (6, 8, 3)


def test_read_image_exif_orientation(tmp_path):
    # 40 wide x 20 tall: left half red, right half blue. Orientation 6 = rotate 90 deg clockwise to display.
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = [255, 0, 0]
    arr[:, 20:] = [0, 0, 255]
    exif = Image.Exif()
    exif[0x0112] = 6
    f = str(tmp_path / "rot.jpg")
    Image.fromarray(arr).save(f, exif=exif.tobytes(), quality=95)
    img = utils.read_image(f, format="RGB")
    assert img.shape == (40, 20, 3)  # displayed upright: 20 wide, 40 tall
    # after the clockwise rotation, the former left (red) half is on top
    assert img[5, 10, 0] > 200 and img[5, 10, 2] < 50
    assert img[35, 10, 2] > 200 and img[35, 10, 0] < 50


def test_read_image_missing_and_corrupt(tmp_path):
    missing = str(tmp_path / "nope.jpg")
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        utils.read_image(missing)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"not an image at all")
    with pytest.raises(OSError, match="corrupt.jpg"):
        utils.read_image(str(corrupt))


def test_check_image_size():
    img = np.zeros((48, 64, 3), np.uint8)
    d = {"file_name": "a.png", "height": 48, "width": 64}
    utils.check_image_size(d, img)
    d = {"file_name": "a.png"}
    utils.check_image_size(d, img)
    assert (d["height"], d["width"]) == (48, 64)
    with pytest.raises(utils.SizeMismatchError) as e:
        utils.check_image_size({"file_name": "dir/a.png", "height": 50, "width": 64}, img)
    msg = str(e.value)
    assert "dir/a.png" in msg and "(64, 48)" in msg and "(64, 50)" in msg
    assert "EXIF" not in msg
    with pytest.raises(ValueError, match="EXIF"):  # transposed sizes hint at EXIF orientation
        utils.check_image_size({"file_name": "a.png", "height": 64, "width": 48}, img)


def test_transform_instance_annotations_flip_and_clip():
    anno = {"bbox": [10, 5, 20, 10], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 2}
    out = utils.transform_instance_annotations(dict(anno), [T.HFlipTransform(64)], (48, 64))
    assert out["bbox_mode"] == BoxMode.XYXY_ABS
    np.testing.assert_allclose(out["bbox"], [34, 5, 54, 15])
    # box partially outside the image after a crop gets clipped to the image
    out = utils.transform_instance_annotations(dict(anno), T.CropTransform(15, 0, 10, 12), (12, 10))
    np.testing.assert_allclose(out["bbox"], [0, 5, 10, 12])
    with pytest.raises(ValueError, match="keypoints"):
        utils.transform_instance_annotations(dict(anno), [], (4, 4), keypoint_hflip_indices=[0])


def test_annotations_to_instances_and_filter():
    annos = [
        {"bbox": [1, 2, 3, 4], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 3},
        {"bbox": np.array([5.0, 5.0, 5.0, 9.0]), "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0},
    ]
    inst = utils.annotations_to_instances(annos, (20, 30))
    assert isinstance(inst, Instances) and inst.image_size == (20, 30)
    assert isinstance(inst.gt_boxes, Boxes)
    torch.testing.assert_close(inst.gt_boxes.tensor, torch.tensor([[1.0, 2.0, 4.0, 6.0], [5.0, 5.0, 5.0, 9.0]]))
    assert inst.gt_classes.dtype == torch.int64 and inst.gt_classes.tolist() == [3, 0]
    kept, mask = utils.filter_empty_instances(inst, return_mask=True)
    assert len(kept) == 1 and mask.tolist() == [True, False]
    empty = utils.annotations_to_instances([], (20, 30))
    assert empty.gt_boxes.tensor.shape == (0, 4) and empty.gt_classes.shape == (0,)


def test_build_augmentation():
    train = utils.build_augmentation(True, min_size_train=(16, 24), max_size_train=40)
    assert isinstance(train[0], T.ResizeShortestEdge) and isinstance(train[1], T.RandomFlip)
    assert train[0].short_edge_length == (16, 24) and train[0].max_size == 40 and not train[0].is_range
    test = utils.build_augmentation(False, min_size_test=20, max_size_test=30)
    assert len(test) == 1 and test[0].short_edge_length == (20, 20)
    assert len(utils.build_augmentation(True, random_flip="none")) == 1
    with pytest.raises(ValueError, match="random_flip"):
        utils.build_augmentation(True, random_flip="diagonal")


# ------------------------------------------------------------ gen_crop_transform_with_instance
def _xyxy(x0, y0, x1, y1):
    return {"bbox": [x0, y0, x1, y1], "bbox_mode": BoxMode.XYXY_ABS}


@pytest.mark.parametrize(
    "crop_size, image_size, instance, x_range, y_range",
    [
        # centre (12.5, 22.5): x0 in [max(ceil(12.5 - 40), 0), min(80 - 40, floor(12.5))] = [0, 12]
        #                      y0 in [max(ceil(22.5 - 30), 0), min(100 - 30, floor(22.5))] = [0, 22]
        ((30, 40), (100, 80), {"bbox": [10, 20, 5, 5], "bbox_mode": BoxMode.XYWH_ABS}, (0, 12), (0, 22)),
        # centre (97.5, 55) near the right edge: x0 in [ceil(77.5), min(80, 97)] = [78, 80]; y0 in [35, 55]
        ((20, 20), (100, 100), _xyxy(95, 50, 100, 60), (78, 80), (35, 55)),
        # crop as large as the image: one position
        ((10, 12), (10, 12), _xyxy(2, 3, 4, 5), (0, 0), (0, 0)),
        # centre on the image border (x = 64): the crop ends there
        ((8, 8), (48, 64), _xyxy(60, 10, 68, 20), (56, 56), (7, 15)),
    ],
)
def test_gen_crop_transform_with_instance_keeps_the_centre(crop_size, image_size, instance, x_range, y_range):
    box = BoxMode.convert(instance["bbox"], instance["bbox_mode"], BoxMode.XYXY_ABS)
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    np.random.seed(0)
    xs, ys = set(), set()
    for _ in range(400):
        t = utils.gen_crop_transform_with_instance(crop_size, image_size, instance)
        assert isinstance(t, T.CropTransform)
        assert (t.h, t.w) == tuple(crop_size)
        assert t.x0 <= cx <= t.x0 + t.w and t.y0 <= cy <= t.y0 + t.h  # the centre stays inside
        assert 0 <= t.x0 <= image_size[1] - t.w and 0 <= t.y0 <= image_size[0] - t.h
        xs.add(t.x0)
        ys.add(t.y0)
    # every allowed position is drawn (uniformly, like detectron2's np.random.randint)
    assert xs == set(range(x_range[0], x_range[1] + 1))
    assert ys == set(range(y_range[0], y_range[1] + 1))


def test_gen_crop_transform_with_instance_draws_y_then_x():
    np.random.seed(3)
    t = utils.gen_crop_transform_with_instance((30, 40), (100, 80), _xyxy(10, 20, 15, 25))
    rng = np.random.RandomState(3)
    y0 = rng.randint(0, 22 + 1)  # ranges as in the test above
    x0 = rng.randint(0, 12 + 1)
    assert (t.x0, t.y0) == (x0, y0)


def test_gen_crop_transform_with_instance_errors():
    with pytest.raises(ValueError, match=r"crop size \(h, w\) = \(120, 40\).*\(h, w\) = \(100, 80\)"):
        utils.gen_crop_transform_with_instance((120, 40), (100, 80), _xyxy(0, 0, 10, 10))
    with pytest.raises(ValueError, match=r"centre \(x, y\) = \(105.0, 5.0\).*outside the image"):
        utils.gen_crop_transform_with_instance((10, 10), (100, 80), _xyxy(100, 0, 110, 10))
