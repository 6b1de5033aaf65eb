import itertools
import logging

import pytest
import torch

import d2lite.data.build as build_mod
from d2lite.data import (
    AspectRatioGroupedDataset,
    DatasetFromList,
    DatasetMapper,
    MapDataset,
    ToIterableDataset,
    build_batch_data_loader,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from d2lite.data import transforms as T
from d2lite.data.samplers import InferenceSampler, TrainingSampler


def _mapper(is_train=True):
    return DatasetMapper(is_train, augmentations=[T.ResizeShortestEdge(32, 64)], image_format="BGR")


def test_get_detection_dataset_dicts(coco_fixture, register):
    json_file, image_root = coco_fixture
    a = register("tmp_build_a", json_file=json_file, image_root=image_root)
    b = register("tmp_build_b", json_file=json_file, image_root=image_root)
    dicts = get_detection_dataset_dicts(a)
    assert [d["image_id"] for d in dicts] == [3, 7]  # image 11 has no annotation
    assert all(d["dataset_name"] == a for d in dicts)
    both = get_detection_dataset_dicts([a, b])
    assert [d["dataset_name"] for d in both] == [a, a, b, b]
    assert len(get_detection_dataset_dicts([a], filter_empty=False)) == 3


def test_get_detection_dataset_dicts_bad_input(register):
    empty = register("tmp_build_empty", func=lambda: [])
    with pytest.raises(ValueError, match=f"Dataset '{empty}' is empty"):
        get_detection_dataset_dicts(empty)
    crowd_only = register(
        "tmp_build_crowd",
        func=lambda: [
            {
                "file_name": "x",
                "height": 4,
                "width": 4,
                "image_id": 1,
                "annotations": [{"bbox": [0, 0, 1, 1], "bbox_mode": 1, "category_id": 0, "iscrowd": 1}],
            }
        ],
    )
    with pytest.raises(ValueError, match="No valid data found in " + crowd_only):
        get_detection_dataset_dicts(crowd_only)
    with pytest.raises(KeyError, match="not registered"):
        get_detection_dataset_dicts("tmp_build_no_such")
    with pytest.raises(ValueError):
        get_detection_dataset_dicts([])
    d = [{"file_name": "x", "annotations": [{"category_id": 0, "bbox": [0, 0, 1, 1], "bbox_mode": 1}]}]
    x = register("tmp_build_x", func=lambda: [dict(d[0])], metadata={"thing_classes": ["a"]})
    y = register("tmp_build_y", func=lambda: [dict(d[0])], metadata={"thing_classes": ["b"]})
    with pytest.raises(ValueError, match="thing_classes"):
        get_detection_dataset_dicts([x, y])
    z = register(
        "tmp_build_z",
        func=lambda: [{"file_name": "x", "annotations": [{"category_id": 4, "bbox": [0, 0, 1, 1], "bbox_mode": 1}]}],
        metadata={"thing_classes": ["a"]},
    )
    with pytest.raises(ValueError, match="contiguous"):
        get_detection_dataset_dicts(z)


def test_train_loader_batches(coco_fixture, register):
    json_file, image_root = coco_fixture
    name = register("tmp_build_train", json_file=json_file, image_root=image_root)
    dicts = get_detection_dataset_dicts(name, filter_empty=False)
    loader = build_detection_train_loader(
        dicts,
        mapper=_mapper(),
        sampler=TrainingSampler(len(dicts), seed=0),
        total_batch_size=2,
        aspect_ratio_grouping=False,
    )
    batches = list(itertools.islice(loader, 4))
    for batch in batches:
        assert isinstance(batch, list) and len(batch) == 2
        for d in batch:
            assert d["image"].dtype == torch.uint8 and d["image"].shape[0] == 3
            assert min(d["image"].shape[1:]) == 32
            assert len(d["instances"]) == {3: 1, 7: 2, 11: 0}[d["image_id"]]
            assert d["instances"].gt_classes.dtype == torch.int64
    # the first epoch (3 images) is a permutation of the dataset
    ids = [d["image_id"] for b in batches for d in b]
    assert sorted(ids[:3]) == [3, 7, 11]
    # dataset names are accepted too
    loader = build_detection_train_loader(name, mapper=_mapper(), total_batch_size=1, aspect_ratio_grouping=False)
    assert len(next(iter(loader))) == 1


def test_train_loader_aspect_ratio_grouping(coco_fixture):
    from d2lite.data.datasets import load_coco_json

    dicts = load_coco_json(*coco_fixture)  # 64x48 landscape, 40x60 portrait, 50x50 square
    loader = build_detection_train_loader(
        dicts,
        mapper=_mapper(),
        sampler=TrainingSampler(3, seed=1),
        total_batch_size=2,
        aspect_ratio_grouping=True,
    )
    for batch in itertools.islice(loader, 6):
        assert len(batch) == 2
        orient = {d["width"] > d["height"] for d in batch}
        assert len(orient) == 1
        ids = {d["image_id"] for d in batch}
        assert ids <= {3, 11} or ids == {7}


def test_train_loader_with_workers(coco_fixture):
    from d2lite.data.datasets import load_coco_json

    dicts = load_coco_json(*coco_fixture)
    loader = build_detection_train_loader(
        dicts,
        mapper=_mapper(),
        sampler=TrainingSampler(3, seed=2),
        total_batch_size=2,
        aspect_ratio_grouping=False,
        num_workers=2,
    )
    batches = list(itertools.islice(loader, 3))
    assert [len(b) for b in batches] == [2, 2, 2]
    # the workers map the sampler stream in order: all images appear
    ids = [d["image_id"] for b in batches for d in b]
    assert set(ids) == {3, 7, 11}


def test_batch_size_must_divide_world_size(monkeypatch):
    monkeypatch.setattr(build_mod, "get_world_size", lambda: 2)
    with pytest.raises(ValueError, match=r"Total batch size \(3\).*world size = 2"):
        build_batch_data_loader(DatasetFromList([1, 2, 3]), TrainingSampler(3, seed=0), 3)
    loader = build_batch_data_loader(DatasetFromList([1, 2, 3]), TrainingSampler(3, seed=0, shuffle=False), 4)
    assert next(iter(loader)) == [0 + 1, 1 + 1]  # per-rank batch of 2


def test_test_loader(coco_fixture, register):
    json_file, image_root = coco_fixture
    name = register("tmp_build_test", json_file=json_file, image_root=image_root)
    loader = build_detection_test_loader(name, mapper=_mapper(is_train=False))
    batches = list(loader)
    assert [len(b) for b in batches] == [1, 1, 1]  # the image without annotations is kept
    assert [b[0]["image_id"] for b in batches] == [3, 7, 11]
    assert "instances" not in batches[0][0] and (batches[0][0]["height"], batches[0][0]["width"]) == (60, 40)
    dicts = get_detection_dataset_dicts(name, filter_empty=False)
    loader = build_detection_test_loader(dicts, mapper=None, batch_size=2)
    assert [len(b) for b in loader] == [2, 1]
    with pytest.raises(ValueError, match="empty"):
        build_detection_test_loader([], mapper=None)


def test_map_dataset_retries_on_none():
    calls = []

    def f(x):
        calls.append(x)
        return None if x == 0 else x * 10

    ds = MapDataset(DatasetFromList([0, 1, 2]), f)
    assert len(ds) == 3 and ds[1] == 10
    assert ds[0] in (10, 20)
    with pytest.raises(RuntimeError, match="every other index"):
        MapDataset([0, 0], lambda x: None)[0]


def test_map_dataset_warns_after_three_retries(caplog):
    ds = MapDataset(list(range(6)), lambda x: None if x < 5 else x)
    ds._rng.seed(0)
    with caplog.at_level(logging.WARNING, logger="d2lite.data.common"):
        assert ds[0] == 5
    retries = len(ds) - len(ds._fallback_candidates)  # indices that failed
    warned = [r for r in caplog.records if "retry count" in r.getMessage()]
    assert len(warned) == max(0, retries - 2)


def test_dataset_from_list_and_iterable():
    items = [{"a": i, "b": [i] * i} for i in range(5)]
    ds = DatasetFromList(items)
    assert len(ds) == 5 and ds[3] == items[3] and ds[3] is not items[3]
    ds2 = DatasetFromList(items, serialize=False, copy=False)
    assert ds2[2] is items[2]
    it = ToIterableDataset(ds, InferenceSampler(5))
    assert [d["a"] for d in it] == [0, 1, 2, 3, 4]
    mapped = MapDataset(it, lambda d: None if d["a"] == 2 else d["a"])
    assert list(mapped) == [0, 1, 3, 4]
    with pytest.raises(TypeError):
        ToIterableDataset(it, InferenceSampler(5))


def test_aspect_ratio_grouped_dataset():
    data = [{"width": w, "height": h, "i": i} for i, (w, h) in enumerate([(4, 2), (2, 4), (4, 2), (3, 3), (5, 1)])]
    batches = list(AspectRatioGroupedDataset(data, 2))
    assert [[d["i"] for d in b] for b in batches] == [[0, 2], [1, 3]]


def _yaml_cfg(train_name, **overrides):
    from d2lite.config import get_cfg

    cfg = get_cfg()
    opts = {
        "DATASETS.TRAIN": f"('{train_name}',)",
        "SOLVER.IMS_PER_BATCH": "2",
        "DATALOADER.NUM_WORKERS": "0",
        "DATALOADER.ASPECT_RATIO_GROUPING": "False",
        "INPUT.MIN_SIZE_TRAIN": "(32,)",
        "INPUT.MAX_SIZE_TRAIN": "64",
        "INPUT.MIN_SIZE_TEST": "24",
        "INPUT.MAX_SIZE_TEST": "100",
        "SEED": "3",
        **overrides,
    }
    cfg.merge_from_list([x for kv in opts.items() for x in kv])
    return cfg


def test_loaders_from_a_yaml_config(coco_fixture, register):
    """build_detection_train_loader(cfg) / build_detection_test_loader(cfg, name), as detectron2's."""
    json_file, image_root = coco_fixture
    name = register("tmp_build_cfg", json_file=json_file, image_root=image_root)
    cfg = _yaml_cfg(name)
    batches = list(itertools.islice(build_detection_train_loader(cfg), 3))
    for batch in batches:
        assert len(batch) == 2  # SOLVER.IMS_PER_BATCH
        for d in batch:
            assert min(d["image"].shape[1:]) == 32 and "instances" in d  # INPUT.MIN_SIZE_TRAIN
    ids = [d["image_id"] for b in batches for d in b]
    assert set(ids) == {3, 7}  # FILTER_EMPTY_ANNOTATIONS drops the image without boxes
    # SEED fixes the sampler's order
    again = [d["image_id"] for b in itertools.islice(build_detection_train_loader(cfg), 3) for d in b]
    assert again == ids
    # keywords that from_config does not take override its result
    loader = build_detection_train_loader(cfg, total_batch_size=1)
    assert len(next(iter(loader))) == 1
    custom = build_detection_train_loader(cfg, mapper=_mapper())
    assert min(next(iter(custom))[0]["image"].shape[1:]) == 32

    test = list(build_detection_test_loader(cfg, name))
    assert [b[0]["image_id"] for b in test] == [3, 7, 11]  # every image, one per batch
    assert min(test[1][0]["image"].shape[1:]) == 24 and "instances" not in test[1][0]


def test_training_samplers_from_a_yaml_config(coco_fixture, register):
    from d2lite.data.samplers import RepeatFactorTrainingSampler

    json_file, image_root = coco_fixture
    name = register("tmp_build_cfg_sampler", json_file=json_file, image_root=image_root)
    args = build_mod._train_loader_from_config(_yaml_cfg(name))
    assert isinstance(args["sampler"], TrainingSampler) and isinstance(args["mapper"], DatasetMapper)
    assert (args["total_batch_size"], args["num_workers"], args["aspect_ratio_grouping"]) == (2, 0, False)
    cfg = _yaml_cfg(name, **{"DATALOADER.SAMPLER_TRAIN": "RepeatFactorTrainingSampler"})
    cfg.merge_from_list(["DATALOADER.REPEAT_THRESHOLD", "1.0"])
    assert isinstance(build_mod._train_loader_from_config(cfg)["sampler"], RepeatFactorTrainingSampler)
    assert len(next(iter(build_detection_train_loader(cfg)))) == 2
    cfg.merge_from_list(["DATALOADER.SAMPLER_TRAIN", "WeightedTrainingSampler"])
    with pytest.raises(ValueError, match="DATALOADER.SAMPLER_TRAIN='WeightedTrainingSampler'"):
        build_detection_train_loader(cfg)
