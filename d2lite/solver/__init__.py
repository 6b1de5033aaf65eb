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

from .build import (
    build_lr_multiplier,
    build_lr_scheduler,
    build_optimizer,
    get_default_optimizer_params,
    maybe_add_gradient_clipping,
    reduce_param_groups,
)
from .lr_scheduler import (
    FlatCosineParamScheduler,
    LRMultiplier,
    WarmupCosineLR,
    WarmupMultiStepLR,
    WarmupParamScheduler,
)

__all__ = [
    "build_lr_multiplier",
    "build_lr_scheduler",
    "build_optimizer",
    "maybe_add_gradient_clipping",
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
