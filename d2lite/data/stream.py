"""The training data stream, with a position that is saved in checkpoints.

:func:`d2lite.data.build_detection_train_loader` returns a :class:`TrainDataStream`
for map-style datasets: an iterable of batches that, like detectron2's loader, draws
indices from an (infinite) sampler, maps them (in DataLoader workers or in this
process) and batches them, optionally grouping images by aspect ratio. Unlike
detectron2's, the stream it yields depends only on the seed, the sampler, the batch
size and the world size, and its position can be saved and restored, so that a resumed
run sees exactly the batches and augmentations an uninterrupted run would have seen:

* **Order.** The sampler is iterated in this process and the DataLoader returns the
  samples in sampler order, whatever the number of workers (0, 1, 2, ...).
* **Per-sample randomness.** The sample at global stream position ``g`` (rank ``r`` of
  ``W`` processes takes positions ``r, r + W, r + 2W, ...`` of the global stream) is
  mapped with python's ``random``, numpy's global RNG and torch's CPU generator seeded
  with :func:`sample_seed` ``(seed, g)``, and the states of these RNGs are restored
  afterwards. d2lite's augmentations draw from numpy's global RNG, so their draws
  depend only on ``(seed, g)``, never on which worker mapped the sample or when. When
  the mapper returns None (detectron2's "skip this sample"), the replacement index is
  drawn from ``random.Random(sample_seed(seed, g))`` as well.
* **State.** :meth:`TrainDataStream.state_dict` holds, per rank, the position of the
  next sample to draw and the keys ``(g, dataset index)`` of the samples waiting in
  the aspect-ratio buckets (at most ``2 * (batch_size - 1)``), plus the seeds: a few
  integers, never data. After :meth:`~TrainDataStream.load_state_dict` the next
  iteration re-maps the waiting samples (same keys, same seeds: the same dicts), then
  continues the sampler from the saved position.

Contract for mappers and multi-image transforms (Mosaic, MixUp, ... in projects): a
sample's mapping must be a function of the dataset, the stream and the sample's
randomness only. Draw random numbers from numpy's or python's global RNG (seeded per
sample as above) or from a generator seeded with ``current_sample().seed``. The other
images of a multi-image transform must not come from a cache of the samples *this
worker* happened to map (that depends on the number of workers, and the cache is empty
after a resume): take them from the stream instead, which is the same in every worker
and after a resume. :func:`earlier_sample` gives the sample ``k`` positions earlier on
this rank (position, dataset index, seed), :func:`stream_sample` the sample at a position
of the rank's stream, :func:`raw_item` its unmapped dataset item;
map it under ``seeded_rngs(sample.seed)`` (or a generator seeded with ``sample.seed``)
up to the stage the transform mixes at. "The last ``n`` samples of the stream" replaces
mmdetection's per-worker result cache; a per-process memo of those results keyed by
position is fine (a miss recomputes the same result), and so are random picks among
them drawn from the current sample's randomness, or any random pop policy whose
choices depend only on positions and seeds.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import random
import signal
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.utils.data as torchdata

from d2lite.utils import comm
from d2lite.utils.env import seed_all_rng

from .common import MapDataset

__all__ = [
    "TrainDataStream",
    "StreamSample",
    "current_sample",
    "earlier_sample",
    "raw_item",
    "sample_seed",
    "seeded_rngs",
    "stream_position",
    "stream_sample",
]

logger = logging.getLogger(__name__)

_SAMPLE_SEED_SALT = 0x5A3D1E
STATE_VERSION = 1

Key = Tuple[int, int]
"""(global stream position, dataset index) of one sample."""


def sample_seed(seed: int, position: int) -> int:
    """The seed, in [0, 2**32), of the sample at global stream position ``position``
    of a stream seeded with ``seed`` (numpy ``SeedSequence`` of both)."""
    return int(np.random.SeedSequence([_SAMPLE_SEED_SALT, int(seed), int(position)]).generate_state(1)[0])


@contextlib.contextmanager
def seeded_rngs(seed: int, restore: bool = True) -> Iterator[None]:
    """Seed python's ``random``, numpy's global RNG and torch's CPU generator with
    ``seed`` inside the block; with ``restore``, put their previous states back afterwards
    (CUDA generators are not touched). DataLoader workers skip the restore (~0.1 ms):
    nothing else draws from their RNGs."""
    states = (random.getstate(), np.random.get_state(), torch.get_rng_state()) if restore else None
    random.seed(seed)
    np.random.seed(seed)
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        if states is not None:
            random.setstate(states[0])
            np.random.set_state(states[1])
            torch.set_rng_state(states[2])


@dataclass(frozen=True)
class StreamSample:
    """The sample being mapped by a :class:`TrainDataStream`."""

    position: int
    """Global position in the stream (rank ``r`` of ``W`` maps positions ``r, r + W, ...``)."""
    index: int
    """Index of the sample in the dataset."""
    seed: int
    """:func:`sample_seed` of the stream's seed and ``position``."""


