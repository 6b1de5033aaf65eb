"""Build dataset dicts and data loaders (detectron2's API).

The loaders take explicit keyword arguments (what LazyConfig files use); with
``@configurable`` they also accept a detectron2-style config, as detectron2's do:
``build_detection_train_loader(cfg)`` and ``build_detection_test_loader(cfg, dataset_name)``.
"""

import itertools
import logging
import operator
from collections import Counter
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import torch
import torch.utils.data as torchdata

from d2lite.config import configurable
from d2lite.utils.comm import get_world_size
from d2lite.utils.env import seed_all_rng

from .catalog import DatasetCatalog, MetadataCatalog
from .common import AspectRatioGroupedDataset, DatasetFromList, MapDataset
from .dataset_mapper import DatasetMapper
from .detection_utils import check_metadata_consistency
from .samplers import InferenceSampler, RepeatFactorTrainingSampler, TrainingSampler
from .stream import TrainDataStream

__all__ = [
    "build_batch_data_loader",
    "build_detection_train_loader",
    "build_detection_test_loader",
    "get_detection_dataset_dicts",
    "filter_images_with_only_crowd_annotations",
    "print_instances_class_histogram",
    "trivial_batch_collator",
    "worker_init_reset_seed",
]

logger = logging.getLogger(__name__)


def filter_images_with_only_crowd_annotations(
    dataset_dicts: List[Dict[str, Any]], dataset_names: Sequence[str]
) -> List[Dict[str, Any]]:
    """Drop images with no non-crowd annotation (they give no training signal)."""
    num_before = len(dataset_dicts)

    def valid(anns: List[Dict[str, Any]]) -> bool:
        return any(ann.get("iscrowd", 0) == 0 for ann in anns)

    dataset_dicts = [x for x in dataset_dicts if valid(x["annotations"])]
    num_after = len(dataset_dicts)
    logger.info("Removed %d images with no usable annotations. %d images left.", num_before - num_after, num_after)
    return dataset_dicts


def print_instances_class_histogram(dataset_dicts: List[Dict[str, Any]], class_names: List[str]) -> None:
    """Log the number of (non-crowd) instances per class."""
    counts: Counter = Counter()
    for entry in dataset_dicts:
        for ann in entry["annotations"]:
            if ann.get("iscrowd", 0) == 0:
                counts[int(ann["category_id"])] += 1
    unknown = [c for c in counts if not 0 <= c < len(class_names)]
    if unknown:
        raise ValueError(
            f"Found category ids {sorted(unknown)} outside [0, {len(class_names)}) = the range of "
            "thing_classes; category ids must be contiguous (map them via thing_dataset_id_to_contiguous_id)."
        )
    lines = [f"{name:>20s}: {counts.get(i, 0)}" for i, name in enumerate(class_names)]
    total = sum(counts.values())
    logger.info(
        "Distribution of instances among all %d categories (total %d):\n%s",
        len(class_names),
        total,
        "\n".join(lines),
    )


def get_detection_dataset_dicts(
    names: Union[str, Sequence[str]],
    filter_empty: bool = True,
    min_keypoints: int = 0,
    proposal_files: Optional[List[str]] = None,
    check_consistency: bool = True,
) -> List[Dict[str, Any]]:
    """Load and concatenate the dataset dicts of registered datasets.

    Args:
        names: a dataset name or a list of names (see :data:`DatasetCatalog`).
        filter_empty: drop images without non-crowd annotations.
        min_keypoints, proposal_files: detectron2 options for keypoints/proposals;
            d2lite supports only their defaults (0, None).
        check_consistency: check the datasets share ``thing_classes`` and log a
            per-class histogram.

    Returns:
        list[dict]: the concatenated dataset dicts. Each dict gets a "dataset_name"
        key (if absent) so errors while mapping can name the dataset.
    """
    if isinstance(names, str):
        names = [names]
    names = list(names)
    if len(names) == 0:
        raise ValueError("get_detection_dataset_dicts() needs at least one dataset name.")
    if min_keypoints > 0:
        raise ValueError("d2lite supports box detection only: min_keypoints must be 0.")
    if proposal_files:
        raise ValueError("d2lite does not support precomputed proposals: proposal_files must be None.")

    dataset_dicts = [DatasetCatalog.get(dataset_name) for dataset_name in names]
    if isinstance(dataset_dicts[0], torchdata.Dataset):
        if len(dataset_dicts) > 1:
            return torchdata.ConcatDataset(dataset_dicts)
        return dataset_dicts[0]

    for dataset_name, dicts in zip(names, dataset_dicts):
        if len(dicts) == 0:
            raise ValueError(f"Dataset '{dataset_name}' is empty!")
        for d in dicts:
            d.setdefault("dataset_name", dataset_name)

    dataset_dicts = list(itertools.chain.from_iterable(dataset_dicts))
    has_instances = "annotations" in dataset_dicts[0]
    if filter_empty and has_instances:
        dataset_dicts = filter_images_with_only_crowd_annotations(dataset_dicts, names)

    if check_consistency and has_instances:
        metas = [MetadataCatalog.get(n) for n in names]
        if all(hasattr(m, "thing_classes") for m in metas):
            check_metadata_consistency("thing_classes", names)
            print_instances_class_histogram(dataset_dicts, metas[0].thing_classes)

    if len(dataset_dicts) == 0:
        raise ValueError(
            "No valid data found in {} (every image was removed by filter_empty=True because it "
            "has no non-crowd annotation).".format(",".join(names))
        )
    return dataset_dicts


