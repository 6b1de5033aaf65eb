"""Samplers for training (infinite, seeded, sharded by rank) and inference."""

import itertools
import logging
import math
from collections import defaultdict
from typing import Any, Dict, Iterator, List, Optional

import torch
from torch.utils.data.sampler import Sampler

from d2lite.utils import comm

__all__ = [
    "TrainingSampler",
    "RandomSubsetTrainingSampler",
    "RepeatFactorTrainingSampler",
    "InferenceSampler",
]

logger = logging.getLogger(__name__)


def _check_size(size: int) -> int:
    if not isinstance(size, int) or size <= 0:
        raise ValueError(f"Sampler size must be a positive int, got {size!r}.")
    return size


class _InfiniteShardedSampler(Sampler):
    """Base of the training samplers: one global infinite stream of indices from
    :meth:`_infinite_indices` (seeded identically on all ranks), of which rank ``r`` of
    ``W`` takes elements ``r, r+W, r+2W...``."""

    def __init__(self, shuffle: bool, seed: Optional[int]):
        self._shuffle = shuffle
        if seed is None:
            seed = comm.shared_random_seed()
        self._seed = int(seed)
        self._rank = comm.get_rank()
        self._world_size = comm.get_world_size()

    @property
    def seed(self) -> int:
        """The seed of the global stream (the same on all ranks). Settable before
        iterating, e.g. to continue a checkpointed stream."""
        return self._seed

    @seed.setter
    def seed(self, value: int) -> None:
        self._seed = int(value)

    def __iter__(self) -> Iterator[int]:
        yield from itertools.islice(self._infinite_indices(), self._rank, None, self._world_size)

    def _infinite_indices(self) -> Iterator[int]:
        raise NotImplementedError


class TrainingSampler(_InfiniteShardedSampler):
    """Infinite stream of indices for training.

    One global stream is generated from ``seed`` (a new permutation of ``range(size)``
    per epoch when ``shuffle``); rank ``r`` of ``W`` takes elements ``r, r+W, r+2W...``,
    so the ranks together see every index once per epoch.
    """

    def __init__(self, size: int, shuffle: bool = True, seed: Optional[int] = None):
        """
        Args:
            size: number of elements of the dataset.
            shuffle: shuffle the indices of each epoch.
            seed: initial seed of the shuffle; must be the same on all ranks. If None,
                one random seed shared by all ranks is drawn (``comm.shared_random_seed``).
        """
        self._size = _check_size(size)
        super().__init__(shuffle, seed)

    def _infinite_indices(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self._seed)
        while True:
            if self._shuffle:
                yield from torch.randperm(self._size, generator=g).tolist()
            else:
                yield from torch.arange(self._size).tolist()


class RandomSubsetTrainingSampler(TrainingSampler):
    """Like :class:`TrainingSampler`, but only a random ``subset_ratio`` of the dataset
    (chosen once with ``seed_subset``) is used."""

    def __init__(
        self,
        size: int,
        subset_ratio: float,
        shuffle: bool = True,
        seed_shuffle: Optional[int] = None,
        seed_subset: Optional[int] = None,
    ):
        super().__init__(size=size, shuffle=shuffle, seed=seed_shuffle)
        if not 0.0 < subset_ratio <= 1.0:
            raise ValueError(f"subset_ratio must be in (0, 1], got {subset_ratio}.")
        self._size_subset = int(size * subset_ratio)
        if self._size_subset <= 0:
            raise ValueError(f"subset_ratio={subset_ratio} of size={size} selects no element.")
        if seed_subset is None:
            seed_subset = comm.shared_random_seed()
        self._seed_subset = int(seed_subset)
        g = torch.Generator()
        g.manual_seed(self._seed_subset)
        indexes_randperm = torch.randperm(self._size, generator=g)
        self._indexes_subset = indexes_randperm[: self._size_subset]
        logger.info("Using RandomSubsetTrainingSampler......")
        logger.info(f"Randomly sample {self._size_subset} data from the original {self._size} data")

    def _infinite_indices(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self._seed)
        while True:
            if self._shuffle:
                randperm = torch.randperm(self._size_subset, generator=g)
                yield from self._indexes_subset[randperm].tolist()
            else:
                yield from self._indexes_subset.tolist()