_CURRENT_SAMPLE: Optional[StreamSample] = None
_CURRENT_STREAM: Optional[_SeededSamples] = None


def current_sample() -> Optional[StreamSample]:
    """The :class:`StreamSample` being mapped in this process (worker), or None outside
    the mapping of a :class:`TrainDataStream` sample."""
    return _CURRENT_SAMPLE


def stream_position() -> int:
    """The position of :func:`current_sample` in this rank's stream: 0 for its first
    sample, 1 for the next, ... (global position ``local * world_size + rank``)."""
    if _CURRENT_SAMPLE is None or _CURRENT_STREAM is None:
        raise RuntimeError("stream_position() is only available while a TrainDataStream maps a sample.")
    return (_CURRENT_SAMPLE.position - _CURRENT_STREAM.rank) // _CURRENT_STREAM.world_size


def stream_sample(local: int) -> StreamSample:
    """The sample at position ``local`` (0 <= local <= :func:`stream_position`) of this
    rank's stream. The same in every worker and after a resume."""
    current = stream_position()
    if not 0 <= local <= current:
        raise ValueError(f"stream_sample: position {local} is not in [0, {current}] (the current sample).")
    stream = _CURRENT_STREAM
    position = local * stream.world_size + stream.rank
    return StreamSample(position, stream.index_at(local), sample_seed(stream.seed, position))


def earlier_sample(steps: int) -> Optional[StreamSample]:
    """The sample ``steps`` (>= 1) positions before :func:`current_sample` in this rank's
    stream (its global position is ``current.position - steps * world_size``), or None
    before the start of the stream. The same in every worker and after a resume."""
    if _CURRENT_SAMPLE is None or _CURRENT_STREAM is None:
        raise RuntimeError("earlier_sample() is only available while a TrainDataStream maps a sample.")
    if steps < 1:
        raise ValueError(f"earlier_sample: steps must be >= 1, got {steps}.")
    local = stream_position() - steps
    return None if local < 0 else stream_sample(local)


def raw_item(sample: StreamSample) -> Any:
    """The dataset item of ``sample`` before the mapper (the :class:`MapDataset`'s own
    dataset), e.g. the dataset dict of an :func:`earlier_sample` to map for a mix."""
    if _CURRENT_STREAM is None:
        raise RuntimeError("raw_item() is only available while a TrainDataStream maps a sample.")
    dataset = _CURRENT_STREAM.dataset
    return (dataset.dataset if isinstance(dataset, MapDataset) else dataset)[sample.index]


