"""Dataset wrappers of d2lite.data.common: pickling (lambdas, spawn-started workers)."""

import pickle
from multiprocessing.reduction import ForkingPickler

import pytest
import torch

from d2lite.data import DatasetFromList, DatasetMapper, MapDataset, ToIterableDataset
from d2lite.data import transforms as T
from d2lite.data.datasets import load_coco_json
from d2lite.data.datasets.shapes import generate_shapes
from d2lite.data.samplers import InferenceSampler
from d2lite.utils.serialize import PicklableWrapper

# onepass: the outcome does not depend on the float path (make test-1thread skips it).
pytestmark = pytest.mark.onepass


@pytest.fixture(scope="module")
def shapes_dicts(tmp_path_factory):
    """Six images of the built-in shapes dataset, generated into a temporary directory."""
    json_file, image_root = generate_shapes(str(tmp_path_factory.mktemp("shapes")), "val", 6, seed=0)
    return load_coco_json(json_file, image_root)


def _summary(d):
    """What the tests compare of a mapped dict: image id, image size and the gt boxes."""
    return d["image_id"], tuple(d["image"].shape), d["instances"].gt_boxes.tensor.tolist()


def _identity(x):
    return x


def _mapped(dicts, offset):
    mapper = DatasetMapper(True, augmentations=[T.Resize((64, 80))], image_format="BGR")
    # a closure over a local variable and a DatasetMapper: plain pickle cannot send it to workers
    return MapDataset(DatasetFromList(dicts), lambda d: {**mapper(d), "image_id": d["image_id"] + offset})


def test_map_dataset_with_a_lambda_pickles(shapes_dicts):
    ds = _mapped(shapes_dicts, offset=100)
    back = pickle.loads(pickle.dumps(ds))
    assert type(back) is MapDataset and len(back) == len(ds) == 6
    assert not isinstance(back._map_func, PicklableWrapper)  # unpickled to the function itself
    assert [_summary(back[i]) for i in range(6)] == [_summary(ds[i]) for i in range(6)]
    assert back[0]["image_id"] == shapes_dicts[0]["image_id"] + 100
    # nested, and the iterable variant
    nested = MapDataset(ds, lambda d: d["image_id"] * 2)
    assert pickle.loads(pickle.dumps(nested))[1] == (shapes_dicts[1]["image_id"] + 100) * 2
    iterable = MapDataset(ToIterableDataset(DatasetFromList([1, 2, 3]), InferenceSampler(3)), lambda x: x * 10)
    assert list(pickle.loads(pickle.dumps(iterable))) == [10, 20, 30]


def test_dataset_from_list_pickles_and_shares_its_buffer(shapes_dicts):
    ds = DatasetFromList(shapes_dicts)
    back = pickle.loads(pickle.dumps(ds))
    assert len(back) == 6 and all(back[i] == shapes_dicts[i] for i in range(6))
    # what DataLoader workers started with spawn receive: the buffer goes through shared memory
    ForkingPickler.dumps(ds)
    assert ds._lst.is_shared() and ds._addr.is_shared()
    plain = DatasetFromList(shapes_dicts, serialize=False)
    assert pickle.loads(pickle.dumps(plain))[2] == shapes_dicts[2]


def test_dataset_from_list_names_an_unpicklable_item():
    with pytest.raises(TypeError, match=r"item 1 cannot be pickled.*serialize=False"):
        DatasetFromList([{"a": 1}, {"f": lambda x: x}])


@pytest.mark.slow
def test_data_loader_workers_started_with_spawn(shapes_dicts):
    """macOS/Windows start DataLoader workers with spawn: the dataset is pickled to them."""
    ds = _mapped(shapes_dicts, offset=100)
    expected = [_summary(ds[i]) for i in range(6)]
    loader = torch.utils.data.DataLoader(
        ds, batch_size=None, num_workers=2, multiprocessing_context="spawn", collate_fn=_identity
    )
    assert [_summary(d) for d in loader] == expected
    iterable = MapDataset(
        ToIterableDataset(DatasetFromList(shapes_dicts), InferenceSampler(6)), lambda d: d["image_id"]
    )
    loader = torch.utils.data.DataLoader(iterable, batch_size=None, num_workers=1, multiprocessing_context="spawn")
    assert list(loader) == [d["image_id"] for d in shapes_dicts]
