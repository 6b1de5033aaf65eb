"""Whether a checkpoint fits what it is loaded into: shape tables and optimizer-state checks.

Resuming a run whose model changed (e.g. ``model.num_classes``) must not restore an
optimizer state built for other parameter shapes: Adam would fail many iterations
later ("The size of tensor a (45) must match the size of tensor b (27)"), or, worse,
SGD momentum would silently mix states. :func:`check_optimizer_state` compares the
saved state with the optimizer's parameters before anything is restored.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from tabulate import tabulate

__all__ = ["CheckpointError", "IncompatibleCheckpointError", "check_optimizer_state", "shape_table"]


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used as asked: unreadable, a damaged checkpoint directory,
    or a state that does not fit the model/optimizer it is loaded into."""


class IncompatibleCheckpointError(CheckpointError):
    """A saved state (e.g. the optimizer's) does not fit what it is loaded into."""


def _shape(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def shape_table(rows: Sequence[Tuple[str, Sequence[int], Sequence[int]]], header: Sequence[str]) -> str:
    """A text table of ``(name, shape a, shape b)`` rows, e.g.::

    | parameter                  | checkpoint    | model         |
    |:---------------------------|:--------------|:--------------|
    | head.cls_score.weight      | (27, 64, 3, 3) | (45, 64, 3, 3) |
    """
    return tabulate([(n, _shape(a), _shape(b)) for n, a, b in rows], headers=list(header), tablefmt="pipe")


def check_optimizer_state(
    optimizer: torch.optim.Optimizer,
    state_dict: Mapping[str, Any],
    param_names: Optional[Dict[int, str]] = None,
) -> None:
    """Raise unless ``state_dict`` (``optimizer.state_dict()`` of a checkpoint) fits
    ``optimizer``: the same number of parameter groups and of parameters per group,
    and per-parameter state tensors (momentum, Adam's moments; anything that is not a
    scalar) of each parameter's shape.

    Args:
        optimizer: the optimizer about to ``load_state_dict(state_dict)``.
        state_dict: the saved optimizer state.
        param_names: ``{id(parameter): name}`` to name parameters in the message.

    Raises:
        IncompatibleCheckpointError: naming the groups, or listing the parameters
            (with both shapes) whose saved state does not fit.
    """
    names = param_names or {}
    saved_groups = state_dict.get("param_groups", [])
    groups = optimizer.param_groups
    if len(saved_groups) != len(groups):
        raise IncompatibleCheckpointError(
            f"the saved optimizer state has {len(saved_groups)} parameter groups, the optimizer {len(groups)}"
        )
    saved_state = state_dict.get("state", {})
    rows: List[Tuple[str, Sequence[int], Sequence[int]]] = []
    for g, (saved, group) in enumerate(zip(saved_groups, groups)):
        if len(saved["params"]) != len(group["params"]):
            raise IncompatibleCheckpointError(
                f"parameter group {g} of the saved optimizer state has {len(saved['params'])} parameters, "
                f"the optimizer's has {len(group['params'])}"
            )
        for index, param in zip(saved["params"], group["params"]):
            for value in saved_state.get(index, {}).values():
                if isinstance(value, torch.Tensor) and value.dim() > 0 and tuple(value.shape) != tuple(param.shape):
                    rows.append((names.get(id(param), f"group {g}, parameter {index}"), value.shape, param.shape))
                    break
    if rows:
        listed = ", ".join(f"{n} (saved {_shape(a)}, model {_shape(b)})" for n, a, b in rows[:5])
        more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
        raise IncompatibleCheckpointError(
            f"the saved optimizer state does not fit {len(rows)} parameter(s) of the model: {listed}{more}"
        )