class _SeededSamples(torchdata.Dataset):
    """Map-style dataset indexed by keys ``(position, index)``: ``dataset[index]`` under
    the sample's seeds, returned as ``(key, item)``. Knows the rank's stream (the sampler)
    for :func:`earlier_sample`."""

    _MEMO = 4096  # local positions -> index remembered for earlier_sample()

    def __init__(self, dataset: torchdata.Dataset, seed: int, sampler: Any, rank: int, world_size: int) -> None:
        self.dataset, self.seed = dataset, seed
        self.sampler, self.rank, self.world_size = sampler, rank, world_size
        self._indices: Optional[Iterator[int]] = None
        self._next_local = 0
        self._recent: Dict[int, int] = {}

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_indices=None, _next_local=0, _recent={})  # an iterator does not pickle
        return state

    def __len__(self) -> int:
        return len(self.dataset)

    def index_at(self, local: int) -> int:
        """The sampler's index at local position ``local`` of this rank's stream."""
        if local not in self._recent:
            if self._indices is None or local < self._next_local:
                self._indices, self._next_local = itertools.islice(iter(self.sampler), local, None), local
            while self._next_local <= local:
                self._recent[self._next_local] = int(next(self._indices))
                self._next_local += 1
            while len(self._recent) > self._MEMO:
                del self._recent[next(iter(self._recent))]
        return self._recent[local]

    def __getitem__(self, key: Key) -> Tuple[Key, Any]:
        global _CURRENT_SAMPLE, _CURRENT_STREAM
        position, index = key
        seed = sample_seed(self.seed, position)
        # in this process the RNGs are the model's too: restore them; a worker's are its own
        with seeded_rngs(seed, restore=torchdata.get_worker_info() is None):
            _CURRENT_SAMPLE, _CURRENT_STREAM = StreamSample(position, index, seed), self
            try:
                if isinstance(self.dataset, MapDataset):
                    item = self.dataset.map_index(index, random.Random(seed))
                else:
                    item = self.dataset[index]
            finally:
                _CURRENT_SAMPLE, _CURRENT_STREAM = None, None
        return key, item


class _StreamKeys(torchdata.Sampler):
    """The keys to map: ``replay`` first, then the sampler's indices from local position
    ``start`` on, as ``(global position, index)``."""

    def __init__(self, sampler: Any, start: int, replay: Sequence[Key], rank: int, world_size: int) -> None:
        self.sampler, self.start, self.replay = sampler, start, list(replay)
        self.rank, self.world_size = rank, world_size

    def __iter__(self) -> Iterator[Key]:
        for key in self.replay:
            yield (int(key[0]), int(key[1]))
        indices = itertools.islice(iter(self.sampler), self.start, None)
        for local, index in enumerate(indices, self.start):
            yield (local * self.world_size + self.rank, int(index))


def _identity(x: Any) -> Any:
    return x


class _KeyedCollate:
    """Collate ``[(key, item), ...]`` into ``(keys, collate_fn(items))`` (runs in workers)."""

    def __init__(self, collate_fn: Optional[Callable[[List[Any]], Any]]) -> None:
        self.collate_fn = collate_fn

    def __call__(self, batch: List[Tuple[Key, Any]]) -> Tuple[List[Key], Any]:
        items = [item for _, item in batch]
        return [key for key, _ in batch], (items if self.collate_fn is None else self.collate_fn(items))


# Signals a terminal or a scheduler sends to every process of a job (SLURM signals all
# the processes of a step). A worker that died of one would make the main process fail
# at once (DataLoader's SIGCHLD check) instead of finishing its iteration and saving, so
# workers ignore them: the main process decides when to stop and shuts its workers down,
# and a worker whose parent died exits on its own (DataLoader's watchdog).
_WORKER_IGNORED_SIGNALS = ("SIGINT", "SIGUSR1", "SIGUSR2", "SIGHUP")


def _ignore_sigterm_unless_from_parent() -> None:
    """SIGTERM from the parent (DataLoader / multiprocessing shutting workers down) still
    ends the worker; SIGTERM from anyone else (a scheduler, ``kill`` of the process group) is
    ignored. Where the sender cannot be known (no ``sigwaitinfo``), SIGTERM keeps its default."""
    if not (hasattr(signal, "sigwaitinfo") and hasattr(signal, "pthread_sigmask")):
        return
    parent = os.getppid()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # threads started below inherit it

    def watch() -> None:
        while True:
            info = signal.sigwaitinfo({signal.SIGTERM})
            if info.si_pid == parent:
                os._exit(0)  # asked to stop by the DataLoader (status 0: not a worker failure)

    threading.Thread(target=watch, name="d2lite-sigterm-filter", daemon=True).start()


