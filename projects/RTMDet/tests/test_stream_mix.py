"""CachedMosaic / CachedMixUp in d2lite's training stream: a sample's mix depends only on
(seed, position), so the batches are the same with 0 or 2 data-loader workers and after a
restore of the stream's state (exact resume); with FIFO caches they equal mmdetection's
per-object caches of one worker."""

import hashlib

import pytest
from test_mapper import _write_images

from d2lite.data import build_detection_train_loader
from d2lite.data.samplers import TrainingSampler
from d2lite.data.stream import TrainDataStream, sample_seed, seeded_rngs
from rtmdet.mapper import RTMDetDatasetMapper
from rtmdet.mix_transforms import CachedMixUp, CachedMosaic
from rtmdet.transforms import Pad, RandomCrop, RandomFlip, RandomResize, YOLOXHSVRandomAug

SIZE = 64
SEED = 11


def _augmentations(random_pop, crop=True):
    augs = [
        CachedMosaic(img_scale=(SIZE, SIZE), max_cached_images=6, random_pop=random_pop),
        RandomResize(scale=(2 * SIZE, 2 * SIZE), ratio_range=(0.5, 2.0)),
        YOLOXHSVRandomAug(),
        RandomFlip(prob=0.5),
        Pad(size=(SIZE, SIZE), pad_val=114),
        CachedMixUp(img_scale=(SIZE, SIZE), ratio_range=(1.0, 1.0), max_cached_images=4, random_pop=random_pop),
    ]
    if crop:
        augs.insert(2, RandomCrop(crop_size=(SIZE, SIZE)))
    return augs


def _stream(dicts, num_workers, random_pop=True, crop=True):
    mapper = RTMDetDatasetMapper(_augmentations(random_pop, crop))
    return build_detection_train_loader(
        dicts,
        mapper=mapper,
        sampler=TrainingSampler(len(dicts), seed=SEED),
        total_batch_size=2,
        aspect_ratio_grouping=False,
        num_workers=num_workers,
        seed=SEED,
    )


def _fingerprint(batch):
    return [
        (
            d["image_id"],
            hashlib.sha1(d["image"].numpy().tobytes()).hexdigest(),
            d["instances"].gt_boxes.tensor.numpy().round(3).tolist(),
            d["instances"].gt_classes.tolist(),
        )
        for d in batch
    ]


def _take(stream, n):
    it = iter(stream)
    batches = [_fingerprint(next(it)) for _ in range(n)]
    stream.close()
    return batches


@pytest.mark.parametrize("random_pop", [False, True])
def test_mixes_depend_on_position_not_on_workers_or_resume(tmp_path, random_pop):
    dicts = _write_images(tmp_path, n=10)
    reference = _take(_stream(dicts, 0, random_pop), 14)
    # mixes happened: mosaics bring in more than the 3 boxes of one image
    assert sum(len(sample[2]) > 3 for batch in reference for sample in batch) >= 10
    assert _take(_stream(dicts, 2, random_pop), 14) == reference

    # stop after 6 batches, restore the state into a new stream (new process: empty caches)
    first = _stream(dicts, 0, random_pop)
    assert _take(first, 6) == reference[:6]
    state = first.state_dict()
    assert state["positions"] == [12]  # positions only, no images
    resumed = _stream(dicts, 2, random_pop)
    assert isinstance(resumed, TrainDataStream)
    resumed.load_state_dict(state)
    assert _take(resumed, 8) == reference[6:]


def test_stream_mode_leaves_the_per_object_caches_empty(tmp_path):
    stream = _stream(_write_images(tmp_path, n=10), 0)
    _take(stream, 4)
    augs = stream.dataset._map_func.augmentations.augs
    mosaic, mixup = augs[0], augs[-1]
    assert isinstance(mosaic, CachedMosaic) and isinstance(mixup, CachedMixUp)
    assert len(mosaic.cache) == 0 and len(mixup.cache) == 0  # the stream's samples were used


def test_fifo_stream_caches_equal_mmdetection_caches_of_one_worker(tmp_path):
    """mmdetection's per-object cache (the mapper called in stream order, each sample under
    its stream seed) gives the same samples as the stream's FIFO caches (no crop here: a
    rejected sample would add a replacement to mmdetection's mosaic cache)."""
    dicts = _write_images(tmp_path, n=10)
    stream = _stream(dicts, 0, random_pop=False, crop=False)
    expected = _take(stream, 10)

    mapper = RTMDetDatasetMapper(_augmentations(random_pop=False, crop=False))
    indices = iter(TrainingSampler(len(dicts), seed=SEED))
    got = []
    for position in range(20):
        index = next(indices)
        with seeded_rngs(sample_seed(SEED, position)):
            got.append(mapper(dicts[index]))
    assert [_fingerprint(got[i : i + 2]) for i in range(0, 20, 2)] == expected
    assert len(mapper.augmentations.augs[0].cache) == 6  # the per-object cache was used here
