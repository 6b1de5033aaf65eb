"""Augmentation: a (possibly random) policy that produces a deterministic :class:`Transform`.

Same protocol as detectron2: ``aug.get_transform(*inputs) -> Transform``;
``aug(aug_input)`` picks a transform from the inputs named by
``aug.input_args`` (default: the parameter names of ``get_transform``), applies it
to ``aug_input`` in place and returns it.
"""

import inspect
import pprint
from typing import Any, List, Optional, Tuple, Union

import numpy as np
from fvcore.transforms.transform import Transform, TransformList

__all__ = [
    "Augmentation",
    "AugmentationList",
    "AugInput",
    "TransformGen",
    "apply_transform_gens",
    "StandardAugInput",
    "apply_augmentations",
]


def _check_img_dtype(img: np.ndarray) -> None:
    if not isinstance(img, np.ndarray):
        raise TypeError(f"[Augmentation] image must be a numpy array, got {type(img)}.")
    if np.issubdtype(img.dtype, np.integer) and img.dtype != np.uint8:
        raise TypeError(f"[Augmentation] integer images must be uint8, got {img.dtype}.")
    if img.ndim not in (2, 3):
        raise ValueError(f"[Augmentation] image must be HxW or HxWxC, got shape {img.shape}.")


def _get_aug_input_args(aug: "Augmentation", aug_input: Any) -> list:
    """Fetch the attributes of ``aug_input`` that ``aug.get_transform`` needs."""
    if aug.input_args is None:
        prms = list(inspect.signature(aug.get_transform).parameters.items())
        if len(prms) == 1:
            names = ("image",)
        else:
            names = []
            for name, prm in prms:
                if prm.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
                    raise TypeError(
                        f"The default implementation of `{type(aug)}.__call__` does not allow "
                        f"`{type(aug)}.get_transform` to use variable-length arguments (*args, "
                        "**kwargs)! If arguments are unknown, reimplement `__call__` instead."
                    )
                names.append(name)
        aug.input_args = tuple(names)
    args = []
    for f in aug.input_args:
        try:
            args.append(getattr(aug_input, f))
        except AttributeError as e:
            raise AttributeError(
                f"{type(aug)}.get_transform needs input attribute '{f}', "
                f"but it is not an attribute of {type(aug_input)}!"
            ) from e
    return args


class Augmentation:
    """Base class for augmentations.

    Subclasses implement ``get_transform(self, image, ...)`` returning a
    :class:`Transform`. Randomness lives in ``get_transform``; the returned
    transform is deterministic so it can be applied to boxes and segmentation alike.
    """

    input_args: Optional[Tuple[str, ...]] = None

    def _init(self, params: Optional[dict] = None) -> None:
        if params:
            for k, v in params.items():
                if k != "self" and not k.startswith("_"):
                    setattr(self, k, v)

    def get_transform(self, *args) -> Transform:
        raise NotImplementedError(f"{type(self).__name__} must implement get_transform().")

    def __call__(self, aug_input: "AugInput") -> Transform:
        """Pick a transform from ``aug_input``, apply it in place and return it."""
        args = _get_aug_input_args(self, aug_input)
        tfm = self.get_transform(*args)
        if not isinstance(tfm, (Transform, TransformList)):
            raise TypeError(
                f"{type(self)}.get_transform must return an instance of Transform! Got {type(tfm)} instead."
            )
        aug_input.transform(tfm)
        return tfm

    def _rand_range(self, low: float = 1.0, high: Optional[float] = None, size=None):
        """Uniform float(s) in ``[low, high)``; ``[0, low)`` when ``high`` is None."""
        if high is None:
            low, high = 0, low
        if size is None:
            size = []
        return np.random.uniform(low, high, size)

    def __repr__(self) -> str:
        try:
            sig = inspect.signature(self.__init__)
            classname = type(self).__name__
            argstr = []
            for name, param in sig.parameters.items():
                if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                    raise TypeError("variable-length arguments")
                if not hasattr(self, name):
                    raise AttributeError(name)
                attr = getattr(self, name)
                default = param.default
                if default is attr:
                    continue
                attr_str = pprint.pformat(attr)
                if "\n" in attr_str:
                    attr_str = "..."
                argstr.append(f"{name}={attr_str}")
            return "{}({})".format(classname, ", ".join(argstr))
        except (TypeError, AttributeError, ValueError):
            return super().__repr__()

    __str__ = __repr__


class _TransformToAug(Augmentation):
    def __init__(self, tfm: Transform):
        self.tfm = tfm

    def get_transform(self, *args) -> Transform:
        return self.tfm

    def __repr__(self) -> str:
        return repr(self.tfm)

    __str__ = __repr__


def _transform_to_aug(tfm_or_aug: Union[Transform, Augmentation]) -> Augmentation:
    """Wrap a deterministic :class:`Transform` as an :class:`Augmentation`."""
    if isinstance(tfm_or_aug, Augmentation):
        return tfm_or_aug
    if not isinstance(tfm_or_aug, Transform):
        raise TypeError(f"Expected a Transform or an Augmentation, got {type(tfm_or_aug)}.")
    return _TransformToAug(tfm_or_aug)


class AugmentationList(Augmentation):
    """Apply a sequence of augmentations; returns the combined :class:`TransformList`."""

    def __init__(self, augs: List[Union[Transform, Augmentation]]):
        super().__init__()
        self.augs = [_transform_to_aug(x) for x in augs]

    def __call__(self, aug_input: "AugInput") -> TransformList:
        tfms = []
        for x in self.augs:
            tfms.append(x(aug_input))
        return TransformList(tfms)

    def __repr__(self) -> str:
        return "AugmentationList[{}]".format(", ".join(str(x) for x in self.augs))

    __str__ = __repr__


class AugInput:
    """The inputs an augmentation may use, transformed in place by :meth:`transform`.

    Args:
        image: ``(H, W)`` or ``(H, W, C)`` array; uint8 or floating point.
        boxes: ``(N, 4)`` float array of XYXY absolute-pixel boxes, or None.
        sem_seg: ``(H, W)`` integer array, or None.
    """

    def __init__(self, image: np.ndarray, *, boxes: Optional[np.ndarray] = None, sem_seg: Optional[np.ndarray] = None):
        _check_img_dtype(image)
        self.image = image
        self.boxes = boxes
        self.sem_seg = sem_seg

    def transform(self, tfm: Transform) -> None:
        """Apply ``tfm`` to the image, boxes and sem_seg in place."""
        self.image = tfm.apply_image(self.image)
        if self.boxes is not None:
            self.boxes = tfm.apply_box(self.boxes)
        if self.sem_seg is not None:
            self.sem_seg = tfm.apply_segmentation(self.sem_seg)

    def apply_augmentations(self, augmentations: List[Union[Augmentation, Transform]]) -> TransformList:
        return AugmentationList(augmentations)(self)


def apply_augmentations(augmentations: List[Union[Transform, Augmentation]], inputs):
    """Apply ``augmentations`` to an image array (or an :class:`AugInput`).

    Returns ``(transformed_input, TransformList)``; when given an array, returns the new array.
    """
    if isinstance(inputs, np.ndarray):
        image_only = True
        inputs = AugInput(inputs)
    else:
        image_only = False
    tfms = inputs.apply_augmentations(augmentations)
    return (inputs.image if image_only else inputs), tfms


apply_transform_gens = apply_augmentations
TransformGen = Augmentation
StandardAugInput = AugInput
