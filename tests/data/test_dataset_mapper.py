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
