"""Optimizer parameter groups with per-parameter hyperparameters (detectron2 semantics),
and detectron2's config-driven builders ``build_optimizer`` / ``build_lr_scheduler``.

The builders take explicit keyword arguments; with ``@configurable`` they also accept a
detectron2-style config as first argument (``build_optimizer(cfg, model)``,
``build_lr_scheduler(cfg, optimizer)``), which maps ``cfg.SOLVER`` to those arguments.
LazyConfig files write the optimizer and the lr multiplier directly (see
``configs/common/optim.py`` and ``configs/common/coco_schedule.py``).
"""

import copy
import logging
from collections import defaultdict
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple, Type, Union

import torch
from fvcore.common.param_scheduler import (
    CosineParamScheduler,
    MultiStepParamScheduler,
    ParamScheduler,
    StepWithFixedGammaParamScheduler,
)

from d2lite.config import configurable

from .lr_scheduler import LRMultiplier, WarmupParamScheduler

__all__ = [
    "get_default_optimizer_params",
    "reduce_param_groups",
    "build_optimizer",
    "build_lr_scheduler",
    "build_lr_multiplier",
    "maybe_add_gradient_clipping",
]

logger = logging.getLogger(__name__)

_TORCH_NORM_TYPES: Tuple[Type[torch.nn.Module], ...] = (
    torch.nn.BatchNorm1d,
    torch.nn.BatchNorm2d,  # also covers NaiveSyncBatchNorm-style subclasses
    torch.nn.BatchNorm3d,
    torch.nn.SyncBatchNorm,
    torch.nn.GroupNorm,
    torch.nn.InstanceNorm1d,
    torch.nn.InstanceNorm2d,
    torch.nn.InstanceNorm3d,
    torch.nn.LayerNorm,
    torch.nn.LocalResponseNorm,
)


def _norm_module_types() -> Tuple[Type[torch.nn.Module], ...]:
    """Torch norm layers plus d2lite's own norm layers (FrozenBatchNorm2d, LayerNorm, ...)."""
    from d2lite import layers as d2lite_layers  # lazy: d2lite.layers may import solver users

    extra: List[Type[torch.nn.Module]] = []
    for name in ("FrozenBatchNorm2d", "NaiveSyncBatchNorm", "LayerNorm", "CycleBatchNormList"):
        cls = getattr(d2lite_layers, name, None)
        if isinstance(cls, type) and issubclass(cls, torch.nn.Module):
            extra.append(cls)
    return _TORCH_NORM_TYPES + tuple(extra)


