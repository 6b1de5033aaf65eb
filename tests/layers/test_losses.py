import math

import pytest
import torch
from torch.nn import functional as F

from d2lite.layers import ciou_loss, diou_loss, giou_loss, sigmoid_focal_loss, smooth_l1_loss


def _focal_by_hand(x: float, t: float, alpha: float, gamma: float) -> float:
    p = 1 / (1 + math.exp(-x))
    p_t = p if t == 1 else 1 - p
    alpha_t = alpha if t == 1 else 1 - alpha
    return -alpha_t * (1 - p_t) ** gamma * math.log(p_t)


def test_sigmoid_focal_loss_matches_formula():
    logits = [2.0, -1.0, 0.5, -3.0, 0.0]
    targets = [1.0, 0.0, 1.0, 1.0, 0.0]
    out = sigmoid_focal_loss(torch.tensor(logits), torch.tensor(targets), alpha=0.25, gamma=2)
    expected = [_focal_by_hand(x, t, 0.25, 2.0) for x, t in zip(logits, targets)]
    assert torch.allclose(out, torch.tensor(expected), rtol=1e-5, atol=1e-7)
    # logit 0, positive: 0.25 * 0.5^2 * ln 2
    single = sigmoid_focal_loss(torch.tensor([0.0]), torch.tensor([1.0]))
    assert single.item() == pytest.approx(0.25 * 0.25 * math.log(2), rel=1e-6)


def test_sigmoid_focal_loss_reductions_and_special_cases():
    x = torch.tensor([[1.5, -0.2], [0.3, -2.0]])
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    none = sigmoid_focal_loss(x, t, alpha=0.5, gamma=1.5)
    assert none.shape == (2, 2)
    assert sigmoid_focal_loss(x, t, alpha=0.5, gamma=1.5, reduction="sum").item() == pytest.approx(none.sum().item())
    assert sigmoid_focal_loss(x, t, alpha=0.5, gamma=1.5, reduction="mean").item() == pytest.approx(none.mean().item())
    # gamma 0 and no alpha: plain BCE
    bce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    assert torch.allclose(sigmoid_focal_loss(x, t, alpha=-1, gamma=0), bce)
    # integer targets are accepted
    assert torch.allclose(sigmoid_focal_loss(x, t.long(), alpha=0.5, gamma=1.5), none)
    with pytest.raises(ValueError, match="reduction"):
        sigmoid_focal_loss(x, t, reduction="avg")


def test_sigmoid_focal_loss_large_logits_finite_and_grad():
    x = torch.tensor([100.0, -100.0, 100.0], requires_grad=True)
    t = torch.tensor([1.0, 0.0, 0.0])
    loss = sigmoid_focal_loss(x, t, reduction="sum")
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    assert loss.item() == pytest.approx(0.75 * 100.0, rel=1e-4)  # confident wrong negative


def test_smooth_l1_loss():
    inp = torch.tensor([0.0, 1.0, 3.0, -2.0])
    tgt = torch.tensor([0.5, 3.0, 3.0, 0.0])  # |diff| = 0.5, 2, 0, 2
    assert torch.equal(smooth_l1_loss(inp, tgt, beta=0.0), torch.tensor([0.5, 2.0, 0.0, 2.0]))
    # beta 1: 0.5*0.25 = 0.125; 2 - 0.5 = 1.5
    assert torch.allclose(smooth_l1_loss(inp, tgt, beta=1.0), torch.tensor([0.125, 1.5, 0.0, 1.5]))
    # beta 0.1 (detectron2's RetinaNet default): 0.5-0.05, 2-0.05
    assert torch.allclose(smooth_l1_loss(inp, tgt, beta=0.1), torch.tensor([0.45, 1.95, 0.0, 1.95]))
    assert smooth_l1_loss(inp, tgt, beta=1.0, reduction="sum").item() == pytest.approx(3.125)
    assert smooth_l1_loss(inp, tgt, beta=1.0, reduction="mean").item() == pytest.approx(3.125 / 4)
    # tiny beta = L1 exactly, and finite grads
    x = inp.clone().requires_grad_()
    smooth_l1_loss(x, tgt, beta=1e-6, reduction="sum").backward()
    assert torch.equal(x.grad, torch.tensor([-1.0, -1.0, 0.0, -1.0]))


def test_giou_loss_hand_cases():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    assert giou_loss(a, a).item() == pytest.approx(0.0, abs=1e-6)
    # disjoint: iou 0, union 2, enclosing box area 3 -> giou = -1/3, loss 4/3
    b1 = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    b2 = torch.tensor([[2.0, 0.0, 3.0, 1.0]])
    assert giou_loss(b1, b2).item() == pytest.approx(4 / 3, rel=1e-5)
    # overlap 1, union 7, enclosing 9 -> loss = 1 - 1/7 + 2/9
    c = torch.tensor([[1.0, 1.0, 3.0, 3.0]])
    assert giou_loss(a, c).item() == pytest.approx(1 - 1 / 7 + 2 / 9, rel=1e-5)
    both = giou_loss(torch.cat([a, b1]), torch.cat([c, b2]), reduction="sum")
    assert both.item() == pytest.approx(1 - 1 / 7 + 2 / 9 + 4 / 3, rel=1e-5)
    empty = giou_loss(torch.zeros(0, 4), torch.zeros(0, 4), reduction="mean")
    assert empty.item() == 0.0


