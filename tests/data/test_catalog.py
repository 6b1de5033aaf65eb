import pytest

from d2lite.data import DatasetCatalog, MetadataCatalog
from d2lite.data.catalog import Metadata


def test_register_get_list_remove():
    calls = []

    def load():
        calls.append(1)
        return [{"file_name": "x.jpg"}]

    DatasetCatalog.register("tmp_cat_ds", load)
    try:
        assert calls == []  # lazy
        assert DatasetCatalog.get("tmp_cat_ds") == [{"file_name": "x.jpg"}]
        assert len(calls) == 1
        assert "tmp_cat_ds" in DatasetCatalog.list()
        with pytest.raises(AssertionError, match="already registered"):
            DatasetCatalog.register("tmp_cat_ds", load)
    finally:
        DatasetCatalog.remove("tmp_cat_ds")
    assert "tmp_cat_ds" not in DatasetCatalog.list()


def test_register_non_callable():
    with pytest.raises(AssertionError, match="function"):
        DatasetCatalog.register("tmp_not_callable", [1, 2])
    assert "tmp_not_callable" not in DatasetCatalog


def test_unknown_name_lists_available():
    with pytest.raises(KeyError) as e:
        DatasetCatalog.get("no_such_dataset")
    msg = str(e.value)
    assert "no_such_dataset" in msg and "coco_2017_train" in msg and "shapes_train" in msg


def test_metadata_set_get_conflict():
    m = MetadataCatalog.get("tmp_meta")
    try:
        m.thing_classes = ["a", "b"]
        m.set(evaluator_type="coco", json_file="x.json")
        assert MetadataCatalog.get("tmp_meta") is m
        assert m.thing_classes == ["a", "b"]
        m.thing_classes = ["a", "b"]  # same value is fine
        with pytest.raises(AssertionError, match="thing_classes.*different value"):
            m.thing_classes = ["a", "c"]
        assert m.as_dict() == {
            "name": "tmp_meta",
            "thing_classes": ["a", "b"],
            "evaluator_type": "coco",
            "json_file": "x.json",
        }
        assert m.get("image_root", "dflt") == "dflt"
        with pytest.raises(AttributeError, match="image_root.*tmp_meta"):
            _ = m.image_root
        assert m.class_names == ["a", "b"]  # renamed key
    finally:
        MetadataCatalog.remove("tmp_meta")


def test_metadata_empty_name():
    with pytest.raises(ValueError):
        MetadataCatalog.get("")
    assert isinstance(Metadata(name="x"), Metadata)


def test_builtin_coco_metadata():
    m = MetadataCatalog.get("coco_2017_val")
    assert len(m.thing_classes) == 80
    assert m.thing_classes[0] == "person" and m.thing_classes[-1] == "toothbrush"
    assert m.thing_dataset_id_to_contiguous_id[1] == 0
    assert m.thing_dataset_id_to_contiguous_id[13] == 11  # id 12 does not exist in COCO
    assert m.thing_dataset_id_to_contiguous_id[90] == 79
    assert m.evaluator_type == "coco"
    assert m.json_file.endswith("coco/annotations/instances_val2017.json")


def test_builtin_names_registered():
    for name in ["coco_2017_train", "coco_2017_val", "coco_2017_val_100", "shapes_train", "shapes_val"]:
        assert name in DatasetCatalog.list()


def test_builtin_coco_missing_files_error(tmp_path):
    from d2lite.data.datasets.builtin import _load_builtin_coco

    json_file = str(tmp_path / "coco/annotations/instances_train2017.json")
    with pytest.raises(FileNotFoundError) as e:
        _load_builtin_coco("coco_2017_train", str(tmp_path), json_file, str(tmp_path / "coco/train2017"))
    assert json_file in str(e.value) and "D2LITE_DATASETS" in str(e.value)
    with pytest.raises(FileNotFoundError, match="D2LITE_DATASETS"):
        DatasetCatalog.get("coco_2017_train")


def test_builtin_coco_loads_from_root(tmp_path, write_coco):
    from d2lite.data.datasets.builtin import _load_builtin_coco

    json_file, image_root = write_coco(tmp_path)
    dicts = _load_builtin_coco("tmp_builtin_x", str(tmp_path), json_file, image_root)
    assert len(dicts) == 3
    MetadataCatalog.remove("tmp_builtin_x")
