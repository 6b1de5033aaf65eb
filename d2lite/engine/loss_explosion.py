"""A hook that warns when a finite loss explodes (a run starting to diverge).

A non-finite loss stops training with a FloatingPointError (see
:meth:`d2lite.engine.SimpleTrainer.write_metrics`); a loss that grows to 1e6 or
1e11 while staying finite does not. :class:`LossExplosionCheck` compares each
iteration's loss with the median of the iterations before it and warns, once, when it
is more than ``factor`` times larger.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from .train_loop import HookBase

__all__ = ["LossExplosionCheck"]

logger = logging.getLogger(__name__)


class LossExplosionCheck(HookBase):
    """Warn once when ``metric`` (default ``total_loss``, as put by the trainer on the
    main process) exceeds ``factor`` times its median over the previous ``window``
    values. Example warning::

        total_loss = 1.05e+06 at iteration 3 is 4762 times its median over the previous 3
        iterations (220): the training may be diverging. Lower optimizer.lr, enable
        train.clip_grad or lengthen the warm-up.

    Built by :func:`d2lite.engine.lazy_train.default_hooks` from ``train.loss_explosion``
    (``factor=0`` switches it off).
    """

    priority = "LOW"

    def __init__(self, factor: float = 100.0, window: int = 20, min_history: int = 3, metric: str = "total_loss"):
        """
        Args:
            factor: warn when the loss is more than ``factor`` times the median (> 1).
            window: number of previous values the median is taken over.
            min_history: number of previous values needed before checking.
            metric: the storage scalar to watch.
        """
        if not factor > 1:
            raise ValueError(f"LossExplosionCheck: factor must be > 1, got {factor}")
        if window < 1 or min_history < 1:
            raise ValueError(f"LossExplosionCheck: window and min_history must be >= 1, got {window}, {min_history}")
        self.factor = float(factor)
        self.window = int(window)
        self.min_history = int(min_history)
        self.metric = metric
        self.warned = False

    def after_step(self) -> None:
        if self.warned:
            return
        try:
            history = self.trainer.storage.history(self.metric).values()
        except KeyError:  # not a main process, or not put yet
            return
        value, iteration = history[-1]
        if iteration != self.trainer.iter or not math.isfinite(value):
            return
        previous = [v for v, _ in history[-1 - self.window : -1] if math.isfinite(v)]
        if len(previous) < self.min_history:
            return
        median = float(np.median(previous))
        if median > 0 and value > self.factor * median:
            self.warned = True
            logger.warning(
                f"{self.metric} = {value:.3g} at iteration {iteration} is {value / median:.0f} times its median over "
                f"the previous {len(previous)} iterations ({median:.3g}): the training may be diverging. Lower "
                "optimizer.lr, enable train.clip_grad or lengthen the warm-up. (Warned once; "
                "train.loss_explosion.factor=0 switches this check off.)"
            )
