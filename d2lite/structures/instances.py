"""Per-image annotations or predictions: :class:`Instances`."""

import itertools
import warnings
from typing import Any, Dict, List, Tuple, Union

import torch

__all__ = ["Instances"]


class Instances:
    """A list of instances in one image, stored as named fields of equal length.

    Every field (e.g. ``gt_boxes``, ``gt_classes``, ``scores``, ``pred_boxes``)
    must support ``len`` and indexing; tensors, lists and :class:`Boxes` do.

    Example::

        inst = Instances((480, 640), gt_boxes=Boxes(torch.rand(3, 4)), gt_classes=torch.tensor([0, 2, 1]))
        inst.scores = torch.ones(3)          # set a field
        keep = inst[inst.gt_classes > 0]     # Instances with 2 entries
        print(inst.has("scores"), len(keep))
    """

    def __init__(self, image_size: Tuple[int, int], **kwargs: Any):
        """
        Args:
            image_size: (height, width) of the image, in pixels.
            kwargs: fields to add.
        """
        self._image_size = image_size
        self._fields: Dict[str, Any] = {}
        for k, v in kwargs.items():
            self.set(k, v)

    @property
    def image_size(self) -> Tuple[int, int]:
        """(height, width)."""
        return self._image_size

    def __setattr__(self, name: str, val: Any) -> None:
        if name.startswith("_"):
            super().__setattr__(name, val)
        else:
            self.set(name, val)

    def __getattr__(self, name: str) -> Any:
        if name == "_fields" or name not in self._fields:
            raise AttributeError(f"Cannot find field '{name}' in the given Instances!")
        return self._fields[name]

    def set(self, name: str, value: Any) -> None:
        """Set field ``name`` to ``value``; its length must match the existing fields."""
        with warnings.catch_warnings(record=True):
            data_len = len(value)
        if len(self._fields):
            if len(self) != data_len:
                raise ValueError(f"Adding a field '{name}' of length {data_len} to an Instances of length {len(self)}")
        self._fields[name] = value

    def has(self, name: str) -> bool:
        return name in self._fields

    def remove(self, name: str) -> None:
        """Remove field ``name`` (KeyError naming it if absent)."""
        if name not in self._fields:
            raise KeyError(f"Instances has no field '{name}' to remove; fields: {list(self._fields)}")
        del self._fields[name]

    def get(self, name: str) -> Any:
        return self._fields[name]

    def get_fields(self) -> Dict[str, Any]:
        """The dict mapping field names to values (modifying it modifies the Instances)."""
        return self._fields

    def to(self, *args: Any, **kwargs: Any) -> "Instances":
        """Returns: a new Instances with ``.to(*args, **kwargs)`` applied to every field that has it."""
        ret = Instances(self._image_size)
        for k, v in self._fields.items():
            if hasattr(v, "to"):
                v = v.to(*args, **kwargs)
            ret.set(k, v)
        return ret

    def __getitem__(self, item: Union[int, slice, torch.Tensor]) -> "Instances":
        """Index every field with ``item`` (int, slice, bool mask or index tensor).

        An int index returns an Instances of length 1.
        """
        if type(item) is int:
            if item >= len(self) or item < -len(self):
                raise IndexError(f"Instances index {item} out of range for length {len(self)}")
            # A slice keeps every field a sequence of length 1.
            item = slice(item, None, len(self))
        ret = Instances(self._image_size)
        for k, v in self._fields.items():
            ret.set(k, v[item])
        return ret

    def __len__(self) -> int:
        for v in self._fields.values():
            return v.__len__()
        raise NotImplementedError("Empty Instances does not support __len__! Set a field first.")

    def __iter__(self):
        raise NotImplementedError("`Instances` object is not iterable!")

    @staticmethod
    def cat(instance_lists: List["Instances"]) -> "Instances":
        """Concatenate Instances of the same image size and fields.

        Tensors are concatenated with ``torch.cat``, lists are chained, other
        field types need a ``cat`` classmethod (like :class:`Boxes`).
        """
        if not all(isinstance(i, Instances) for i in instance_lists):
            raise TypeError("Instances.cat expects a list of Instances")
        if len(instance_lists) == 0:
            raise ValueError("Instances.cat needs at least one Instances")
        if len(instance_lists) == 1:
            return instance_lists[0]

        image_size = instance_lists[0].image_size
        if not isinstance(image_size, torch.Tensor):  # could be a tensor when tracing
            for i in instance_lists[1:]:
                if i.image_size != image_size:
                    raise ValueError(f"Instances.cat: image sizes differ ({i.image_size} vs {image_size})")
        ret = Instances(image_size)
        for idx, inst in enumerate(instance_lists[1:], 1):
            missing = [k for k in instance_lists[0]._fields if not inst.has(k)]
            if missing:
                raise KeyError(f"Instances.cat: Instances {idx} lacks field(s) {missing} that Instances 0 has")
        for k in instance_lists[0]._fields.keys():
            values = [i.get(k) for i in instance_lists]
            v0 = values[0]
            if isinstance(v0, torch.Tensor):
                values = torch.cat(values, dim=0)
            elif isinstance(v0, list):
                values = list(itertools.chain(*values))
            elif hasattr(type(v0), "cat"):
                values = type(v0).cat(values)
            else:
                raise ValueError(f"Instances.cat: unsupported type {type(v0)} for field '{k}'")
            ret.set(k, values)
        return ret

    def __str__(self) -> str:
        s = self.__class__.__name__ + "("
        s += f"num_instances={len(self) if self._fields else 0}, "
        s += f"image_height={self._image_size[0]}, "
        s += f"image_width={self._image_size[1]}, "
        s += "fields=[{}])".format(", ".join(f"{k}: {v}" for k, v in self._fields.items()))
        return s

    __repr__ = __str__