class RepeatFactorTrainingSampler(_InfiniteShardedSampler):
    """Infinite sampler that repeats image ``i`` ``repeat_factors[i]`` times per epoch
    on average (LVIS-style class-balanced repeat sampling): the integer part always,
    plus one more with probability equal to the fractional part (stochastic rounding,
    redrawn each epoch)."""

    def __init__(self, repeat_factors: torch.Tensor, *, shuffle: bool = True, seed: Optional[int] = None):
        """
        Args:
            repeat_factors: float tensor (N,), the repeat factor of each image (>= 0).
            shuffle: shuffle each epoch.
            seed: as in :class:`TrainingSampler`.
        """
        repeat_factors = torch.as_tensor(repeat_factors, dtype=torch.float32)
        if repeat_factors.ndim != 1 or len(repeat_factors) == 0:
            raise ValueError(f"repeat_factors must be a non-empty 1-D tensor, got shape {tuple(repeat_factors.shape)}.")
        super().__init__(shuffle, seed)
        self._int_part = torch.trunc(repeat_factors)
        self._frac_part = repeat_factors - self._int_part

    @staticmethod
    def repeat_factors_from_category_frequency(
        dataset_dicts: List[Dict[str, Any]], repeat_thresh: float, sqrt: bool = True
    ) -> torch.Tensor:
        """Repeat factor of each image from category frequencies.

        For category c with image frequency f(c) (fraction of images containing it),
        r(c) = max(1, sqrt(t / f(c))) (or t / f(c) without ``sqrt``); an image's factor
        is the max r(c) over its categories (1.0 for an image without annotations).

        Args:
            dataset_dicts: dataset dicts with "annotations" ("category_id" each).
            repeat_thresh: frequency threshold t below which categories are repeated.

        Returns:
            float32 tensor (N,).
        """
        category_freq: Dict[int, float] = defaultdict(int)
        for dataset_dict in dataset_dicts:
            cat_ids = {ann["category_id"] for ann in dataset_dict["annotations"]}
            for cat_id in cat_ids:
                category_freq[cat_id] += 1
        num_images = len(dataset_dicts)
        for k, v in category_freq.items():
            category_freq[k] = v / num_images
        category_rep = {
            cat_id: max(1.0, math.sqrt(repeat_thresh / cat_freq) if sqrt else repeat_thresh / cat_freq)
            for cat_id, cat_freq in category_freq.items()
        }
        rep_factors = []
        for dataset_dict in dataset_dicts:
            cat_ids = {ann["category_id"] for ann in dataset_dict["annotations"]}
            rep_factors.append(max({category_rep[cat_id] for cat_id in cat_ids}, default=1.0))
        return torch.tensor(rep_factors, dtype=torch.float32)

    def _get_epoch_indices(self, generator: torch.Generator) -> torch.Tensor:
        rands = torch.rand(len(self._frac_part), generator=generator)
        rep_factors = self._int_part + (rands < self._frac_part).float()
        return torch.repeat_interleave(torch.arange(len(rep_factors)), rep_factors.long())

    def _infinite_indices(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self._seed)
        while True:
            indices = self._get_epoch_indices(g)
            if len(indices) == 0:
                raise ValueError("RepeatFactorTrainingSampler: all repeat factors are 0; nothing to sample.")
            if self._shuffle:
                randperm = torch.randperm(len(indices), generator=g)
                yield from indices[randperm].tolist()
            else:
                yield from indices.tolist()


class InferenceSampler(Sampler):
    """Split ``range(size)`` into contiguous, nearly equal shards, one per rank
    (the first ``size % world_size`` ranks get one extra element); finite."""

    def __init__(self, size: int):
        self._size = _check_size(size)
        self._rank = comm.get_rank()
        self._world_size = comm.get_world_size()
        self._local_indices = self._get_local_indices(size, self._world_size, self._rank)

    @staticmethod
    def _get_local_indices(total_size: int, world_size: int, rank: int) -> range:
        shard_size = total_size // world_size
        left = total_size % world_size
        shard_sizes = [shard_size + int(r < left) for r in range(world_size)]
        begin = sum(shard_sizes[:rank])
        end = min(sum(shard_sizes[: rank + 1]), total_size)
        return range(begin, end)

    def __iter__(self) -> Iterator[int]:
        yield from self._local_indices

    def __len__(self) -> int:
        return len(self._local_indices)