def get_default_optimizer_params(
    model: torch.nn.Module,
    base_lr: Optional[float] = None,
    weight_decay: Optional[float] = None,
    weight_decay_norm: Optional[float] = None,
    bias_lr_factor: Optional[float] = 1.0,
    weight_decay_bias: Optional[float] = None,
    lr_factor_func: Optional[Callable[[str], float]] = None,
    overrides: Optional[Dict[str, Dict[str, float]]] = None,
) -> List[Dict[str, Any]]:
    """Parameter groups for a torch optimizer with per-parameter overrides.

    With no options set this is equivalent to ``model.parameters()``. Parameters that
    do not require grad are skipped; a parameter shared by several modules appears once.

    Args:
        model: the model.
        base_lr: lr of every group. Defaults to None (use the optimizer's lr).
        weight_decay: weight decay of every group. Defaults to None (optimizer's).
        weight_decay_norm: weight decay of parameters of normalization layers
            (BatchNorm/SyncBN/GroupNorm/LayerNorm/InstanceNorm/FrozenBatchNorm2d...).
            Defaults to None (same as other parameters).
        bias_lr_factor: lr multiplier for parameters named "bias" (needs ``base_lr``).
            Defaults to 1.0.
        weight_decay_bias: weight decay of parameters named "bias". Defaults to None.
        lr_factor_func: maps a full parameter name (e.g. "backbone.res2.0.conv1.weight")
            to a multiplier of ``base_lr`` (e.g. layer-wise decay). Needs ``base_lr``.
        overrides: hyperparameters keyed by the parameter's name inside its module
            (the last component of the full name), e.g.
            ``{"embedding": {"lr": 0.01, "weight_decay": 0.1}}`` applies to every
            parameter called ``embedding``. An override key that names no parameter of
            the model raises ValueError.

    Returns:
        A list of param groups (dicts with "params" and hyperparameters), merged by
        :func:`reduce_param_groups` so that groups with equal hyperparameters are one.

    Example::

        torch.optim.SGD(get_default_optimizer_params(model, weight_decay_norm=0.0),
                        lr=0.01, weight_decay=1e-4, momentum=0.9)
    """
    overrides = copy.deepcopy(overrides) if overrides is not None else {}
    user_override_keys = set(overrides.keys())
    defaults: Dict[str, Any] = {}
    if base_lr is not None:
        defaults["lr"] = base_lr
    if weight_decay is not None:
        defaults["weight_decay"] = weight_decay
    bias_overrides: Dict[str, float] = {}
    if bias_lr_factor is not None and bias_lr_factor != 1.0:
        if base_lr is None:
            raise ValueError("get_default_optimizer_params: bias_lr_factor requires base_lr.")
        bias_overrides["lr"] = base_lr * bias_lr_factor
    if weight_decay_bias is not None:
        bias_overrides["weight_decay"] = weight_decay_bias
    if bias_overrides:
        if "bias" in overrides:
            raise ValueError(
                "get_default_optimizer_params: conflicting overrides for 'bias': "
                "overrides['bias'] is given together with bias_lr_factor/weight_decay_bias; "
                "use only one of them."
            )
        overrides["bias"] = bias_overrides
    if lr_factor_func is not None and base_lr is None:
        raise ValueError("get_default_optimizer_params: lr_factor_func requires base_lr.")

    norm_types = _norm_module_types()
    params: List[Dict[str, Any]] = []
    memo: Set[torch.nn.Parameter] = set()
    seen_param_names: Set[str] = set()
    for module_name, module in model.named_modules():
        for module_param_name, value in module.named_parameters(recurse=False):
            seen_param_names.add(module_param_name)
            if not value.requires_grad:
                continue
            if value in memo:  # shared by several modules: optimize once
                continue
            memo.add(value)

            hyperparams = copy.copy(defaults)
            if isinstance(module, norm_types) and weight_decay_norm is not None:
                hyperparams["weight_decay"] = weight_decay_norm
            if lr_factor_func is not None:
                full_name = f"{module_name}.{module_param_name}" if module_name else module_param_name
                hyperparams["lr"] *= lr_factor_func(full_name)
            hyperparams.update(overrides.get(module_param_name, {}))
            params.append({"params": [value], **hyperparams})

    unknown = sorted(user_override_keys - seen_param_names)
    if unknown:
        raise ValueError(
            f"get_default_optimizer_params: overrides {unknown} name no parameter of the "
            "model. Override keys are parameter names inside a module (the last part of "
            f"the full name); the model has: {sorted(seen_param_names)}."
        )
    return reduce_param_groups(params)


