import itertools
import math

import pytest
import torch

from d2lite.data.samplers import (
    GroupedBatchSampler,
    InferenceSampler,
    RandomSubsetTrainingSampler,
    RepeatFactorTrainingSampler,
    TrainingSampler,
)
from d2lite.utils import comm


def _take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def _as_rank(monkeypatch, rank, world_size):
    monkeypatch.setattr(comm, "get_rank", lambda: rank)
    monkeypatch.setattr(comm, "get_world_size", lambda: world_size)


def test_training_sampler_deterministic_per_seed():
    a = _take(TrainingSampler(10, seed=3), 30)
    assert a == _take(TrainingSampler(10, seed=3), 30)
    assert a != _take(TrainingSampler(10, seed=4), 30)
    # each epoch is a permutation; epochs differ
    epochs = [a[0:10], a[10:20], a[20:30]]
    assert all(sorted(e) == list(range(10)) for e in epochs)
    assert epochs[0] != epochs[1]
    g = torch.Generator()
    g.manual_seed(3)
    assert epochs[0] == torch.randperm(10, generator=g).tolist()


def test_training_sampler_no_shuffle():
    assert _take(TrainingSampler(3, shuffle=False, seed=0), 7) == [0, 1, 2, 0, 1, 2, 0]


def test_training_sampler_rank_slicing(monkeypatch):
    global_stream = _take(TrainingSampler(7, seed=5), 40)
    per_rank = []
    for rank in range(4):
        _as_rank(monkeypatch, rank, 4)
        per_rank.append(_take(TrainingSampler(7, seed=5), 10))
    for rank in range(4):
        assert per_rank[rank] == global_stream[rank::4]


def test_training_sampler_shared_seed(monkeypatch):
    monkeypatch.setattr(comm, "shared_random_seed", lambda: 11)
    assert _take(TrainingSampler(9), 18) == _take(TrainingSampler(9, seed=11), 18)


def test_sampler_size_checked():
    with pytest.raises(ValueError, match="positive"):
        TrainingSampler(0, seed=1)
    with pytest.raises(ValueError, match="positive"):
        InferenceSampler(-1)


def test_random_subset_sampler():
    s = RandomSubsetTrainingSampler(10, 0.5, seed_shuffle=1, seed_subset=2)
    out = _take(s, 20)
    assert len(set(out)) == 5 and set(out[:5]) == set(out[5:10])
    assert out == _take(RandomSubsetTrainingSampler(10, 0.5, seed_shuffle=1, seed_subset=2), 20)


def _dicts(cats_per_image):
    return [{"annotations": [{"category_id": c} for c in cats]} for cats in cats_per_image]


def test_repeat_factors_from_category_frequency():
    # image frequencies: cat0 3/4, cat1 1/4, cat2 1/4 (a repeated category counts once per image)
    dicts = _dicts([[0], [0, 1, 1], [0], [2]])
    f = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(dicts, 0.5)
    r = math.sqrt(0.5 / 0.25)
    torch.testing.assert_close(f, torch.tensor([1.0, r, 1.0, r]))
    f = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(dicts, 0.5, sqrt=False)
    torch.testing.assert_close(f, torch.tensor([1.0, 2.0, 1.0, 2.0]))
    # thresh 0.9: cat0 -> sqrt(0.9/0.75); empty image -> 1.0
    f = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(dicts + _dicts([[]]), 0.9)
    # with 5 images: cat0 3/5, cat1 1/5, cat2 1/5
    torch.testing.assert_close(
        f, torch.tensor([math.sqrt(0.9 / 0.6), math.sqrt(0.9 / 0.2), math.sqrt(0.9 / 0.6), math.sqrt(0.9 / 0.2), 1.0])
    )


def test_repeat_factor_sampler_counts():
    s = RepeatFactorTrainingSampler(torch.tensor([1.0, 2.0, 0.0, 3.0]), shuffle=False, seed=0)
    assert _take(s, 12) == [0, 1, 1, 3, 3, 3] * 2
    s = RepeatFactorTrainingSampler(torch.tensor([1.0, 2.0, 0.0, 3.0]), shuffle=True, seed=0)
    epoch = _take(s, 6)
    assert sorted(epoch) == [0, 1, 1, 3, 3, 3]
    # fractional part: repeated with that probability, on average
    s = RepeatFactorTrainingSampler(torch.tensor([1.0, 1.5]), shuffle=False, seed=0)
    out = _take(s, 5000)
    ratio = out.count(1) / out.count(0)
    assert 1.4 < ratio < 1.6
    with pytest.raises(ValueError):
        RepeatFactorTrainingSampler(torch.zeros(2, 2), seed=0)


def test_inference_sampler_splits(monkeypatch):
    shards = []
    for rank in range(3):
        _as_rank(monkeypatch, rank, 3)
        s = InferenceSampler(10)
        shards.append(list(s))
        assert len(s) == len(shards[-1])
    assert shards == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert [list(InferenceSampler._get_local_indices(2, 3, r)) for r in range(3)] == [[0], [1], []]
    monkeypatch.undo()
    assert list(InferenceSampler(5)) == [0, 1, 2, 3, 4]


def test_grouped_batch_sampler():
    sampler = torch.utils.data.SequentialSampler(range(7))
    batches = list(GroupedBatchSampler(sampler, [0, 1, 0, 1, 1, 0, 0], 2))
    assert batches == [[0, 2], [1, 3], [5, 6]]
    with pytest.raises(ValueError):
        GroupedBatchSampler([0, 1], [0, 1], 2)
