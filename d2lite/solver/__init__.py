"""Optimizer parameter groups and learning-rate schedules (detectron2 names)."""

from fvcore.common.param_scheduler import (
    CompositeParamScheduler,
    ConstantParamScheduler,
    CosineParamScheduler,
    LinearParamScheduler,
    MultiStepParamScheduler,
    ParamScheduler,
    StepWithFixedGammaParamScheduler,
)

from .build import get_default_optimizer_params, reduce_param_groups
from .lr_scheduler import (
    FlatCosineParamScheduler,
    LRMultiplier,
    WarmupCosineLR,
    WarmupMultiStepLR,
    WarmupParamScheduler,
)

__all__ = [
    "get_default_optimizer_params",
    "reduce_param_groups",
    "LRMultiplier",
    "WarmupParamScheduler",
    "FlatCosineParamScheduler",
    "WarmupMultiStepLR",
    "WarmupCosineLR",
    "ParamScheduler",
    "CompositeParamScheduler",
    "ConstantParamScheduler",
    "CosineParamScheduler",
    "LinearParamScheduler",
    "MultiStepParamScheduler",
    "StepWithFixedGammaParamScheduler",
]
