"""Optimizer parameter groups with per-parameter hyperparameters (detectron2 semantics)."""

import copy
import logging
from collections import defaultdict
from typing import Any, Callable, Dict, List, Optional, Set, Tuple, Type

import torch

__all__ = ["get_default_optimizer_params", "reduce_param_groups"]

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
