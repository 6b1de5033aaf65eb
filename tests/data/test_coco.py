import json
import logging
import os

import numpy as np
import pytest

from d2lite.data import DatasetCatalog, MetadataCatalog
from d2lite.data.datasets import convert_to_coco_dict, convert_to_coco_json, load_coco_json
from d2lite.structures import BoxMode


def test_load_maps_noncontiguous_ids(coco_fixture):
    json_file, image_root = coco_fixture
    name = "tmp_coco_load"
    try:
        dicts = load_coco_json(json_file, image_root, name)
        meta = MetadataCatalog.get(name)
        # sorted by dataset id: 1 apple, 5 bird, 90 zebra
        assert meta.thing_classes == ["apple", "bird", "zebra"]
        assert meta.thing_dataset_id_to_contiguous_id == {1: 0, 5: 1, 90: 2}
    finally:
        MetadataCatalog.remove(name)
    # images sorted by id: 3, 7, 11
    assert [d["image_id"] for d in dicts] == [3, 7, 11]
    d3, d7, d11 = dicts
    assert d7["file_name"] == os.path.join(image_root, "a.png")
    assert d3["file_name"] == os.path.join(image_root, "sub/b.jpg")
    assert (d7["height"], d7["width"]) == (48, 64)
    assert d11["annotations"] == []
    assert [a["category_id"] for a in d7["annotations"]] == [0, 2, 1]
    assert [a["iscrowd"] for a in d7["annotations"]] == [0, 0, 1]
    assert d7["annotations"][1]["bbox"] == [30, 20, 10, 10]
    assert all(a["bbox_mode"] == BoxMode.XYWH_ABS for a in d7["annotations"])
    # the two unusable boxes of image 3 are dropped
    assert len(d3["annotations"]) == 1 and d3["annotations"][0]["bbox"] == [5, 5, 10, 20]
    assert "area" not in d7["annotations"][0]


def test_load_without_name_keeps_ids(coco_fixture):
    json_file, image_root = coco_fixture
    dicts = load_coco_json(json_file, image_root, extra_annotation_keys=["area"])
    d7 = dicts[1]
    assert [a["category_id"] for a in d7["annotations"]] == [1, 90, 5]
    assert d7["annotations"][0]["area"] == 200


def test_invalid_boxes_one_warning(coco_fixture, caplog):
    json_file, image_root = coco_fixture
    with caplog.at_level(logging.WARNING, logger="d2lite.data.datasets.coco"):
        load_coco_json(json_file, image_root)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    msg = warnings[0].getMessage()
    assert "Dropped 2 of 6 annotations" in msg and json_file in msg
    assert "1 non-positive width/height" in msg and "1 outside the image" in msg


def test_malformed_json_names_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [1, 2,')
    with pytest.raises(ValueError, match="Malformed JSON.*bad.json"):
        load_coco_json(str(bad), str(tmp_path))
    nolist = tmp_path / "nolist.json"
    nolist.write_text('{"annotations": []}')
    with pytest.raises(ValueError, match="nolist.json.*'images'"):
        load_coco_json(str(nolist), str(tmp_path))
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_coco_json(str(tmp_path / "missing.json"), str(tmp_path))


def test_bad_bbox_and_unknown_category(tmp_path, write_coco):
    images = [{"id": 1, "file_name": "x.png", "width": 10, "height": 10}]
    cats = [{"id": 1, "name": "a"}]
    json_file, root = write_coco(
        tmp_path / "a", images, [{"id": 1, "image_id": 1, "bbox": [1, 2, 3], "category_id": 1}], cats
    )
    with pytest.raises(ValueError, match="Annotation id=1 .*bbox"):
        load_coco_json(json_file, root)
    json_file, root = write_coco(
        tmp_path / "b", images, [{"id": 1, "image_id": 1, "bbox": [1, 2, 3, 4], "category_id": 7}], cats
    )
    try:
        with pytest.raises(KeyError, match="category_id=7"):
            load_coco_json(json_file, root, "tmp_coco_badcat")
    finally:
        MetadataCatalog.remove("tmp_coco_badcat")


def test_register_and_convert_round_trip(coco_fixture, register, tmp_path):
    json_file, image_root = coco_fixture
    name = register("tmp_coco_reg", json_file=json_file, image_root=image_root)
    meta = MetadataCatalog.get(name)
    assert meta.json_file == json_file and meta.image_root == image_root and meta.evaluator_type == "coco"
    dicts = DatasetCatalog.get(name)
    assert len(dicts) == 3 and meta.thing_classes == ["apple", "bird", "zebra"]

    coco = convert_to_coco_dict(name)
    assert coco["categories"] == [{"id": 1, "name": "apple"}, {"id": 5, "name": "bird"}, {"id": 90, "name": "zebra"}]
    assert [im["id"] for im in coco["images"]] == [3, 7, 11]
    anns = coco["annotations"]
    assert len(anns) == 4
    zebra = [a for a in anns if a["category_id"] == 90][0]
    assert zebra["bbox"] == [30.0, 20.0, 10.0, 10.0] and zebra["area"] == 100.0 and zebra["image_id"] == 7
    assert sum(a["iscrowd"] for a in anns) == 1

    out = str(tmp_path / "out" / "converted.json")
    convert_to_coco_json(name, out)
    with open(out) as f:
        assert json.load(f)["categories"] == coco["categories"]
    # cached: a second call does not rewrite the file
    with open(out, "w") as f:
        f.write("{}")
    convert_to_coco_json(name, out, allow_cached=True)
    assert open(out).read() == "{}"
    convert_to_coco_json(name, out, allow_cached=False)
    reloaded = load_coco_json(out, "")
    assert [len(d["annotations"]) for d in reloaded] == [len(d["annotations"]) for d in dicts]


def test_convert_xyxy_boxes(register):
    dicts = [
        {
            "file_name": "x.png",
            "image_id": 1,
            "height": 20,
            "width": 20,
            "annotations": [{"bbox": np.array([2.0, 3.0, 12.0, 8.0]), "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0}],
        }
    ]
    name = register("tmp_conv_xyxy", func=lambda: dicts, metadata={"thing_classes": ["a"]})
    coco = convert_to_coco_dict(name)
    assert coco["annotations"][0]["bbox"] == [2.0, 3.0, 10.0, 5.0]
    assert coco["annotations"][0]["area"] == 50.0
    assert coco["categories"] == [{"id": 0, "name": "a"}]