def _expand_param_groups(params: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One group per parameter; later groups overwrite hyperparameters of earlier ones."""
    ret: Dict[torch.nn.Parameter, Dict[str, Any]] = defaultdict(dict)
    for item in params:
        if "params" not in item:
            raise ValueError(f"reduce_param_groups: a param group has no 'params' key: {item}")
        cur_params = {k: v for k, v in item.items() if k != "params"}
        group_params = item["params"]
        if isinstance(group_params, torch.Tensor):
            group_params = [group_params]
        for param in group_params:
            ret[param].update({"params": [param], **cur_params})
    return list(ret.values())


def reduce_param_groups(params: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Merge param groups that have identical hyperparameters.

    Fewer groups let PyTorch's multi-tensor (foreach) optimizers run faster. The
    order of first appearance of each hyperparameter set, and of parameters within a
    group, is kept.

    Args:
        params: param groups, each a dict with "params" (list of tensors) and
            hyperparameters such as "lr" and "weight_decay".

    Returns:
        Merged param groups.
    """
    params = _expand_param_groups(params)
    groups: Dict[Tuple[Tuple[str, Any], ...], List[torch.nn.Parameter]] = defaultdict(list)
    for item in params:
        key = tuple(sorted((k, v) for k, v in item.items() if k != "params"))
        groups[key].extend(item["params"])
    ret = []
    for key, group_params in groups.items():
        cur: Dict[str, Any] = dict(key)
        cur["params"] = group_params
        ret.append(cur)
    return ret


_CLIP_TYPES = ("value", "norm")


def _gradient_clipper(clip_type: str, clip_value: float, norm_type: float) -> Callable[[torch.Tensor], None]:
    if clip_type not in _CLIP_TYPES:
        raise ValueError(f"Gradient clipping: clip_type must be one of {_CLIP_TYPES}, got {clip_type!r}")
    if clip_type == "norm":
        return lambda p: torch.nn.utils.clip_grad_norm_(p, clip_value, norm_type)
    return lambda p: torch.nn.utils.clip_grad_value_(p, clip_value)


def _clip_from_config(cfg: Any, optimizer: Any) -> Dict[str, Any]:
    clip = cfg.SOLVER.CLIP_GRADIENTS
    return {
        "optimizer": optimizer,
        "enabled": clip.ENABLED,
        "clip_type": clip.CLIP_TYPE,
        "clip_value": clip.CLIP_VALUE,
        "norm_type": clip.NORM_TYPE,
    }


@configurable(from_config=_clip_from_config)
def maybe_add_gradient_clipping(
    optimizer: Union[torch.optim.Optimizer, Type[torch.optim.Optimizer]],
    *,
    enabled: bool,
    clip_type: str = "value",
    clip_value: float = 1.0,
    norm_type: float = 2.0,
) -> Union[torch.optim.Optimizer, Type[torch.optim.Optimizer]]:
    """detectron2's per-parameter gradient clipping (``cfg.SOLVER.CLIP_GRADIENTS``).

    If ``enabled``, return a subclass of the optimizer type (or change the class of the
    given optimizer instance to it) whose ``step`` first clips the gradient of every
    parameter on its own: "value" clamps each element to [-clip_value, clip_value];
    "norm" scales each parameter's gradient to a ``norm_type``-norm <= clip_value.
    (The LazyConfig training tool's ``train.clip_grad`` instead clips the norm of all
    gradients together; for "value" both are the same.)

    Returns:
        the optimizer (type or instance), unchanged when not ``enabled``.
    """
    if not enabled:
        return optimizer
    optimizer_type = type(optimizer) if isinstance(optimizer, torch.optim.Optimizer) else optimizer
    if not (isinstance(optimizer_type, type) and issubclass(optimizer_type, torch.optim.Optimizer)):
        raise TypeError(f"maybe_add_gradient_clipping expects a torch Optimizer or its type, got {optimizer!r}")
    clipper = _gradient_clipper(clip_type, clip_value, norm_type)

    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:  # unused or frozen parameters have no gradient
                    clipper(p)
        return super(clipped_type, self).step(closure)

    clipped_type = type(optimizer_type.__name__ + "WithGradientClip", (optimizer_type,), {"step": step})
    if isinstance(optimizer, torch.optim.Optimizer):
        optimizer.__class__ = clipped_type
        return optimizer
    return clipped_type


def _optimizer_from_config(cfg: Any, model: torch.nn.Module) -> Dict[str, Any]:
    s = cfg.SOLVER
    clip = s.CLIP_GRADIENTS
    return {
        "model": model,
        "base_lr": s.BASE_LR,
        "momentum": s.MOMENTUM,
        "nesterov": s.NESTEROV,
        "weight_decay": s.WEIGHT_DECAY,
        "weight_decay_norm": s.WEIGHT_DECAY_NORM,
        "bias_lr_factor": s.BIAS_LR_FACTOR,
        "weight_decay_bias": s.WEIGHT_DECAY_BIAS,
        "clip_type": clip.CLIP_TYPE if clip.ENABLED else None,
        "clip_value": clip.CLIP_VALUE,
        "norm_type": clip.NORM_TYPE,
    }


@configurable(from_config=_optimizer_from_config)
def build_optimizer(
    model: torch.nn.Module,
    *,
    base_lr: float,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 1e-4,
    weight_decay_norm: Optional[float] = 0.0,
    bias_lr_factor: float = 1.0,
    weight_decay_bias: Optional[float] = None,
    clip_type: Optional[str] = None,
    clip_value: float = 1.0,
    norm_type: float = 2.0,
) -> torch.optim.SGD:
    """SGD over :func:`get_default_optimizer_params` groups, as detectron2's
    ``build_optimizer(cfg, model)`` (which this also accepts: ``cfg.SOLVER.{BASE_LR,
    MOMENTUM, NESTEROV, WEIGHT_DECAY, WEIGHT_DECAY_NORM, BIAS_LR_FACTOR,
    WEIGHT_DECAY_BIAS, CLIP_GRADIENTS}``).

    Args:
        model: the model whose trainable parameters are optimized.
        base_lr: learning rate of every group (times ``bias_lr_factor`` for biases).
        momentum, nesterov, weight_decay: SGD's. Defaults 0.9, False, 1e-4.
        weight_decay_norm: weight decay of normalization layers' parameters. Defaults to 0.0.
        bias_lr_factor, weight_decay_bias: lr factor / weight decay of biases. Defaults 1.0, None (same).
        clip_type: None (no clipping), or "value"/"norm" for detectron2's per-parameter
            clipping, see :func:`maybe_add_gradient_clipping`.
        clip_value, norm_type: clipping threshold and norm. Defaults 1.0, 2.0.
    """
    params = get_default_optimizer_params(
        model,
        base_lr=base_lr,
        weight_decay_norm=weight_decay_norm,
        bias_lr_factor=bias_lr_factor,
        weight_decay_bias=weight_decay_bias,
    )
    optimizer_type: Type[torch.optim.Optimizer] = torch.optim.SGD
    if clip_type is not None:
        optimizer_type = maybe_add_gradient_clipping(
            optimizer_type, enabled=True, clip_type=clip_type, clip_value=clip_value, norm_type=norm_type
        )
    return optimizer_type(params, lr=base_lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)


_LR_SCHEDULERS = ("WarmupMultiStepLR", "WarmupCosineLR", "WarmupStepWithFixedGammaLR")


def build_lr_multiplier(
    *,
    name: str = "WarmupMultiStepLR",
    max_iter: int,
    steps: Sequence[int] = (),
    gamma: float = 0.1,
    end_value: float = 0.0,
    num_decays: int = 3,
    warmup_factor: float = 0.001,
    warmup_iters: int = 1000,
    warmup_method: str = "linear",
    rescale_interval: bool = False,
) -> ParamScheduler:
    """The lr multiplier (an fvcore ParamScheduler of training progress) of detectron2's
    named schedules, with warmup.

    Args:
        name: "WarmupMultiStepLR" (times ``gamma`` at each of ``steps``), "WarmupCosineLR"
            (half cosine from 1 to ``end_value``) or "WarmupStepWithFixedGammaLR"
            (``num_decays`` equal steps of ``gamma``).
        max_iter: length of training in iterations.
        steps: iterations of the multi-step decays; steps > max_iter are dropped (with a warning).
        gamma: decay factor. Defaults to 0.1.
        end_value: WarmupCosineLR's final multiplier (``BASE_LR_END / BASE_LR``), in [0, 1].
        num_decays: WarmupStepWithFixedGammaLR's number of decays. Defaults to 3.
        warmup_factor, warmup_iters, warmup_method, rescale_interval: see
            :class:`WarmupParamScheduler` (``warmup_length = min(warmup_iters / max_iter, 1)``).
    """
    if max_iter <= 0:
        raise ValueError(f"build_lr_multiplier: max_iter (SOLVER.MAX_ITER) must be > 0, got {max_iter}")
    if name == "WarmupMultiStepLR":
        kept = [x for x in steps if x <= max_iter]
        if len(kept) != len(steps):
            logger.warning(
                f"SOLVER.STEPS {list(steps)} has values larger than SOLVER.MAX_ITER={max_iter}; they are ignored."
            )
        sched: ParamScheduler = MultiStepParamScheduler(
            values=[gamma**k for k in range(len(kept) + 1)], milestones=kept, num_updates=max_iter
        )
    elif name == "WarmupCosineLR":
        if not 0.0 <= end_value <= 1.0:
            raise ValueError(
                f"WarmupCosineLR: the final lr must be in [0, base lr] (SOLVER.BASE_LR_END / SOLVER.BASE_LR = {end_value})"
            )
        sched = CosineParamScheduler(1, end_value)
    elif name == "WarmupStepWithFixedGammaLR":
        sched = StepWithFixedGammaParamScheduler(
            base_value=1.0, gamma=gamma, num_decays=num_decays, num_updates=max_iter
        )
    else:
        raise ValueError(f"Unknown LR scheduler (SOLVER.LR_SCHEDULER_NAME): {name!r}; use one of {_LR_SCHEDULERS}")
    return WarmupParamScheduler(
        sched, warmup_factor, min(warmup_iters / max_iter, 1.0), warmup_method, rescale_interval
    )


def _lr_scheduler_from_config(cfg: Any, optimizer: torch.optim.Optimizer) -> Dict[str, Any]:
    s = cfg.SOLVER
    return {
        "optimizer": optimizer,
        "name": s.LR_SCHEDULER_NAME,
        "max_iter": s.MAX_ITER,
        "steps": s.STEPS,
        "gamma": s.GAMMA,
        "end_value": s.BASE_LR_END / s.BASE_LR if s.LR_SCHEDULER_NAME == "WarmupCosineLR" else 0.0,
        "num_decays": s.NUM_DECAYS,
        "warmup_factor": s.WARMUP_FACTOR,
        "warmup_iters": s.WARMUP_ITERS,
        "warmup_method": s.WARMUP_METHOD,
        "rescale_interval": s.RESCALE_INTERVAL,
    }


@configurable(from_config=_lr_scheduler_from_config)
def build_lr_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    name: str = "WarmupMultiStepLR",
    max_iter: int,
    steps: Sequence[int] = (),
    gamma: float = 0.1,
    end_value: float = 0.0,
    num_decays: int = 3,
    warmup_factor: float = 0.001,
    warmup_iters: int = 1000,
    warmup_method: str = "linear",
    rescale_interval: bool = False,
) -> LRMultiplier:
    """An :class:`LRMultiplier` stepping ``optimizer`` along :func:`build_lr_multiplier`
    (same arguments), as detectron2's ``build_lr_scheduler(cfg, optimizer)`` (also accepted:
    ``cfg.SOLVER.{LR_SCHEDULER_NAME, MAX_ITER, STEPS, GAMMA, BASE_LR_END, NUM_DECAYS,
    WARMUP_*, RESCALE_INTERVAL}``).

    "WarmupMultiStepLR" gives the lr of the legacy :class:`WarmupMultiStepLR` class;
    "WarmupCosineLR" that of :class:`WarmupCosineLR` after the warmup (during warmup
    the lr rises linearly to the cosine's value, as in detectron2).
    """
    multiplier = build_lr_multiplier(
        name=name,
        max_iter=max_iter,
        steps=steps,
        gamma=gamma,
        end_value=end_value,
        num_decays=num_decays,
        warmup_factor=warmup_factor,
        warmup_iters=warmup_iters,
        warmup_method=warmup_method,
        rescale_interval=rescale_interval,
    )
    return LRMultiplier(optimizer, multiplier=multiplier, max_iter=max_iter)
