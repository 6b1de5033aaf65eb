"""Learning-rate schedules, with detectron2's names and semantics.

Two styles are provided:

* The recommended one: a stateless fvcore :class:`ParamScheduler` describes the
  *multiplier* of the LR as a function of training progress ``where`` in [0, 1),
  and :class:`LRMultiplier` turns it into a torch LR scheduler that is stepped once
  per iteration: ``lr = base_lr * multiplier(iter / max_iter)``.
* The legacy detectron2 schedulers :class:`WarmupMultiStepLR` and
  :class:`WarmupCosineLR`, which compute the LR in closed form per iteration.

All "epochs" of the torch API (``last_epoch``) mean *iterations* here.
"""

import logging
import math
from bisect import bisect_right
from typing import Any, Dict, List

import torch
from fvcore.common.param_scheduler import (
    CompositeParamScheduler,
    ConstantParamScheduler,
    LinearParamScheduler,
    ParamScheduler,
)

__all__ = [
    "WarmupParamScheduler",
    "FlatCosineParamScheduler",
    "LRMultiplier",
    "WarmupMultiStepLR",
    "WarmupCosineLR",
]

logger = logging.getLogger(__name__)

_WARMUP_METHODS = ("linear", "constant")


def _check_warmup_method(method: str) -> None:
    if method not in _WARMUP_METHODS:
        raise ValueError(f"Unknown warmup method: {method!r}; use one of {_WARMUP_METHODS}.")


class WarmupParamScheduler(CompositeParamScheduler):
    """Prepend a warmup stage to another fvcore ParamScheduler.

    During the first ``warmup_length`` fraction of training the value goes from
    ``warmup_factor * scheduler(0)`` to ``scheduler(warmup_length)`` (linear) or stays
    at ``warmup_factor * scheduler(0)`` (constant). Afterwards the value is
    ``scheduler(where)`` — the wrapped scheduler keeps its own time axis, so e.g.
    milestones of a MultiStepParamScheduler are not shifted by the warmup.

    Example: ``WarmupParamScheduler(MultiStepParamScheduler([1, 0.1, 0.01],
    milestones=[60000, 80000], num_updates=90000), 0.001, 1000 / 90000)``.
    """

    def __init__(
        self,
        scheduler: ParamScheduler,
        warmup_factor: float,
        warmup_length: float,
        warmup_method: str = "linear",
        rescale_interval: bool = False,
    ) -> None:
        """
        Args:
            scheduler: the scheduler that the warmup is added in front of.
            warmup_factor: start value relative to ``scheduler(0)``, e.g. 0.001.
            warmup_length: fraction of the whole training (in [0, 1]) spent in warmup,
                e.g. ``1000 / max_iter``.
            warmup_method: "linear" or "constant". Defaults to "linear".
            rescale_interval: if True, the wrapped scheduler is run on the remaining
                ``1 - warmup_length`` of training rescaled to [0, 1) (it starts after
                warmup); if False (default) it is evaluated at the absolute progress.
        """
        if not 0.0 <= warmup_length <= 1.0:
            raise ValueError(
                f"WarmupParamScheduler: warmup_length must be a fraction of training in "
                f"[0, 1], got {warmup_length}. Pass warmup_iters / max_iter."
            )
        _check_warmup_method(warmup_method)
        end_value = scheduler(0.0 if rescale_interval else warmup_length)
        start_value = warmup_factor * scheduler(0.0)
        if warmup_method == "constant":
            warmup: ParamScheduler = ConstantParamScheduler(start_value)
        else:
            warmup = LinearParamScheduler(start_value, end_value)
        super().__init__(
            [warmup, scheduler],
            interval_scaling=["rescaled", "rescaled" if rescale_interval else "fixed"],
            lengths=[warmup_length, 1.0 - warmup_length],
        )


