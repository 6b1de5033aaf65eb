import copy
import os

import numpy as np
import pytest
import torch

from d2lite.data import DatasetMapper
from d2lite.data import transforms as T
from d2lite.data.datasets import load_coco_json
from d2lite.data.detection_utils import SizeMismatchError
from d2lite.structures import Instances


def _dicts(coco_fixture):
    json_file, image_root = coco_fixture
    # without a dataset name the raw ids stay: map them by hand to check values end to end
    dicts = load_coco_json(json_file, image_root)
    id_map = {1: 0, 5: 1, 90: 2}
    for d in dicts:
        for a in d["annotations"]:
            a["category_id"] = id_map[a["category_id"]]
    return {d["image_id"]: d for d in dicts}


def test_train_mapping_resize_flip(coco_fixture):
    d = _dicts(coco_fixture)[7]  # 64x48 image, boxes XYWH [10,5,20,10] (apple), [30,20,10,10] (zebra), 1 crowd
    original = copy.deepcopy(d)
    mapper = DatasetMapper(True, augmentations=[T.Resize((96, 128)), T.RandomFlip(1.0)], image_format="BGR")
    out = mapper(d)
    assert d == original  # input not modified
    assert out["image"].shape == (3, 96, 128) and out["image"].dtype == torch.uint8
    assert (out["height"], out["width"]) == (48, 64)  # original size kept for rescaling outputs
    assert "annotations" not in out and out["image_id"] == 7
    inst = out["instances"]
    assert isinstance(inst, Instances) and inst.image_size == (96, 128)
    # x2 then flipped in a 128-wide image; the crowd box is dropped
    torch.testing.assert_close(
        inst.gt_boxes.tensor, torch.tensor([[68.0, 10.0, 108.0, 30.0], [48.0, 40.0, 68.0, 60.0]])
    )
    assert inst.gt_classes.tolist() == [0, 2] and inst.gt_classes.dtype == torch.int64


def test_image_content_and_format(coco_fixture):
    d = _dicts(coco_fixture)[7]
    out = DatasetMapper(False, augmentations=[T.HFlipTransform(64)], image_format="BGR")(d)
    img = out["image"].numpy()
    assert "instances" not in out and "annotations" not in out
    assert (img[0] == 200).all()  # blue channel first in BGR
    np.testing.assert_array_equal(img[2, 0, :], (63 - np.arange(64)) * 3)  # red = 3*x, flipped
    out = DatasetMapper(False, augmentations=[], image_format="RGB")(d)
    assert (out["image"][2] == 200).all()


def test_boxes_empty_after_augmentation_are_dropped(coco_fixture):
    d = _dicts(coco_fixture)[7]
    mapper = DatasetMapper(True, augmentations=[T.CropTransform(0, 0, 25, 48)], image_format="BGR")
    out = mapper(d)
    assert out["image"].shape == (3, 48, 25)
    torch.testing.assert_close(out["instances"].gt_boxes.tensor, torch.tensor([[10.0, 5.0, 25.0, 15.0]]))
    assert out["instances"].gt_classes.tolist() == [0]


def test_image_without_annotations(coco_fixture):
    d = _dicts(coco_fixture)[11]
    out = DatasetMapper(True, augmentations=[], image_format="BGR")(d)
    assert len(out["instances"]) == 0 and out["instances"].gt_boxes.tensor.shape == (0, 4)


def test_missing_image_names_file_and_dataset(coco_fixture):
    d = _dicts(coco_fixture)[7]
    d["file_name"] = os.path.join(os.path.dirname(d["file_name"]), "gone.png")
    d["dataset_name"] = "my_train_set"
    mapper = DatasetMapper(True, augmentations=[], image_format="BGR")
    with pytest.raises(FileNotFoundError) as e:
        mapper(d)
    assert "gone.png" in str(e.value) and "my_train_set" in str(e.value)


def test_size_mismatch_names_file(coco_fixture):
    d = _dicts(coco_fixture)[7]
    d["height"] = 50
    with pytest.raises(SizeMismatchError) as e:
        DatasetMapper(True, augmentations=[], image_format="BGR")(d)
    assert "a.png" in str(e.value) and "(64, 50)" in str(e.value)


def test_unsupported_options():
    with pytest.raises(ValueError, match="box detection only"):
        DatasetMapper(True, augmentations=[], image_format="BGR", use_instance_mask=True)


