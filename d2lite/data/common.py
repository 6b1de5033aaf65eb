"""Dataset wrappers used by the data loaders."""

import itertools
import logging
import pickle
import random
from typing import Any, Callable, Iterable, Iterator, List

import numpy as np
import torch
import torch.utils.data as data
from torch.utils.data.sampler import Sampler

from d2lite.utils.serialize import PicklableWrapper

__all__ = ["MapDataset", "DatasetFromList", "AspectRatioGroupedDataset", "ToIterableDataset"]

logger = logging.getLogger(__name__)


def _roundrobin(*iterables: Iterable) -> Iterator:
    """roundrobin('ABC', 'D', 'EF') --> A D E B F C"""
    num_active = len(iterables)
    nexts = itertools.cycle(iter(it).__next__ for it in iterables)
    while num_active:
        try:
            for nxt in nexts:
                yield nxt()
        except StopIteration:
            num_active -= 1
            nexts = itertools.cycle(itertools.islice(nexts, num_active))


def _shard_iterator_dataloader_worker(iterable: Iterable, chunk_size: int = 1) -> Iterator:
    """Give each DataLoader worker a disjoint share of ``iterable``, in chunks of ``chunk_size``."""
    worker_info = data.get_worker_info()
    if worker_info is None or worker_info.num_workers == 1:
        yield from iterable
    else:
        # Worker i takes chunks i, i + n, i + 2n, ... so consecutive items stay in one worker.
        yield from _roundrobin(
            *[
                itertools.islice(
                    iterable,
                    worker_info.id * chunk_size + chunk_i,
                    None,
                    worker_info.num_workers * chunk_size,
                )
                for chunk_i in range(chunk_size)
            ]
        )


def _picklable_state(obj: Any) -> dict:
    """``obj.__dict__`` with its ``_map_func`` pickled by cloudpickle (lambdas, closures)."""
    state = obj.__dict__.copy()
    state["_map_func"] = PicklableWrapper(state["_map_func"])  # unpickles to the function itself
    return state


class _MapIterableDataset(data.IterableDataset):
    """Map an iterable dataset, skipping elements for which ``map_func`` returns None."""

    def __init__(self, dataset: data.IterableDataset, map_func: Callable):
        self._dataset = dataset
        self._map_func = map_func

    def __getstate__(self) -> dict:
        return _picklable_state(self)

    def __len__(self) -> int:
        return len(self._dataset)

    def __iter__(self) -> Iterator:
        for x in map(self._map_func, self._dataset):
            if x is not None:
                yield x


class MapDataset(data.Dataset):
    """Map a dataset with ``map_func``; when it returns None for an index, retry with a
    random other index (a warning is logged after 3 failed retries).

    The dataset pickles (e.g. to DataLoader workers started with ``spawn``, the default
    on macOS and Windows) also when ``map_func`` is a lambda or a closure: as in
    detectron2, ``map_func`` is pickled with cloudpickle.
    """

    def __new__(cls, dataset, map_func):
        is_iterable = isinstance(dataset, data.IterableDataset)
        if is_iterable:
            return _MapIterableDataset(dataset, map_func)
        return super().__new__(cls)

    def __getnewargs__(self):
        return self._dataset, None  # __new__ only looks at the dataset; the state has the rest

    def __getstate__(self) -> dict:
        return _picklable_state(self)

    def __init__(self, dataset, map_func: Callable):
        """
        Args:
            dataset: a dataset where map function is applied; list or torch Dataset.
            map_func: a callable which maps an element of the dataset. It may return
                None to ask for another element.
        """
        self._dataset = dataset
        self._map_func = map_func
        self._rng = random.Random(42)
        self._fallback_candidates = set(range(len(dataset)))

    @property
    def dataset(self):
        """The dataset that ``map_func`` is applied to (its items unmapped)."""
        return self._dataset

    def __len__(self) -> int:
        return len(self._dataset)

    def __getitem__(self, idx: int) -> Any:
        retry_count = 0
        cur_idx = int(idx)
        while True:
            data_item = self._map_func(self._dataset[cur_idx])
            if data_item is not None:
                self._fallback_candidates.add(cur_idx)
                return data_item
            retry_count += 1
            self._fallback_candidates.discard(cur_idx)
            if not self._fallback_candidates:
                raise RuntimeError(
                    f"MapDataset: map_func returned None for index {idx} and for every other "
                    "index tried; no element of the dataset can be mapped."
                )
            cur_idx = self._rng.choice(tuple(self._fallback_candidates))
            if retry_count >= 3:
                logger.warning("Failed to apply `_map_func` for idx: %d, retry count: %d", idx, retry_count)

    def map_index(self, idx: int, rng: random.Random) -> Any:
        """Like ``self[idx]``, but the replacement indices (when ``map_func`` returns None)
        are drawn from ``rng`` only, so the result depends on ``(idx, rng)`` and not on
        earlier calls (used by :class:`d2lite.data.stream.TrainDataStream` with a
        per-sample ``rng``).

        Raises:
            RuntimeError: ``map_func`` returned None for every index of the dataset.
        """
        tried = set()
        cur_idx = int(idx)
        while True:
            data_item = self._map_func(self._dataset[cur_idx])
            if data_item is not None:
                return data_item
            tried.add(cur_idx)
            if len(tried) == len(self):
                raise RuntimeError(
                    f"MapDataset: map_func returned None for index {idx} and for every other "
                    "index tried; no element of the dataset can be mapped."
                )
            while cur_idx in tried:
                cur_idx = rng.randrange(len(self))
            if len(tried) >= 3:
                logger.warning("Failed to apply `_map_func` for idx: %d, retry count: %d", idx, len(tried))