class FlatCosineParamScheduler(ParamScheduler):
    """Constant value, then half-cosine annealing to a final value.

    ``value(where) = start_value`` for ``where < flat_fraction``, then
    ``end_value + (start_value - end_value) * (1 + cos(pi * t)) / 2`` with
    ``t = (where - flat_fraction) / (1 - flat_fraction)``.

    This is the "flat + cosine" schedule of mmdetection's RTMDet (constant LR for
    the first half of training, then ``CosineAnnealingLR`` to ``0.05 * base_lr``):
    ``WarmupParamScheduler(FlatCosineParamScheduler(1.0, 0.05, 0.5), 1e-5,
    1000 / max_iter)`` used as the multiplier of :class:`LRMultiplier`.
    """

    def __init__(self, start_value: float, end_value: float, flat_fraction: float) -> None:
        """
        Args:
            start_value: value during the flat stage (a multiplier, e.g. 1.0).
            end_value: value at the end of training (e.g. 0.05).
            flat_fraction: fraction of training (in [0, 1]) that stays at start_value.
        """
        if not 0.0 <= flat_fraction <= 1.0:
            raise ValueError(f"FlatCosineParamScheduler: flat_fraction must be in [0, 1], got {flat_fraction}.")
        self._start_value = start_value
        self._end_value = end_value
        self._flat_fraction = flat_fraction

    def __call__(self, where: float) -> float:
        if where < self._flat_fraction or self._flat_fraction >= 1.0:
            return self._start_value
        t = (where - self._flat_fraction) / (1.0 - self._flat_fraction)
        t = min(max(t, 0.0), 1.0)
        return self._end_value + 0.5 * (self._start_value - self._end_value) * (1.0 + math.cos(math.pi * t))


