"""TrainDataStream: the batches depend only on (seed, sampler, batch size, world size),
not on the number of workers, and a stream restored from its state_dict continues exactly."""

import itertools
import os
import random
import signal
import time

import numpy as np
import pytest
import torch

from d2lite.data import DatasetFromList, MapDataset, build_batch_data_loader
from d2lite.data.samplers import RepeatFactorTrainingSampler, TrainingSampler
from d2lite.data.stream import (
    TrainDataStream,
    current_sample,
    earlier_sample,
    raw_item,
    sample_seed,
    seeded_rngs,
)
from d2lite.utils import comm

N = 13  # dataset size: landscape (i % 3 == 0) and portrait images


def _dicts():
    return [{"i": i, "width": 30 if i % 3 == 0 else 20, "height": 25} for i in range(N)]


def _augment(d):
    """An 'augmentation' drawing from the three global RNGs, as d2lite's transforms do."""
    d = dict(d)
    d["np"] = int(np.random.randint(1 << 30))
    d["py"] = random.random()
    d["torch"] = float(torch.rand(()))
    sample = current_sample()
    d["position"], d["seed"] = sample.position, sample.seed
    return d


def _mix(d):
    """A multi-image 'transform' taking its other image from the stream: the sample 1-3
    positions earlier, mapped with that sample's seed."""
    out = _augment(d)
    earlier = earlier_sample(int(np.random.randint(1, 4)))
    if earlier is not None:
        with seeded_rngs(earlier.seed):
            other = _augment(raw_item(earlier))
        out["mixed_with"] = (earlier.position, earlier.index, other["i"], other["np"])
    return out


def _skip_multiples_of_five(d):
    return None if d["i"] % 5 == 0 else _augment(d)


def _stream(num_workers=0, grouping=True, batch=2, mapper=_augment, sampler=None, seed=7):
    dataset = MapDataset(DatasetFromList(_dicts()), mapper)
    return build_batch_data_loader(
        dataset,
        sampler if sampler is not None else TrainingSampler(N, seed=3),
        batch,
        aspect_ratio_grouping=grouping,
        num_workers=num_workers,
        seed=seed,
    )


def _take(stream, n):
    it = iter(stream)
    return [[(d["i"], d["np"], d["py"], d["torch"], d["position"]) for d in next(it)] for _ in range(n)]


def test_map_style_datasets_give_a_stream():
    stream = _stream()
    assert isinstance(stream, TrainDataStream) and stream.seed == 7
    assert _stream(seed=None).seed == 3  # defaults to the sampler's seed


@pytest.mark.parametrize("grouping", [True, False])
def test_batches_do_not_depend_on_the_number_of_workers(grouping):
    reference = _take(_stream(0, grouping), 8)
    assert _take(_stream(2, grouping), 8) == reference
    if grouping:
        for batch in reference:
            assert len({i % 3 == 0 for i, *_ in batch}) == 1  # one orientation per batch
    else:  # without grouping, batches are consecutive positions of the sampler's stream
        assert [p for batch in reference for *_, p in batch] == list(range(16))


def test_per_sample_randomness_depends_on_seed_and_position_only():
    stream = _stream(grouping=False)
    batches = _take(stream, 7)  # 14 samples: more than one epoch, so indices repeat
    samples = [s for b in batches for s in b]
    by_index = {}
    for i, np_draw, *_ in samples:
        by_index.setdefault(i, set()).add(np_draw)
    assert any(len(draws) == 2 for draws in by_index.values())  # same image, other position: other draws
    expected = []
    for i, *_, position in samples:
        with seeded_rngs(sample_seed(7, position)):
            expected.append((i, int(np.random.randint(1 << 30)), random.random(), float(torch.rand(())), position))
    assert samples == expected
    assert _take(_stream(grouping=False, seed=8), 1) != batches[:1]


def test_mapping_leaves_the_global_rngs_of_this_process_alone():
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    torch_state = torch.get_rng_state()
    _take(_stream(0), 3)
    assert np.random.rand() == expected
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert current_sample() is None


@pytest.mark.parametrize("grouping", [True, False])
@pytest.mark.parametrize("stop_after", [1, 4, 7])
def test_restored_stream_continues_exactly(grouping, stop_after):
    reference = _take(_stream(0, grouping), 12)
    first = _stream(0, grouping)
    assert _take(first, stop_after) == reference[:stop_after]
    state = first.state_dict()
    assert state["world_size"] == 1 and len(state["positions"]) == 1
    assert len(state["pending"][0]) <= first.max_pending
    resumed = _stream(0, grouping, seed=99)  # the saved seed wins
    resumed.load_state_dict(state)
    assert _take(resumed, 12 - stop_after) == reference[stop_after:]


def test_restored_stream_with_workers_and_a_replaced_sampler_seed():
    reference = _take(_stream(0), 9)
    first = _stream(2)
    assert _take(first, 5) == reference[:5]
    state = first.state_dict()
    assert any(state["pending"][0]), "the test needs samples waiting in a bucket"
    resumed = _stream(2, sampler=TrainingSampler(N, seed=11))
    resumed.load_state_dict(state)
    assert resumed.sampler.seed == 3
    assert _take(resumed, 4) == reference[5:]


def test_iterating_again_continues_the_stream():
    reference = _take(_stream(), 6)
    stream = _stream()
    assert _take(stream, 2) + _take(stream, 4) == reference