def trivial_batch_collator(batch: List[Any]) -> List[Any]:
    """A batch collator that does nothing: the batch stays a list of dicts."""
    return batch


def worker_init_reset_seed(worker_id: int) -> None:
    """Give each DataLoader worker a different numpy/random/torch seed."""
    initial_seed = torch.initial_seed() % 2**31
    seed_all_rng(initial_seed + worker_id)


def build_batch_data_loader(
    dataset: Union[torchdata.Dataset, torchdata.IterableDataset],
    sampler: Optional[torchdata.Sampler],
    total_batch_size: int,
    *,
    aspect_ratio_grouping: bool = False,
    num_workers: int = 0,
    collate_fn: Optional[Callable[[List[Any]], Any]] = None,
    drop_last: bool = True,
    prefetch_factor: Optional[int] = None,
    persistent_workers: bool = False,
    pin_memory: bool = False,
    seed: Optional[int] = None,
) -> Union[TrainDataStream, torchdata.DataLoader, AspectRatioGroupedDataset, MapDataset]:
    """Batch a (mapped) dataset for training.

    Args:
        dataset: map-style dataset (iterated through ``sampler``) or iterable dataset.
        sampler: index sampler (must be None for an iterable dataset).
        total_batch_size: images per iteration over all ranks; each rank loads
            ``total_batch_size // world_size``. Must be divisible by the world size.
        aspect_ratio_grouping: batch landscape and portrait images separately.
        num_workers: DataLoader worker processes.
        collate_fn: applied to each list of dicts; default keeps the list.
        seed: base of the per-sample seeds of a map-style dataset (see
            :mod:`d2lite.data.stream`); defaults to the sampler's seed.

    Returns:
        An iterable of batches (lists of dicts with the default collate_fn): for a
        map-style dataset a :class:`~d2lite.data.stream.TrainDataStream`, whose batches
        and augmentations depend only on the seeds and whose position is saved in
        checkpoints; for an iterable dataset a DataLoader (not resumable).
    """
    world_size = get_world_size()
    if not (isinstance(total_batch_size, int) and total_batch_size > 0 and total_batch_size % world_size == 0):
        raise ValueError(
            f"Total batch size ({total_batch_size}) must be a positive integer divisible by the "
            f"number of processes (world size = {world_size})."
        )
    batch_size = total_batch_size // world_size
    logger.info("Making batched data loader with batch_size=%d", batch_size)
    if aspect_ratio_grouping and not drop_last:
        raise ValueError("Aspect ratio grouping will drop incomplete batches.")

    if not isinstance(dataset, torchdata.IterableDataset):
        if sampler is None:
            raise ValueError("build_batch_data_loader needs a sampler for a map-style dataset.")
        return TrainDataStream(
            dataset,
            sampler,
            batch_size,
            aspect_ratio_grouping=aspect_ratio_grouping,
            num_workers=num_workers,
            collate_fn=collate_fn,
            drop_last=drop_last,
            seed=seed,
            prefetch_factor=prefetch_factor,
            persistent_workers=persistent_workers,
            pin_memory=pin_memory,
        )

    if sampler is not None:
        raise ValueError("sampler must be None if dataset is an IterableDataset.")
    loader_kwargs: Dict[str, Any] = dict(
        num_workers=num_workers, worker_init_fn=worker_init_reset_seed, pin_memory=pin_memory
    )
    if num_workers > 0:
        loader_kwargs["persistent_workers"] = persistent_workers
        if prefetch_factor is not None:
            loader_kwargs["prefetch_factor"] = prefetch_factor

    if aspect_ratio_grouping:
        data_loader = torchdata.DataLoader(
            dataset, collate_fn=operator.itemgetter(0), **loader_kwargs
        )  # yield individual mapped dicts
        data_loader = AspectRatioGroupedDataset(data_loader, batch_size)
        if collate_fn is None:
            return data_loader
        return MapDataset(data_loader, collate_fn)
    return torchdata.DataLoader(
        dataset,
        batch_size=batch_size,
        drop_last=drop_last,
        collate_fn=trivial_batch_collator if collate_fn is None else collate_fn,
        **loader_kwargs,
    )