class DatasetFromList(data.Dataset):
    """Wrap a list as a torch Dataset. With ``serialize`` the items are pickled into
    one byte buffer held by a torch tensor (as detectron2's default), so DataLoader
    workers share it instead of copying Python objects: forked workers avoid
    copy-on-read of refcounts, and workers started with ``spawn`` receive the buffer
    through shared memory rather than a copy each."""

    def __init__(self, lst: List[Any], copy: bool = True, serialize: bool = True):
        """
        Args:
            lst: a list of items (e.g. dataset dicts).
            copy: if not serializing, return a deep copy of each item on access.
            serialize: store the list in one serialized buffer.
        """
        self._lst = lst
        self._copy = copy
        self._serialize = serialize
        if self._serialize:
            logger.info("Serializing %d elements to byte tensors and concatenating them all ...", len(lst))
            buffers = [np.frombuffer(_dumps_item(x, i), dtype=np.uint8) for i, x in enumerate(lst)]
            self._addr = torch.from_numpy(np.cumsum(np.asarray([len(x) for x in buffers], dtype=np.int64)))
            self._lst = torch.from_numpy(np.concatenate(buffers) if buffers else np.zeros(0, dtype=np.uint8))
            logger.info("Serialized dataset takes %.2f MiB", len(self._lst) / 1024**2)

    def __len__(self) -> int:
        if self._serialize:
            return len(self._addr)
        return len(self._lst)

    def __getitem__(self, idx: int) -> Any:
        if self._serialize:
            start_addr = 0 if idx == 0 else self._addr[idx - 1].item()
            end_addr = self._addr[idx].item()
            return pickle.loads(memoryview(self._lst[start_addr:end_addr].numpy()))
        if self._copy:
            import copy

            return copy.deepcopy(self._lst[idx])
        return self._lst[idx]


def _dumps_item(item: Any, index: int) -> bytes:
    try:
        return pickle.dumps(item, protocol=-1)
    except Exception as e:
        raise TypeError(
            f"DatasetFromList(serialize=True): item {index} cannot be pickled ({type(e).__name__}: {e}). "
            "Dataset items should be plain data (dicts of numbers, strings, arrays); or pass "
            "serialize=False (workers started with spawn still need picklable items)."
        ) from e


class ToIterableDataset(data.IterableDataset):
    """Turn a map-style dataset into an iterable one by walking ``sampler`` (which may
    be infinite); with ``shard_sampler`` each DataLoader worker takes its share."""

    def __init__(self, dataset: data.Dataset, sampler: Sampler, shard_sampler: bool = True, shard_chunk_size: int = 1):
        """
        Args:
            dataset: a map-style dataset.
            sampler: yields indices of ``dataset``; may be infinite.
            shard_sampler: shard the sampler across DataLoader workers. Set False if the
                sampler is already different per worker.
            shard_chunk_size: number of consecutive indices each worker takes per turn.
        """
        if isinstance(dataset, data.IterableDataset):
            raise TypeError(f"ToIterableDataset needs a map-style dataset, got {type(dataset)}.")
        if not isinstance(sampler, Sampler):
            raise TypeError(f"ToIterableDataset needs a torch Sampler, got {type(sampler)}.")
        self.dataset = dataset
        self.sampler = sampler
        self.shard_sampler = shard_sampler
        self.shard_chunk_size = shard_chunk_size

    def __iter__(self) -> Iterator:
        if not self.shard_sampler:
            sampler = self.sampler
        else:
            sampler = _shard_iterator_dataloader_worker(self.sampler, self.shard_chunk_size)
        for idx in sampler:
            yield self.dataset[idx]

    def __len__(self) -> int:
        return len(self.sampler)


class AspectRatioGroupedDataset(data.IterableDataset):
    """Batch an iterable of dicts so that each batch holds only landscape
    (width > height) or only portrait/square images. Yields lists of ``batch_size``
    dicts; requires "width" and "height" in each dict."""

    def __init__(self, dataset: Iterable, batch_size: int):
        self.dataset = dataset
        self.batch_size = batch_size
        self._buckets: List[List[Any]] = [[] for _ in range(2)]

    def __iter__(self) -> Iterator[List[Any]]:
        for d in self.dataset:
            w, h = d["width"], d["height"]
            bucket_id = 0 if w > h else 1
            bucket = self._buckets[bucket_id]
            bucket.append(d)
            if len(bucket) == self.batch_size:
                batch = bucket[:]
                del bucket[:]
                yield batch
        self._buckets = [[] for _ in range(2)]
