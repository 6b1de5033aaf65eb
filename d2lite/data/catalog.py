"""Global registries of datasets (name -> loader function) and their metadata."""

import copy
import logging
import types
from collections import UserDict
from typing import Any, Callable, Dict, List

__all__ = ["DatasetCatalog", "MetadataCatalog", "Metadata"]

logger = logging.getLogger(__name__)


class _DatasetCatalog(UserDict):
    """Maps a dataset name to a function returning its ``list[dict]`` (detectron2's
    standard dataset dicts: ``file_name``, ``height``, ``width``, ``image_id``,
    ``annotations``). The function runs on every :meth:`get`, so registration is lazy."""

    def register(self, name: str, func: Callable[[], List[Dict[str, Any]]]) -> None:
        """Register ``func`` (no arguments, returns list[dict]) under ``name``."""
        if not callable(func):
            raise AssertionError(
                f"You must register a function with `DatasetCatalog.register`! Got {type(func)} for dataset '{name}'."
            )
        if name in self:
            raise AssertionError(f"Dataset '{name}' is already registered!")
        self[name] = func

    def get(self, name: str) -> List[Dict[str, Any]]:
        """Call the registered function and return its dataset dicts.

        Raises:
            KeyError: ``name`` is not registered; the message lists the registered names.
        """
        try:
            f = self[name]
        except KeyError as e:
            raise KeyError(
                "Dataset '{}' is not registered! Available datasets are: {}".format(name, ", ".join(list(self.keys())))
            ) from e
        return f()

    def list(self) -> List[str]:
        """Names of all registered datasets."""
        return list(self.keys())

    def remove(self, name: str) -> None:
        """Unregister ``name``."""
        self.pop(name)

    def __str__(self) -> str:
        return "DatasetCatalog(registered datasets: {})".format(", ".join(self.keys()))

    __repr__ = __str__


DatasetCatalog = _DatasetCatalog()
DatasetCatalog.__doc__ = _DatasetCatalog.__doc__


class Metadata(types.SimpleNamespace):
    """Metadata of one dataset: attributes that never change once set.

    Common keys: ``thing_classes`` (list of names, index = contiguous class id),
    ``thing_dataset_id_to_contiguous_id`` (dict), ``evaluator_type``, ``json_file``,
    ``image_root``. Setting an existing key to a different value raises.
    """

    name: str = "N/A"

    _RENAMED = {
        "class_names": "thing_classes",
        "dataset_id_to_contiguous_id": "thing_dataset_id_to_contiguous_id",
        "stuff_class_names": "stuff_classes",
    }

    def __getattr__(self, key: str) -> Any:
        if key in self._RENAMED:
            logger.warning("Metadata '%s' was renamed to '%s'!", key, self._RENAMED[key])
            return getattr(self, self._RENAMED[key])
        # Lookups of special/private names (copy, pickle) must fail plainly.
        if len(self.__dict__) > 1 and not key.startswith("__"):
            raise AttributeError(
                f"Attribute '{key}' does not exist in the metadata of dataset '{self.name}'. Available "
                f"keys are {str(self.__dict__.keys())}."
            )
        raise AttributeError(
            f"Attribute '{key}' does not exist in the metadata of dataset '{self.name}': metadata is empty."
        )

    def __setattr__(self, key: str, val: Any) -> None:
        if key in self._RENAMED:
            logger.warning("Metadata '%s' was renamed to '%s'!", key, self._RENAMED[key])
            setattr(self, self._RENAMED[key], val)
            return
        try:
            oldval = getattr(self, key)
        except AttributeError:
            super().__setattr__(key, val)
            return
        if not _values_equal(oldval, val):
            raise AssertionError(
                f"Attribute '{key}' in the metadata of '{self.name}' cannot be set "
                f"to a different value!\n{oldval} != {val}"
            )

    def as_dict(self) -> Dict[str, Any]:
        """A shallow copy of all attributes."""
        return copy.copy(self.__dict__)

    def set(self, **kwargs: Any) -> "Metadata":
        """Set several attributes at once; returns self."""
        for k, v in kwargs.items():
            setattr(self, k, v)
        return self

    def get(self, key: str, default: Any = None) -> Any:
        """The attribute ``key``, or ``default`` if it is missing."""
        try:
            return getattr(self, key)
        except AttributeError:
            return default


def _values_equal(a: Any, b: Any) -> bool:
    try:
        eq = a == b
        return bool(eq)
    except (ValueError, TypeError):  # e.g. numpy arrays with ambiguous truth value
        return a is b


class _MetadataCatalog(UserDict):
    """Maps a dataset name to its :class:`Metadata`; :meth:`get` creates it on first use."""

    def get(self, name: str) -> Metadata:  # type: ignore[override]
        """The (possibly new, empty) :class:`Metadata` of dataset ``name``."""
        if not name:
            raise ValueError("MetadataCatalog.get() needs a non-empty dataset name.")
        r = super().get(name, None)
        if r is None:
            r = self[name] = Metadata(name=name)
        return r

    def list(self) -> List[str]:
        """Names of the datasets that have metadata."""
        return list(self.keys())

    def remove(self, name: str) -> None:
        """Delete the metadata of ``name``."""
        self.pop(name)

    def __str__(self) -> str:
        return "MetadataCatalog(registered metadata: {})".format(", ".join(self.keys()))

    __repr__ = __str__


MetadataCatalog = _MetadataCatalog()
MetadataCatalog.__doc__ = _MetadataCatalog.__doc__
