"""LossExplosionCheck: a finite loss exploding is warned about, once."""

import logging

import pytest
import torch
from torch import nn

from d2lite.engine import SimpleTrainer, hooks


class _Scaled(nn.Module):
    """total_loss = the batch value (a float), so a test chooses each iteration's loss."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, value):
        return {"loss_x": self.w * value}


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _train(values, check, caplog=None):
    """The warnings of the check's logger, collected there (an earlier test's setup_logger
    may have stopped "d2lite" records from propagating to caplog's root handler)."""
    model = _Scaled()
    trainer = SimpleTrainer(model, iter(torch.tensor(v) for v in values), torch.optim.SGD(model.parameters(), lr=0.0))
    trainer.register_hooks([check])
    logger, collect = logging.getLogger("d2lite.engine.loss_explosion"), _Collect()
    logger.addHandler(collect)
    try:
        trainer.train(0, len(values))
    finally:
        logger.removeHandler(collect)
    return collect.messages


def test_warns_once_when_loss_exceeds_factor_times_median(caplog):
    # medians of the previous values: iteration 3 -> median(1, 2, 3) = 2; 250 > 100 * 2
    messages = _train([1.0, 2.0, 3.0, 250.0, 1e11, 1e12], hooks.LossExplosionCheck(factor=100, window=20), caplog)
    assert len(messages) == 1
    assert "total_loss = 250 at iteration 3 is 125 times its median over the previous 3 iterations (2)" in messages[0]
    assert "train.loss_explosion.factor=0" in messages[0]


def test_no_warning_below_the_factor_or_before_min_history(caplog):
    assert _train([1.0, 2.0, 3.0, 199.0, 150.0], hooks.LossExplosionCheck(factor=100), caplog) == []
    assert _train([1.0, 500.0, 3.0], hooks.LossExplosionCheck(factor=100, min_history=3), caplog) == []


def test_median_is_over_the_window(caplog):
    # Iteration 5 with window=2: median(50, 50) = 50, 2000 is 40x (iterations 3, 4: 50x, 2000/25.5);
    # with window=20: median(1, 1, 1, 50, 50) = 1, 2000x.
    values = [1.0, 1.0, 1.0, 50.0, 50.0, 2000.0]
    assert _train(values, hooks.LossExplosionCheck(factor=100, window=2, min_history=2), caplog) == []
    assert len(_train(values, hooks.LossExplosionCheck(factor=100, window=20, min_history=2), caplog)) == 1


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="factor must be > 1"):
        hooks.LossExplosionCheck(factor=1)
    with pytest.raises(ValueError, match="window"):
        hooks.LossExplosionCheck(window=0)
