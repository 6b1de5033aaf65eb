"""Datasets, transforms, mappers and data loaders (detectron2's ``detectron2.data``).

Importing this package registers the built-in datasets (COCO 2017 and synthetic shapes).
"""

from . import transforms  # isort:skip

from .build import (
    build_batch_data_loader,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
    print_instances_class_histogram,
)
from .catalog import DatasetCatalog, Metadata, MetadataCatalog
from .common import AspectRatioGroupedDataset, DatasetFromList, MapDataset, ToIterableDataset
from .dataset_mapper import DatasetMapper
from .stream import TrainDataStream

# ensure the builtin datasets are registered
from . import datasets, samplers  # isort:skip

__all__ = [k for k in globals().keys() if not k.startswith("_")]