def _as_dataset(
    dataset: Any,
    mapper: Optional[Callable[[Dict[str, Any]], Any]],
    sampler: Optional[torchdata.Sampler],
    *,
    filter_empty: bool,
) -> Any:
    """Accept list[dict], a torch Dataset, or dataset name(s) (str / list[str]); apply
    ``mapper``; check ``sampler`` is None for an iterable dataset."""
    if isinstance(dataset, str) or (
        isinstance(dataset, (list, tuple)) and len(dataset) > 0 and all(isinstance(x, str) for x in dataset)
    ):
        dataset = get_detection_dataset_dicts(dataset, filter_empty=filter_empty)
    if isinstance(dataset, (list, tuple)):
        if len(dataset) == 0:
            raise ValueError("The dataset given to the data loader is empty.")
        dataset = DatasetFromList(list(dataset), copy=False)
    if mapper is not None:
        dataset = MapDataset(dataset, mapper)
    if isinstance(dataset, torchdata.IterableDataset) and sampler is not None:
        raise ValueError("sampler must be None if dataset is an IterableDataset.")
    return dataset


def _train_loader_from_config(cfg: Any, mapper=None, *, dataset=None, sampler=None) -> Dict[str, Any]:
    """``build_detection_train_loader`` arguments from ``cfg.DATASETS.TRAIN``, ``cfg.DATALOADER``,
    ``cfg.SOLVER.IMS_PER_BATCH`` and ``cfg.SEED``; ``mapper`` defaults to ``DatasetMapper(cfg, True)``."""
    if dataset is None:
        dataset = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS)
    if mapper is None:
        mapper = DatasetMapper(cfg, True)
    if sampler is None and not isinstance(dataset, torchdata.IterableDataset):
        name = cfg.DATALOADER.SAMPLER_TRAIN
        seed = cfg.SEED if cfg.SEED >= 0 else None  # negative: a shared random seed
        logger.info(f"Using training sampler {name}")
        if name == "TrainingSampler":
            sampler = TrainingSampler(len(dataset), seed=seed)
        elif name == "RepeatFactorTrainingSampler":
            repeat_factors = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(
                dataset, cfg.DATALOADER.REPEAT_THRESHOLD, sqrt=cfg.DATALOADER.REPEAT_SQRT
            )
            sampler = RepeatFactorTrainingSampler(repeat_factors, seed=seed)
        else:
            raise ValueError(
                f"Unknown training sampler DATALOADER.SAMPLER_TRAIN={name!r}; d2lite's YAML path supports "
                "'TrainingSampler' and 'RepeatFactorTrainingSampler'"
            )
    return {
        "dataset": dataset,
        "sampler": sampler,
        "mapper": mapper,
        "total_batch_size": cfg.SOLVER.IMS_PER_BATCH,
        "aspect_ratio_grouping": cfg.DATALOADER.ASPECT_RATIO_GROUPING,
        "num_workers": cfg.DATALOADER.NUM_WORKERS,
    }