class LRMultiplier(torch.optim.lr_scheduler.LRScheduler):
    """Torch LR scheduler driven by an fvcore ParamScheduler multiplier.

    After ``k`` calls of :meth:`step`, each param group's lr is
    ``initial_lr * multiplier(k / max_iter)``. The relative scale between groups
    (e.g. from ``bias_lr_factor``) is therefore kept. The multiplier is stateless,
    so :meth:`state_dict` holds only ``base_lrs``/``last_epoch``/``_last_lr`` and a
    resumed scheduler continues with exactly the same LRs.

    Example::

        LRMultiplier(opt, WarmupParamScheduler(MultiStepParamScheduler(
            [1, 0.1, 0.01], milestones=[60000, 80000], num_updates=90000),
            0.001, 1000 / 90000), max_iter=90000)
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        multiplier: ParamScheduler,
        max_iter: int,
        last_iter: int = -1,
    ) -> None:
        """
        Args:
            optimizer: the optimizer whose param groups' "lr" are set.
            multiplier: fvcore ParamScheduler giving the LR multiplier at progress
                ``iter / max_iter``.
            max_iter: total number of training iterations (> 0).
            last_iter: same as torch's ``last_epoch``; -1 starts a new schedule.
        """
        if not isinstance(multiplier, ParamScheduler):
            raise ValueError(
                f"LRMultiplier(multiplier=) must be an instance of fvcore ParamScheduler. Got {multiplier!r} instead."
            )
        if max_iter <= 0:
            raise ValueError(f"LRMultiplier: max_iter must be > 0, got {max_iter}.")
        self._multiplier = multiplier
        self._max_iter = max_iter
        super().__init__(optimizer, last_epoch=last_iter)

    def state_dict(self) -> Dict[str, Any]:
        # fvcore schedulers are stateless; only the torch-side counters matter.
        return {
            "base_lrs": list(self.base_lrs),
            "last_epoch": self.last_epoch,
            "_last_lr": list(self._last_lr),
        }

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        n_groups = len(self.optimizer.param_groups)
        if len(state_dict["base_lrs"]) != n_groups:
            raise ValueError(
                f"LRMultiplier.load_state_dict: the state has {len(state_dict['base_lrs'])} "
                f"base_lrs but the optimizer has {n_groups} param groups; the optimizer "
                "was built differently from the one that was saved."
            )
        self.base_lrs = list(state_dict["base_lrs"])
        self.last_epoch = int(state_dict["last_epoch"])
        self._last_lr = list(state_dict.get("_last_lr", self._compute(self.last_epoch)))
        for group, lr in zip(self.optimizer.param_groups, self._last_lr):
            group["lr"] = lr

    def _compute(self, it: int) -> List[float]:
        multiplier = self._multiplier(it / self._max_iter)
        return [base_lr * multiplier for base_lr in self.base_lrs]

    def get_lr(self) -> List[float]:
        return self._compute(self.last_epoch)

    def _get_closed_form_lr(self) -> List[float]:
        return self.get_lr()


def _get_warmup_factor_at_iter(method: str, iter: int, warmup_iters: int, warmup_factor: float) -> float:
    """LR warmup factor at one iteration (Goyal et al., "ImageNet in 1 hour").

    Args:
        method: "constant" (factor is ``warmup_factor`` during warmup) or "linear"
            (``warmup_factor * (1 - alpha) + alpha`` with ``alpha = iter / warmup_iters``).
        iter: the iteration (0-based).
        warmup_iters: number of warmup iterations; from this iteration on the factor is 1.
        warmup_factor: the factor at iteration 0.

    Returns:
        The multiplicative factor in (0, 1].
    """
    if iter >= warmup_iters:
        return 1.0
    if method == "constant":
        return warmup_factor
    if method == "linear":
        alpha = iter / warmup_iters
        return warmup_factor * (1 - alpha) + alpha
    raise ValueError(f"Unknown warmup method: {method!r}; use one of {_WARMUP_METHODS}.")


class _WarmupLR(torch.optim.lr_scheduler.LRScheduler):
    """``lr(iter) = base_lr * warmup_factor(iter) * self._decay(iter)``: the legacy schedulers below."""

    def __init__(self, optimizer, warmup_factor: float, warmup_iters: int, warmup_method: str, last_epoch: int):
        _check_warmup_method(warmup_method)
        self.warmup_factor = warmup_factor
        self.warmup_iters = warmup_iters
        self.warmup_method = warmup_method
        super().__init__(optimizer, last_epoch)

    def _decay(self, it: int) -> float:
        raise NotImplementedError

    def get_lr(self) -> List[float]:
        factor = _get_warmup_factor_at_iter(self.warmup_method, self.last_epoch, self.warmup_iters, self.warmup_factor)
        decay = self._decay(self.last_epoch)
        return [base_lr * factor * decay for base_lr in self.base_lrs]

    def _get_closed_form_lr(self) -> List[float]:
        return self.get_lr()


class WarmupMultiStepLR(_WarmupLR):
    """Step decay with warmup (legacy detectron2 scheduler).

    ``lr(iter) = base_lr * warmup_factor(iter) * gamma ** bisect_right(milestones, iter)``
    where ``warmup_factor(iter)`` is :func:`_get_warmup_factor_at_iter`.
    Prefer :class:`LRMultiplier` with :class:`WarmupParamScheduler`.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        milestones: List[int],
        gamma: float = 0.1,
        warmup_factor: float = 0.001,
        warmup_iters: int = 1000,
        warmup_method: str = "linear",
        last_epoch: int = -1,
    ) -> None:
        """
        Args:
            optimizer: the optimizer to schedule.
            milestones: increasing iterations at which the LR is multiplied by gamma.
            gamma: decay factor at each milestone. Defaults to 0.1.
            warmup_factor: LR factor at iteration 0. Defaults to 0.001.
            warmup_iters: warmup length in iterations. Defaults to 1000.
            warmup_method: "linear" or "constant". Defaults to "linear".
            last_epoch: last iteration; -1 starts a new schedule.
        """
        if list(milestones) != sorted(milestones):
            raise ValueError(
                f"WarmupMultiStepLR: milestones should be a list of increasing integers. Got {list(milestones)}."
            )
        self.milestones = list(milestones)
        self.gamma = gamma
        super().__init__(optimizer, warmup_factor, warmup_iters, warmup_method, last_epoch)

    def _decay(self, it: int) -> float:
        return self.gamma ** bisect_right(self.milestones, it)


class WarmupCosineLR(_WarmupLR):
    """Half-cosine decay to 0 multiplied by a warmup factor (legacy detectron2).

    ``lr(iter) = base_lr * warmup_factor(iter) * 0.5 * (1 + cos(pi * iter / max_iters))``.
    The cosine period starts at iteration 0, not at the end of warmup (as in d2).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        max_iters: int,
        warmup_factor: float = 0.001,
        warmup_iters: int = 1000,
        warmup_method: str = "linear",
        last_epoch: int = -1,
    ) -> None:
        """
        Args:
            optimizer: the optimizer to schedule.
            max_iters: total number of iterations (the LR reaches 0 there).
            warmup_factor: LR factor at iteration 0. Defaults to 0.001.
            warmup_iters: warmup length in iterations. Defaults to 1000.
            warmup_method: "linear" or "constant". Defaults to "linear".
            last_epoch: last iteration; -1 starts a new schedule.
        """
        if max_iters <= 0:
            raise ValueError(f"WarmupCosineLR: max_iters must be > 0, got {max_iters}.")
        self.max_iters = max_iters
        super().__init__(optimizer, warmup_factor, warmup_iters, warmup_method, last_epoch)

    def _decay(self, it: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * it / self.max_iters))