def test_giou_loss_rejects_bad_boxes():
    good = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    with pytest.raises(ValueError, match="x1 larger than x2"):
        giou_loss(torch.tensor([[2.0, 0.0, 1.0, 1.0]]), good)
    with pytest.raises(ValueError, match="y1 larger than y2"):
        giou_loss(good, torch.tensor([[0.0, 2.0, 1.0, 1.0]]))


@pytest.mark.parametrize("loss_fn", [giou_loss, diou_loss, ciou_loss])
def test_non_finite_boxes_give_a_non_finite_loss_not_a_bad_box_error(loss_fn):
    """A diverging model predicts NaN/inf boxes: the loss says NaN (and the trainer names
    the iteration), instead of a misleading "x1 larger than x2"."""
    good = torch.tensor([[0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 3.0, 4.0]])
    for bad in (float("nan"), float("inf"), -float("inf")):
        pred = good.clone()
        pred[1, 0] = bad
        assert not torch.isfinite(loss_fn(pred, good, reduction="sum"))
    with pytest.raises(ValueError, match="x1 larger than x2"):  # finite bad boxes are still errors
        loss_fn(torch.tensor([[float("nan"), 0.0, 1.0, 1.0], [2.0, 0.0, 1.0, 1.0]]), good)


def test_diou_ciou_hand_cases():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    assert diou_loss(a, a).item() == pytest.approx(0.0, abs=1e-6)
    assert ciou_loss(a, a).item() == pytest.approx(0.0, abs=1e-6)
    # disjoint unit squares 2 apart: iou 0, center dist^2 4, enclosing diag^2 9+1
    b1 = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    b2 = torch.tensor([[2.0, 0.0, 3.0, 1.0]])
    assert diou_loss(b1, b2).item() == pytest.approx(1 + 4 / 10, rel=1e-5)
    # same aspect ratio -> v = 0 -> CIoU == DIoU
    assert ciou_loss(b1, b2).item() == pytest.approx(1 + 4 / 10, rel=1e-5)
    # concentric 2x2 vs 2x1: iou 0.5, no center distance, v = 4/pi^2 (atan(2) - atan(1))^2
    p = torch.tensor([[0.0, 0.5, 2.0, 1.5]])
    v = 4 / math.pi**2 * (math.atan(1.0) - math.atan(2.0)) ** 2
    alpha = v / (1 - 0.5 + v)
    assert ciou_loss(p, a).item() == pytest.approx(0.5 + alpha * v, rel=1e-4)


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (0.5, 1.5), (-1.0, 0.0)])
def test_sigmoid_focal_loss_from_labels_equals_one_hot_focal_loss(alpha, gamma):
    """The fused loss is sigmoid_focal_loss on the valid rows with one-hot targets
    (label K = background: all zeros; -1 = ignored), values and gradients."""
    from d2lite.layers import sigmoid_focal_loss_from_labels

    g = torch.Generator().manual_seed(0)
    x = (torch.randn(2, 300, 5, generator=g) * 4).requires_grad_()
    labels = torch.randint(-1, 6, (2, 300), generator=g)
    valid = labels >= 0
    targets = F.one_hot(labels[valid], 6)[:, :5].float()
    ref = sigmoid_focal_loss(x[valid], targets, alpha=alpha, gamma=gamma, reduction="sum")
    (ref_grad,) = torch.autograd.grad(ref, x)
    out = sigmoid_focal_loss_from_labels(x, labels, alpha=alpha, gamma=gamma)
    (grad,) = torch.autograd.grad(out, x)
    assert out.item() == pytest.approx(ref.item(), rel=1e-5)
    assert torch.allclose(grad, ref_grad, atol=1e-6)
    assert torch.all(grad[~valid] == 0)  # ignored rows get no gradient


def test_sigmoid_focal_loss_from_labels_hand_value_gradcheck_and_errors():
    from d2lite.layers import sigmoid_focal_loss_from_labels

    # one row, class 0 positive with logit 0, class 1 negative with logit 0:
    # 0.25 * 0.5^2 * ln 2 + 0.75 * 0.5^2 * ln 2
    out = sigmoid_focal_loss_from_labels(torch.zeros(1, 2), torch.tensor([0]))
    assert out.item() == pytest.approx(0.25 * math.log(2), rel=1e-6)
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 3, -1, 2])
    assert torch.autograd.gradcheck(lambda t: sigmoid_focal_loss_from_labels(t, labels, 0.3, 1.5), (x,))
    # large logits stay finite
    big = torch.tensor([[100.0, -100.0], [-100.0, 100.0]], requires_grad=True)
    loss = sigmoid_focal_loss_from_labels(big, torch.tensor([0, 0]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(big.grad).all()
    assert loss.item() == pytest.approx(0.25 * 100.0 + 0.75 * 100.0, rel=1e-4)
    with pytest.raises(ValueError, match="shape"):
        sigmoid_focal_loss_from_labels(torch.zeros(3, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        sigmoid_focal_loss_from_labels(torch.zeros(3, 2), torch.zeros(3))