@configurable(from_config=_train_loader_from_config)
def build_detection_train_loader(
    dataset: Union[List[Dict[str, Any]], torchdata.Dataset, str, List[str]],
    *,
    mapper: Optional[Callable[[Dict[str, Any]], Any]],
    sampler: Optional[torchdata.Sampler] = None,
    total_batch_size: int,
    aspect_ratio_grouping: bool = True,
    num_workers: int = 0,
    collate_fn: Optional[Callable[[List[Any]], Any]] = None,
    seed: Optional[int] = None,
    **kwargs: Any,
):
    """Build the (infinite) training data loader. Also ``build_detection_train_loader(cfg,
    mapper=None, *, dataset=None, sampler=None)`` with a detectron2-style config.

    Args:
        dataset: list of dataset dicts (e.g. ``get_detection_dataset_dicts(names)``),
            a map-style or iterable torch Dataset, or dataset name(s).
        mapper: applied to each dict (e.g. :class:`DatasetMapper`); None to skip.
        sampler: defaults to ``TrainingSampler(len(dataset), seed=seed)`` (infinite).
        total_batch_size: images per iteration over all ranks.
        aspect_ratio_grouping: batch landscape/portrait images separately.
        num_workers: DataLoader workers.
        collate_fn: default: batches are lists of dicts.
        seed: seed of the default sampler and base of the per-sample seeds (see
            :mod:`d2lite.data.stream`); None: one random seed shared by all ranks (the
            default sampler's), or the given sampler's seed. The LazyConfig trainer passes
            ``train.seed``.

    Returns:
        Infinite iterable of batches (list of ``total_batch_size // world_size`` mapped
        dicts): a :class:`~d2lite.data.stream.TrainDataStream` for a map-style dataset.
    """
    dataset = _as_dataset(dataset, mapper, sampler, filter_empty=True)
    if not isinstance(dataset, torchdata.IterableDataset):
        if sampler is None:
            sampler = TrainingSampler(len(dataset), seed=seed)
        if not isinstance(sampler, torchdata.Sampler):
            raise TypeError(f"Expect a Sampler but got {type(sampler)}")
    return build_batch_data_loader(
        dataset,
        sampler,
        total_batch_size,
        aspect_ratio_grouping=aspect_ratio_grouping,
        num_workers=num_workers,
        collate_fn=collate_fn,
        seed=seed,
        **kwargs,
    )


def _test_loader_from_config(cfg: Any, dataset_name: Union[str, Sequence[str]], mapper=None) -> Dict[str, Any]:
    """``build_detection_test_loader`` arguments for ``dataset_name`` (not ``cfg.DATASETS.TEST``:
    each test set is evaluated on its own), with ``DatasetMapper(cfg, False)`` by default and
    ``cfg.DATALOADER.NUM_WORKERS``."""
    dataset = get_detection_dataset_dicts(dataset_name, filter_empty=False)
    if mapper is None:
        mapper = DatasetMapper(cfg, False)
    return {
        "dataset": dataset,
        "mapper": mapper,
        "num_workers": cfg.DATALOADER.NUM_WORKERS,
        "sampler": InferenceSampler(len(dataset)) if not isinstance(dataset, torchdata.IterableDataset) else None,
    }


@configurable(from_config=_test_loader_from_config)
def build_detection_test_loader(
    dataset: Union[List[Dict[str, Any]], torchdata.Dataset, str, List[str]],
    *,
    mapper: Optional[Callable[[Dict[str, Any]], Any]],
    sampler: Optional[torchdata.Sampler] = None,
    batch_size: int = 1,
    num_workers: int = 0,
    collate_fn: Optional[Callable[[List[Any]], Any]] = None,
) -> torchdata.DataLoader:
    """Build a finite inference data loader; each rank gets its shard via
    :class:`InferenceSampler`. ``batch_size`` is per rank. Batches are lists of dicts.
    Also ``build_detection_test_loader(cfg, dataset_name, mapper=None)`` with a
    detectron2-style config.

    For names, ``filter_empty=False`` is used so every image is evaluated; pass
    ``get_detection_dataset_dicts(names, filter_empty=False)`` explicitly to be clear.
    """
    dataset = _as_dataset(dataset, mapper, sampler, filter_empty=False)
    if sampler is None and not isinstance(dataset, torchdata.IterableDataset):
        sampler = InferenceSampler(len(dataset))
    return torchdata.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=False,
        num_workers=num_workers,
        collate_fn=trivial_batch_collator if collate_fn is None else collate_fn,
    )