def test_from_config(coco_fixture):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"INPUT": {"MIN_SIZE_TEST": 24, "MAX_SIZE_TEST": 30, "FORMAT": "RGB"}})
    mapper = DatasetMapper(cfg, False)
    assert mapper.image_format == "RGB" and not mapper.is_train
    out = mapper(_dicts(coco_fixture)[7])  # 64x48 -> short edge 24 gives 24x32, capped at 30 -> 22.5x30
    assert tuple(out["image"].shape) == (3, 23, 30)
    train = DatasetMapper(OmegaConf.create({"INPUT": {"CROP": {"ENABLED": True}}}), is_train=True)
    augs = train.augmentations.augs
    assert isinstance(augs[0], T.RandomCrop) and isinstance(augs[1], T.ResizeShortestEdge)
    assert augs[1].short_edge_length == (800,) and augs[1].max_size == 1333


# ------------------------------------------------------------------ crop around an instance
def _crop_origin(image):
    """(x0, y0) of a crop of the fixture image, read from its pixels (red = 3x, green = 3y; BGR)."""
    return int(image[2, 0, 0]) // 3, int(image[1, 0, 0]) // 3


def _expected_boxes(annos, x0, y0, w, h):
    """Non-crowd boxes shifted into the crop, clipped to it, empty ones dropped."""
    out = []
    for a in annos:
        if a.get("iscrowd", 0):
            continue
        bx, by, bw, bh = a["bbox"]  # XYWH_ABS in the fixture
        box = np.clip([bx - x0, by - y0, bx + bw - x0, by + bh - y0], 0, [w, h, w, h])
        if box[2] - box[0] > 1e-5 and box[3] - box[1] > 1e-5:
            out.append(box)
    return torch.tensor(np.array(out, dtype=np.float32).reshape(-1, 4))


def test_crop_with_instance_keeps_an_instance_centre_and_clips_boxes(coco_fixture):
    d = _dicts(coco_fixture)[7]  # 64x48; XYXY boxes [10,5,30,15] (centre 20,10), [30,20,40,30] (centre 35,25), crowd
    mapper = DatasetMapper(
        True, augmentations=[T.RandomCrop("absolute", (20, 16))], image_format="BGR", crop_with_instance=True
    )
    np.random.seed(0)
    origins, counts, clipped = set(), set(), False
    for _ in range(150):
        out = mapper(d)
        assert out["image"].shape == (3, 20, 16)
        x0, y0 = _crop_origin(out["image"])
        origins.add((x0, y0))
        # crops keep the centre of box 1 (x0 in [4, 20], y0 in [0, 10]) or box 2 (x0 in [19, 35], y0 in [5, 25])
        assert (4 <= x0 <= 20 and 0 <= y0 <= 10) or (19 <= x0 <= 35 and 5 <= y0 <= 25), (x0, y0)
        boxes = out["instances"].gt_boxes.tensor
        torch.testing.assert_close(boxes, _expected_boxes(d["annotations"], x0, y0, 16, 20))
        assert len(boxes) >= 1  # the chosen instance is always kept
        counts.add(len(boxes))
        clipped |= bool(((boxes[:, 0] == 0) | (boxes[:, 2] == 16) | (boxes[:, 1] == 0) | (boxes[:, 3] == 20)).any())
    assert counts == {1, 2} and clipped  # boxes were both dropped (outside) and clipped (crossing the border)
    # a plain RandomCrop reaches x0 up to 64 - 16 = 48; around the instances it never passes 35
    assert max(x for x, _ in origins) == 35 and min(x for x, _ in origins) == 4


def test_crop_with_instance_then_other_augmentations(coco_fixture):
    d = _dicts(coco_fixture)[7]
    mapper = DatasetMapper(
        True,
        augmentations=[T.RandomCrop("absolute", (20, 16)), T.Resize((40, 32)), T.RandomFlip(1.0)],
        image_format="BGR",
        crop_with_instance=True,
    )
    np.random.seed(1)
    out = mapper(d)
    assert out["image"].shape == (3, 40, 32)
    # undo the flip and the x2 resize to read the crop origin from the pixels
    x0, y0 = int(out["image"][2, 0, -1]) // 3, int(out["image"][1, 0, -1]) // 3
    expected = _expected_boxes(d["annotations"], x0, y0, 16, 20) * 2
    expected = torch.stack([32 - expected[:, 2], expected[:, 1], 32 - expected[:, 0], expected[:, 3]], dim=1)
    torch.testing.assert_close(out["instances"].gt_boxes.tensor, expected)


def test_crop_with_instance_draws_like_detectron2(coco_fixture):
    """Random draws in detectron2's order: crop size, instance (np.random.choice), y0, x0."""
    d = _dicts(coco_fixture)[7]
    mapper = DatasetMapper(
        True, augmentations=[T.RandomCrop("relative", (0.5, 0.5))], image_format="BGR", crop_with_instance=True
    )
    np.random.seed(5)
    out = mapper(d)
    rng = np.random.RandomState(5)
    i = rng.choice(2)  # relative crop size: no draw; (24, 32) of the 48x64 image
    (cx, cy) = [(20.0, 10.0), (35.0, 25.0)][i]
    y0 = rng.randint(max(int(np.ceil(cy - 24)), 0), min(48 - 24, int(cy)) + 1)
    x0 = rng.randint(max(int(np.ceil(cx - 32)), 0), min(64 - 32, int(cx)) + 1)
    assert out["image"].shape == (3, 24, 32)
    assert _crop_origin(out["image"]) == (x0, y0)


