"""ExpMomentum (mmdetection's ExpMomentumEMA) numbers, alone and in d2lite's ModelEMA."""

import math

import pytest
from torch import nn

from rtmdet import ExpMomentum


def test_momentum_values():
    fn = ExpMomentum(momentum=0.0002, gamma=2000)
    assert fn(0) == pytest.approx(0.9998 * math.exp(-1 / 2000) + 0.0002, rel=1e-15)
    assert fn(0) == pytest.approx(0.99950022, abs=1e-8)
    assert fn(1999) == pytest.approx(0.9998 * math.exp(-1) + 0.0002, rel=1e-15)
    assert fn(10**6) == pytest.approx(0.0002, rel=1e-12)
    with pytest.raises(ValueError, match="gamma"):
        ExpMomentum(gamma=0)


def test_in_model_ema_averages_bn_buffers():
    from d2lite.modeling.ema import ModelEMA

    model = nn.Sequential(nn.Conv2d(1, 1, 1, bias=False), nn.BatchNorm2d(1))
    nn.init.constant_(model[0].weight, 1.0)
    fn = ExpMomentum()
    ema = ModelEMA(model, momentum=0.0002, momentum_fn=fn, update_buffers=True)
    ema.update(model, 0)  # first update copies
    nn.init.constant_(model[0].weight, 3.0)
    model[1].running_mean.fill_(2.0)
    ema.update(model, 1)
    m = fn(1)
    assert float(ema.module[0].weight) == pytest.approx(1.0 + m * 2.0, rel=1e-6)
    assert float(ema.module[1].running_mean) == pytest.approx(m * 2.0, rel=1e-6)
