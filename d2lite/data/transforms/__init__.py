"""Transforms (deterministic) and augmentations (random policies producing transforms)."""

from fvcore.transforms.transform import (
    BlendTransform,
    CropTransform,
    HFlipTransform,
    NoOpTransform,
    PadTransform,
    Transform,
    TransformList,
    VFlipTransform,
)

from .augmentation import (
    AugInput,
    Augmentation,
    AugmentationList,
    StandardAugInput,
    TransformGen,
    apply_augmentations,
    apply_transform_gens,
)
from .augmentation_impl import (
    FixedSizeCrop,
    RandomApply,
    RandomBrightness,
    RandomContrast,
    RandomCrop,
    RandomExtent,
    RandomFlip,
    RandomLighting,
    RandomSaturation,
    Resize,
    ResizeScale,
    ResizeShortestEdge,
)
from .transform import ColorTransform, ExtentTransform, PILColorTransform, ResizeTransform

__all__ = [k for k in globals().keys() if not k.startswith("_")]