def test_skipped_samples_are_replaced_deterministically():
    reference = _take(_stream(0, mapper=_skip_multiples_of_five), 10)
    assert all(i % 5 != 0 for b in reference for i, *_ in b)
    assert _take(_stream(2, mapper=_skip_multiples_of_five), 10) == reference
    first = _stream(0, mapper=_skip_multiples_of_five)
    _take(first, 6)
    resumed = _stream(0, mapper=_skip_multiples_of_five)
    resumed.load_state_dict(first.state_dict())
    assert _take(resumed, 4) == reference[6:]


def test_map_index_draws_replacements_from_the_given_rng():
    ds = MapDataset(DatasetFromList(list(range(10))), lambda x: None if x < 8 else x)
    results = {ds.map_index(0, random.Random(s)) for s in range(20)}
    assert results == {8, 9}
    assert ds.map_index(3, random.Random(5)) == ds.map_index(3, random.Random(5))
    with pytest.raises(RuntimeError, match="every other index"):
        MapDataset(DatasetFromList([0, 0]), lambda x: None).map_index(0, random.Random(0))


def test_two_ranks_share_one_global_stream(monkeypatch):
    """Rank r of 2 takes global positions r, r + 2, ...; a state holds both ranks'
    positions and each rank restores its own."""
    streams = []
    for rank in (0, 1):
        monkeypatch.setattr(comm, "get_rank", lambda rank=rank: rank)
        monkeypatch.setattr(comm, "get_world_size", lambda: 2)
        streams.append(_stream(0, grouping=True, sampler=RepeatFactorTrainingSampler(torch.full((N,), 1.5), seed=2)))
    ranks = [_take(s, 3) for s in streams]
    positions = [{p for b in r for *_, p in b} for r in ranks]
    assert all(p % 2 == 0 for p in positions[0]) and all(p % 2 == 1 for p in positions[1])
    progress = [s.progress() for s in streams]
    assert all(len(p) == streams[0].progress_size for p in progress)
    state = streams[0].state_dict(progress)
    assert state["world_size"] == 2 and len(state["positions"]) == 2
    with pytest.raises(ValueError, match="pass the progress"):
        streams[0].state_dict()
    for rank in (0, 1):
        monkeypatch.setattr(comm, "get_rank", lambda rank=rank: rank)
        resumed = _stream(0, grouping=True, sampler=RepeatFactorTrainingSampler(torch.full((N,), 1.5), seed=2))
        resumed.load_state_dict(state)
        assert _take(resumed, 2) == _take(streams[rank], 2)
    monkeypatch.setattr(comm, "get_world_size", lambda: 1)
    monkeypatch.setattr(comm, "get_rank", lambda: 0)
    with pytest.raises(ValueError, match="saved by 2 processes; this run has 1. Resume with 2 processes"):
        _stream().load_state_dict(state)


def test_changed_batch_size_is_a_warning(caplog):
    first = _stream()
    _take(first, 2)
    resumed = _stream(batch=3)
    with caplog.at_level("WARNING", logger="d2lite.data.stream"):
        resumed.load_state_dict(first.state_dict())
    assert "batch_size 2 -> 3" in caplog.text


def test_workers_ignore_signals_from_others_and_exit_when_closed():
    before = set(_children(os.getpid()))
    stream = _stream(2)
    it = iter(stream)
    next(it)
    children = sorted(set(_children(os.getpid())) - before)
    assert len(children) == 2
    for pid in children:  # what a scheduler or `kill -TERM -<pgid>` does to a worker
        os.kill(pid, signal.SIGTERM)
        os.kill(pid, signal.SIGUSR1)
    time.sleep(0.5)
    assert len(next(it)) == 2  # the workers are still serving
    stream.close()
    deadline = time.time() + 15
    while set(children) & set(_children(os.getpid())) and time.time() < deadline:
        time.sleep(0.1)
    assert not set(children) & set(_children(os.getpid()))


def _children(pid):
    """Live child processes of ``pid`` (Linux /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(entry))
    return out


def test_sample_seed_is_stable():
    # Changing the derivation changes every run's augmentations: make it a decision.
    assert [sample_seed(0, p) for p in range(3)] == [3369596494, 4105595362, 907487379]
    assert sample_seed(7, 10**6) == 2334833949
    assert len({sample_seed(s, p) for s, p in itertools.product(range(5), range(50))}) == 250
    assert all(0 <= sample_seed(2**32 - 1, p) < 2**32 for p in (0, 10**12))


def test_multi_image_transform_from_the_stream_is_exact():
    def take(stream, n):
        it = iter(stream)
        return [[(d["i"], d["position"], d.get("mixed_with")) for d in next(it)] for _ in range(n)]

    reference = take(_stream(0, grouping=False, mapper=_mix), 8)
    index_at = {p: i for b in reference for i, p, _ in b}
    mixes = [m for b in reference for *_, m in b if m is not None]
    assert len(mixes) == 15  # every sample but the first has an earlier one
    for position, index, other_i, _ in mixes:
        assert index == other_i == index_at[position]  # the stream's sample at that position
    assert take(_stream(2, grouping=False, mapper=_mix), 8) == reference  # whatever worker maps it
    first = _stream(0, grouping=False, mapper=_mix)
    take(first, 3)
    resumed = _stream(2, grouping=False, mapper=_mix)
    resumed.load_state_dict(first.state_dict())
    assert take(resumed, 5) == reference[3:]
    with pytest.raises(RuntimeError, match="only available while a TrainDataStream maps"):
        earlier_sample(1)