class _WorkerInit:
    """worker_init_fn of the stream's DataLoader workers: ignore the stop signals unless the
    parent sends SIGTERM, give each worker distinct global RNG seeds (as
    ``worker_init_reset_seed``), then run ``user_fn``."""

    def __init__(self, user_fn: Optional[Callable[[int], None]] = None) -> None:
        self.user_fn = user_fn

    def __call__(self, worker_id: int) -> None:
        for name in _WORKER_IGNORED_SIGNALS:
            sig = getattr(signal, name, None)
            if sig is not None:
                signal.signal(sig, signal.SIG_IGN)
        _ignore_sigterm_unless_from_parent()
        seed_all_rng(torch.initial_seed() % 2**31 + worker_id)
        if self.user_fn is not None:
            self.user_fn(worker_id)


def _bucket(item: Dict[str, Any]) -> int:
    """Aspect-ratio group of a mapped dict, as :class:`AspectRatioGroupedDataset`: 0 for
    landscape (width > height), 1 for portrait and square."""
    return 0 if item["width"] > item["height"] else 1


class TrainDataStream:
    """An iterable of training batches whose position is part of the checkpoint (see the
    module docstring).

    Each ``iter()`` continues from the current position (the position after the last
    batch yielded, or the one loaded by :meth:`load_state_dict`); use one iterator at a
    time. Batches are lists of ``batch_size`` mapped dicts (or ``collate_fn`` of them).
    """

    def __init__(
        self,
        dataset: torchdata.Dataset,
        sampler: torchdata.Sampler,
        batch_size: int,
        *,
        aspect_ratio_grouping: bool = False,
        num_workers: int = 0,
        collate_fn: Optional[Callable[[List[Any]], Any]] = None,
        drop_last: bool = True,
        seed: Optional[int] = None,
        prefetch_factor: Optional[int] = None,
        persistent_workers: bool = False,
        pin_memory: bool = False,
        worker_init_fn: Optional[Callable[[int], None]] = None,
    ) -> None:
        """
        Args:
            dataset: a map-style dataset (a :class:`MapDataset` to map dataset dicts);
                indexed with the sampler's indices.
            sampler: yields this rank's indices of ``dataset``, deterministically (seeded);
                usually infinite (:class:`~d2lite.data.samplers.TrainingSampler`).
            batch_size: images per batch on this rank.
            aspect_ratio_grouping: batch landscape and portrait images separately
                (needs "width"/"height" in the mapped dicts; incomplete batches wait).
            num_workers: DataLoader worker processes (0: map in this process).
            collate_fn: applied to each list of mapped dicts; default keeps the list.
            drop_last: drop an incomplete last batch of a finite sampler.
            seed: base of the per-sample seeds (:func:`sample_seed`). Defaults to the
                sampler's ``seed`` attribute, else one random seed shared by all ranks.
            prefetch_factor, persistent_workers, pin_memory: DataLoader options.
            worker_init_fn: called in each worker after the stream's own initialisation.
        """
        if isinstance(dataset, torchdata.IterableDataset):
            raise TypeError("TrainDataStream needs a map-style dataset; an IterableDataset has no index to resume at.")
        if not (isinstance(batch_size, int) and batch_size > 0):
            raise ValueError(f"TrainDataStream: batch_size must be a positive int, got {batch_size!r}.")
        if aspect_ratio_grouping and not drop_last:
            raise ValueError("Aspect ratio grouping will drop incomplete batches.")
        self.dataset = dataset
        self.sampler = sampler
        self.batch_size = batch_size
        self.aspect_ratio_grouping = aspect_ratio_grouping
        self.num_workers = num_workers
        self.collate_fn = collate_fn
        self.drop_last = drop_last
        if seed is None:
            seed = getattr(sampler, "seed", None)
        self.seed = int(comm.shared_random_seed() if seed is None else seed)
        self.rank = comm.get_rank()
        self.world_size = comm.get_world_size()
        self._loader_kwargs: Dict[str, Any] = dict(
            num_workers=num_workers, pin_memory=pin_memory, worker_init_fn=_WorkerInit(worker_init_fn)
        )
        if num_workers > 0:
            self._loader_kwargs["persistent_workers"] = persistent_workers
            if prefetch_factor is not None:
                self._loader_kwargs["prefetch_factor"] = prefetch_factor
        self._position = 0  # this rank's position of the next index to draw from the sampler
        self._pending: List[Key] = []  # keys waiting in the aspect-ratio buckets, bucket 0 first
        self._active: Optional[weakref.ref] = None

    # ------------------------------------------------------------------ iteration
    def __iter__(self) -> Iterator[Any]:
        self.close()  # a previous iterator stops; the position stays at its last batch
        iterator = self._iter_grouped() if self.aspect_ratio_grouping else self._iter_batched()
        # A weak reference: the iterator (and its workers) goes away with its last user,
        # without waiting for the garbage collector to break a stream <-> iterator cycle.
        self._active = weakref.ref(iterator)
        return iterator

    def close(self) -> None:
        """Stop the current iterator and shut its DataLoader workers down (the position is kept)."""
        iterator = self._active() if self._active is not None else None
        if iterator is not None:
            iterator.close()
        self._active = None

    def _local_position(self, key: Key) -> int:
        return (key[0] - self.rank) // self.world_size

    def _data_loader(self, replay: Sequence[Key], **kwargs: Any) -> torchdata.DataLoader:
        keys = _StreamKeys(self.sampler, self._position, replay, self.rank, self.world_size)
        # A private generator for the workers' base seed: creating the iterator then draws
        # nothing from torch's global RNG, which the model may use.
        generator = torch.Generator().manual_seed(self.seed)
        samples = _SeededSamples(self.dataset, self.seed, self.sampler, self.rank, self.world_size)
        return torchdata.DataLoader(samples, sampler=keys, generator=generator, **kwargs, **self._loader_kwargs)

    def _iter_batched(self) -> Iterator[Any]:
        loader = self._data_loader(
            (), batch_size=self.batch_size, drop_last=self.drop_last, collate_fn=_KeyedCollate(self.collate_fn)
        )
        for keys, batch in loader:
            self._position = self._local_position(keys[-1]) + 1
            yield batch

    def _iter_grouped(self) -> Iterator[Any]:
        replay = list(self._pending)
        buckets: List[List[Tuple[Key, Any]]] = [[], []]
        loader = self._data_loader(replay, batch_size=None, collate_fn=_identity)
        for i, (key, item) in enumerate(loader):
            if i >= len(replay):
                self._position = self._local_position(key) + 1
            bucket = buckets[_bucket(item)]
            bucket.append((key, item))
            batch = None
            if len(bucket) == self.batch_size:
                batch = [x for _, x in bucket]
                del bucket[:]
            self._pending = [k for b in buckets for k, _ in b]
            if batch is not None:
                yield batch if self.collate_fn is None else self.collate_fn(batch)

    # ---------------------------------------------------------------------- state
    @property
    def max_pending(self) -> int:
        """The most samples that can wait in the aspect-ratio buckets."""
        return 2 * (self.batch_size - 1) if self.aspect_ratio_grouping else 0

    @property
    def progress_size(self) -> int:
        """Length of :meth:`progress`'s list (fixed, so ranks can all-gather it as a tensor)."""
        return 2 + 2 * self.max_pending

    def progress(self) -> List[int]:
        """This rank's position as ``progress_size`` ints: ``[position, n, g_1, i_1, ...,
        g_n, i_n, -1, ...]`` with the ``n`` keys waiting in the buckets."""
        flat = [x for key in self._pending for x in key]
        return [self._position, len(self._pending)] + flat + [-1] * (2 * (self.max_pending - len(self._pending)))

    @staticmethod
    def _decode(progress: Sequence[int]) -> Tuple[int, List[List[int]]]:
        n = int(progress[1])
        return int(progress[0]), [[int(progress[2 + 2 * j]), int(progress[3 + 2 * j])] for j in range(n)]

    def state_dict(self, all_progress: Optional[Sequence[Sequence[int]]] = None) -> Dict[str, Any]:
        """The stream's state for a checkpoint: seeds, settings and, for every rank, the
        next sampler position and the keys waiting in the buckets.

        Args:
            all_progress: :meth:`progress` of every rank, in rank order (all-gathered by
                the caller); may be omitted with one process.
        """
        if all_progress is None:
            if self.world_size != 1:
                raise ValueError(
                    "TrainDataStream.state_dict: with several processes, pass the progress() of every rank."
                )
            all_progress = [self.progress()]
        if len(all_progress) != self.world_size:
            raise ValueError(
                f"state_dict: got the progress of {len(all_progress)} ranks, world size {self.world_size}."
            )
        decoded = [self._decode(p) for p in all_progress]
        return {
            "version": STATE_VERSION,
            "seed": self.seed,
            "sampler": type(self.sampler).__name__,
            "sampler_seed": getattr(self.sampler, "seed", None),
            "num_samples": len(self.dataset),
            "batch_size": self.batch_size,
            "aspect_ratio_grouping": self.aspect_ratio_grouping,
            "world_size": self.world_size,
            "positions": [pos for pos, _ in decoded],
            "pending": [pending for _, pending in decoded],
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict` (this rank's entries). The saved seeds win
        over the configured ones, so that the resumed stream is the saved run's.

        Raises:
            ValueError: the state was saved with another number of processes, or by an
                unknown version.
        """
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"Unknown data-stream state version {state.get('version')!r} (expected {STATE_VERSION}).")
        if state["world_size"] != self.world_size:
            raise ValueError(
                f"The checkpoint's data stream was saved by {state['world_size']} processes; this run has "
                f"{self.world_size}. Resume with {state['world_size']} processes (--num-gpus / srun tasks), or start "
                "a new run from the weights with train.init_checkpoint=<checkpoint> (without --resume)."
            )
        if self._active is not None and self._active() is not None:
            raise RuntimeError("TrainDataStream.load_state_dict: called while an iterator is running.")
        changed = [
            f"{name} {state[name]!r} -> {now!r}"
            for name, now in (
                ("batch_size", self.batch_size),
                ("aspect_ratio_grouping", self.aspect_ratio_grouping),
                ("num_samples", len(self.dataset)),
                ("sampler", type(self.sampler).__name__),
            )
            if state[name] != now
        ]
        if changed:
            logger.warning(
                "The training data stream differs from the checkpoint's (%s): it continues from the saved "
                "position, but the batches are not those of an uninterrupted run.",
                ", ".join(changed),
            )
        if state["seed"] != self.seed:
            logger.info(f"Data stream: using the checkpoint's seed {state['seed']} (configured: {self.seed}).")
            self.seed = int(state["seed"])
        sampler_seed = state.get("sampler_seed")
        if sampler_seed is not None and getattr(self.sampler, "seed", None) not in (None, sampler_seed):
            logger.info(
                f"Data stream: using the checkpoint's sampler seed {sampler_seed} (configured: {self.sampler.seed})."
            )
            try:
                self.sampler.seed = sampler_seed
            except AttributeError:
                logger.warning(
                    f"The sampler's seed cannot be set to the checkpoint's ({sampler_seed}): the resumed data "
                    "stream is not the saved run's."
                )
        self._position = int(state["positions"][self.rank])
        pending = [(int(g), int(i)) for g, i in state["pending"][self.rank]]
        if len(pending) > self.max_pending:
            logger.warning(
                f"Dropping {len(pending) - self.max_pending} waiting samples that no longer fit the buckets."
            )
            pending = pending[: self.max_pending]
        self._pending = pending