def test_crop_with_instance_without_annotations_is_a_plain_random_crop(coco_fixture):
    d = _dicts(coco_fixture)[11]  # 50x50, no annotations
    mapper = DatasetMapper(
        True, augmentations=[T.RandomCrop("absolute", (20, 16))], image_format="BGR", crop_with_instance=True
    )
    np.random.seed(0)
    out = mapper(d)
    assert out["image"].shape == (3, 20, 16) and len(out["instances"]) == 0
    # inference ignores the option: the RandomCrop runs as the augmentation it is
    test_mapper = DatasetMapper(
        False, augmentations=[T.RandomCrop("absolute", (20, 16))], image_format="BGR", crop_with_instance=True
    )
    assert test_mapper(_dicts(coco_fixture)[7])["image"].shape == (3, 20, 16)


def test_crop_with_instance_needs_a_leading_random_crop():
    with pytest.raises(ValueError, match=r"crop_with_instance=True\) needs a T.RandomCrop as augmentations\[0\]"):
        DatasetMapper(True, augmentations=[T.RandomFlip()], image_format="BGR", crop_with_instance=True)
    with pytest.raises(ValueError, match="got nothing"):
        DatasetMapper(True, augmentations=[], image_format="BGR", crop_with_instance=True)


def test_from_config_crop_instance(coco_fixture):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"INPUT": {"CROP": {"ENABLED": True, "CROP_INSTANCE": True}}})
    assert DatasetMapper(cfg, is_train=True).crop_with_instance
    assert not DatasetMapper(cfg, is_train=False).crop_with_instance
    assert not DatasetMapper(OmegaConf.create({"INPUT": {"CROP": {"ENABLED": True}}}), is_train=True).crop_with_instance


def _apply(mapper, image, boxes, seed):
    np.random.seed(seed)
    aug_input = T.AugInput(image.copy(), boxes=boxes.copy())
    mapper.augmentations(aug_input)
    return aug_input.image, aug_input.boxes


def test_yaml_input_settings_equal_the_lazyconfig_file():
    """retinanet_R_50_FPN_1x.yaml's INPUT gives the augmentations of retinanet_R_50_FPN_1x.py: same
    types, and the same images and boxes out for the same random draws."""
    from helpers import DETECTRON2_CONFIGS, REPO_ROOT

    from d2lite.config import LazyConfig, get_cfg, instantiate

    cfg = get_cfg()
    cfg.merge_from_file(str(DETECTRON2_CONFIGS / "COCO-Detection" / "retinanet_R_50_FPN_1x.yaml"))
    lazy = LazyConfig.load(str(REPO_ROOT / "configs" / "COCO-Detection" / "retinanet_R_50_FPN_1x.py"))
    rng = np.random.default_rng(0)
    state = np.random.get_state()
    try:
        for is_train, lazy_mapper in ((True, lazy.dataloader.train.mapper), (False, lazy.dataloader.test.mapper)):
            from_yaml, from_py = DatasetMapper(cfg, is_train), instantiate(lazy_mapper)
            assert (from_yaml.is_train, from_yaml.image_format) == (from_py.is_train, from_py.image_format)
            types = [type(a) for a in from_yaml.augmentations.augs]
            assert types == [type(a) for a in from_py.augmentations.augs]
            assert types == ([T.ResizeShortestEdge, T.RandomFlip] if is_train else [T.ResizeShortestEdge])
            sizes, flips = set(), set()
            for seed in range(16):
                h, w = (int(x) for x in rng.integers(300, 400, size=2))  # long side stays under 1333
                image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
                boxes = np.array([[10.0, 20.0, 50.0, 90.0]])
                img_a, boxes_a = _apply(from_yaml, image, boxes, seed)
                img_b, boxes_b = _apply(from_py, image, boxes, seed)
                assert np.array_equal(img_a, img_b) and np.array_equal(boxes_a, boxes_b)
                sizes.add(min(img_a.shape[:2]))
                flips.add(bool(abs(boxes_a[0, 0] - boxes[0, 0] * img_a.shape[1] / w) > 1))
            if is_train:  # the draws covered several sizes of MIN_SIZE_TRAIN and both flip outcomes
                assert sizes <= {640, 672, 704, 736, 768, 800} and len(sizes) > 2 and flips == {True, False}
            else:
                assert sizes == {800}
    finally:
        np.random.set_state(state)
