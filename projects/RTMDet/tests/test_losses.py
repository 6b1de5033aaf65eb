"""QualityFocalLoss and GIoULoss against their formulas, computed by hand."""

import math

import pytest
import torch

from rtmdet import GIoULoss, QualityFocalLoss, giou_loss, quality_focal_loss


def _sig(x):
    return 1 / (1 + math.exp(-x))


def _bce(x, q):
    return -(q * math.log(_sig(x)) + (1 - q) * math.log(1 - _sig(x)))


def test_qfl_matches_formula():
    pred = torch.tensor([[0.3, -0.2], [1.5, -2.0]], dtype=torch.float64)
    labels = torch.tensor([1, 2])  # sample 0 positive of class 1 (quality 0.6); sample 1 background (2)
    quality = torch.tensor([0.6, 0.0], dtype=torch.float64)
    loss = quality_focal_loss(pred, (labels, quality), beta=2.0)
    e0 = _bce(0.3, 0) * _sig(0.3) ** 2 + _bce(-0.2, 0.6) * abs(0.6 - _sig(-0.2)) ** 2
    e1 = _bce(1.5, 0) * _sig(1.5) ** 2 + _bce(-2.0, 0) * _sig(-2.0) ** 2
    assert loss.tolist() == pytest.approx([e0, e1], rel=1e-12)
    # module: weights, avg_factor (mmdetection divides the sum by avg_factor + float32 eps), loss_weight
    m = QualityFocalLoss(beta=2.0, loss_weight=0.5)
    w = torch.tensor([1.0, 0.0], dtype=torch.float64)
    out = m(pred, (labels, quality), w, avg_factor=4.0)
    assert float(out) == pytest.approx(0.5 * e0 / (4.0 + torch.finfo(torch.float32).eps), rel=1e-12)
    assert float(QualityFocalLoss()(pred, (labels, quality))) == pytest.approx((e0 + e1) / 2, rel=1e-12)


def test_qfl_modulating_factor_is_not_detached():
    x = torch.tensor([[0.7]], dtype=torch.float64, requires_grad=True)
    quality_focal_loss(x, (torch.tensor([0]), torch.tensor([0.2], dtype=torch.float64))).sum().backward()
    s, q = _sig(0.7), 0.2
    # d/dx [BCE(x, q) * (s - q)^2] = (s - q) * (s - q)^2 + BCE * 2 (s - q) s (1 - s)
    full = (s - q) ** 3 + _bce(0.7, q) * 2 * (s - q) * s * (1 - s)
    assert float(x.grad) == pytest.approx(full, rel=1e-10)


def test_giou_matches_formula():
    pred = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]])
    target = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 1.0, 1.0]])
    # box 0: inter 1, union 7, enclosure 9: giou = 1/7 - 2/9; box 1: identical -> 0
    expected = [1 - (1 / 7 - 2 / 9), 0.0]
    assert giou_loss(pred, target).tolist() == pytest.approx(expected, abs=1e-6)
    m = GIoULoss(loss_weight=2.0)
    w = torch.tensor([0.5, 1.0])
    assert float(m(pred, target, w, avg_factor=1.0)) == pytest.approx(2 * 0.5 * expected[0], rel=1e-5)
    # disjoint boxes: giou < 0, loss in (1, 2]
    far = giou_loss(torch.tensor([[0.0, 0, 1, 1]]), torch.tensor([[3.0, 0, 4, 1]]))
    assert float(far) == pytest.approx(1 - (0 - (4 - 2) / 4), abs=1e-6)


def test_giou_zero_weights_give_zero_loss_with_gradient():
    pred = torch.tensor([[0.0, 0.0, 2.0, 2.0]], requires_grad=True)
    loss = GIoULoss(loss_weight=2.0)(pred, torch.tensor([[1.0, 1.0, 3.0, 3.0]]), torch.zeros(1), avg_factor=1.0)
    assert float(loss) == 0.0
    loss.backward()
    assert pred.grad is not None and torch.equal(pred.grad, torch.zeros_like(pred))


def test_loss_bad_input():
    with pytest.raises(ValueError, match="n, 4"):
        GIoULoss()(torch.zeros(2, 4), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="avg_factor"):
        QualityFocalLoss(reduction="sum")(torch.zeros(1, 2), (torch.tensor([0]), torch.tensor([1.0])), avg_factor=2.0)
