import math

import pytest
import torch

from d2lite.modeling.box_regression import Box2BoxTransform, _dense_box_regression_loss
from d2lite.structures import Boxes


def _random_boxes(n, max_coord=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * max_coord
    wh = torch.rand(n, 2, generator=g) * max_coord + 1
    return torch.cat([xy, xy + wh], dim=1)


def test_get_deltas_hand_computed():
    t = Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0))
    deltas = t.get_deltas(torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([[5.0, 5.0, 25.0, 15.0]]))
    # centers (5, 5) -> (15, 10); size (10, 10) -> (20, 10)
    assert torch.allclose(deltas, torch.tensor([[1.0, 0.5, math.log(2.0), 0.0]]))

    t = Box2BoxTransform(weights=(10.0, 10.0, 5.0, 5.0))
    deltas = t.get_deltas(torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([[5.0, 5.0, 25.0, 15.0]]))
    assert torch.allclose(deltas, torch.tensor([[10.0, 5.0, 5 * math.log(2.0), 0.0]]))


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_round_trip(weights):
    t = Box2BoxTransform(weights=weights)
    src = _random_boxes(50, seed=1)
    dst = _random_boxes(50, seed=2)
    deltas = t.get_deltas(src, dst)
    assert torch.allclose(t.apply_deltas(deltas, src), dst, atol=1e-3)


def test_apply_deltas_clamps_scale():
    t = Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0))
    assert t.scale_clamp == pytest.approx(math.log(1000.0 / 16))
    out = t.apply_deltas(torch.tensor([[0.0, 0.0, 100.0, 1e4]]), torch.tensor([[0.0, 0.0, 10.0, 10.0]]))
    # width/height clamp at exp(log(62.5)) * 10 = 625, centered at 5
    assert torch.allclose(out, torch.tensor([[5 - 312.5, 5 - 312.5, 5 + 312.5, 5 + 312.5]]))
    assert torch.isfinite(out).all()

    t = Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0), scale_clamp=math.log(2.0))
    out = t.apply_deltas(torch.tensor([[0.0, 0.0, 5.0, 0.0]]), torch.tensor([[0.0, 0.0, 10.0, 10.0]]))
    assert torch.allclose(out, torch.tensor([[-5.0, 0.0, 15.0, 10.0]]))


def test_apply_deltas_class_specific():
    t = Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0))
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [10.0, 10.0, 30.0, 20.0]])
    deltas = torch.zeros(2, 8)
    deltas[:, 4] = 1.0  # second class shifts right by one width
    out = t.apply_deltas(deltas, boxes)
    assert out.shape == (2, 8)
    assert torch.allclose(out[:, :4], boxes)
    assert torch.allclose(out[:, 4:], torch.tensor([[10.0, 0.0, 20.0, 10.0], [30.0, 10.0, 50.0, 20.0]]))


def test_bad_input():
    with pytest.raises(ValueError, match="4 values"):
        Box2BoxTransform(weights=(1.0, 1.0))
    t = Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="positive width"):
        t.get_deltas(torch.tensor([[0.0, 0.0, 0.0, 10.0]]), torch.tensor([[0.0, 0.0, 5.0, 5.0]]))


def test_dense_box_regression_loss():
    t = Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0))
    anchors = [Boxes(torch.tensor([[0.0, 0.0, 10.0, 10.0]])), Boxes(torch.tensor([[0.0, 0.0, 20.0, 20.0]]))]
    gt_boxes = [torch.tensor([[5.0, 5.0, 25.0, 15.0], [0.0, 0.0, 1.0, 1.0]])]  # one image, R=2
    pred = [torch.zeros(1, 1, 4), torch.zeros(1, 1, 4)]
    fg = torch.tensor([[True, False]])
    loss = _dense_box_regression_loss(anchors, t, pred, gt_boxes, fg, "smooth_l1", 0.0)
    assert loss.item() == pytest.approx(1.0 + 0.5 + math.log(2.0))
    # beta = 1: 0.5 x^2 for |x| < 1, |x| - 0.5 otherwise
    loss = _dense_box_regression_loss(anchors, t, pred, gt_boxes, fg, "smooth_l1", 1.0)
    assert loss.item() == pytest.approx(0.5 + 0.125 + 0.5 * math.log(2.0) ** 2)
    # tensors instead of Boxes for anchors
    loss_t = _dense_box_regression_loss([a.tensor for a in anchors], t, pred, gt_boxes, fg, "smooth_l1", 0.0)
    assert loss_t.item() == pytest.approx(1.0 + 0.5 + math.log(2.0))

    # giou: predicting the gt exactly gives 0; predicting the anchor gives 1 - IoU + 0
    exact = [t.get_deltas(anchors[0].tensor, gt_boxes[0][:1]).view(1, 1, 4), torch.zeros(1, 1, 4)]
    assert _dense_box_regression_loss(anchors, t, exact, gt_boxes, fg, "giou").item() == pytest.approx(0.0, abs=1e-6)
    giou = _dense_box_regression_loss(anchors, t, pred, gt_boxes, fg, "giou").item()
    # anchor [0,0,10,10] vs gt [5,5,25,15]: inter 25, union 275, hull 25*15=375
    assert giou == pytest.approx(1 - (25 / 275 - (375 - 275) / 375), rel=1e-5)
    for kind in ("diou", "ciou"):
        assert torch.isfinite(_dense_box_regression_loss(anchors, t, pred, gt_boxes, fg, kind))
    with pytest.raises(ValueError, match="box_reg_loss_type"):
        _dense_box_regression_loss(anchors, t, pred, gt_boxes, fg, "l2")


def test_matches_torchvision_box_coder():
    from torchvision.models.detection._utils import BoxCoder

    weights = (10.0, 10.0, 5.0, 5.0)
    ours = Box2BoxTransform(weights=weights)
    tv = BoxCoder(weights=weights, bbox_xform_clip=math.log(1000.0 / 16))
    src = _random_boxes(40, seed=3)
    dst = _random_boxes(40, seed=4)
    assert torch.allclose(ours.get_deltas(src, dst), tv.encode_single(dst, src), atol=1e-5)
    deltas = torch.randn(40, 4, generator=torch.Generator().manual_seed(5)) * 3
    assert torch.allclose(ours.apply_deltas(deltas, src), tv.decode_single(deltas, src), atol=1e-3)
