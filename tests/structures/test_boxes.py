import math

import numpy as np
import pytest
import torch

from d2lite.structures import (
    Boxes,
    BoxMode,
    matched_pairwise_iou,
    pairwise_intersection,
    pairwise_ioa,
    pairwise_iou,
)

A = [0.0, 0.0, 10.0, 10.0]  # area 100
B = [5.0, 5.0, 15.0, 15.0]  # area 100, overlaps A by 5x5 = 25
C = [20.0, 20.0, 30.0, 30.0]  # disjoint from A and B
D = [3.0, 3.0, 3.0, 8.0]  # zero width, inside A
E = [0.0, 0.0, 5.0, 10.0]  # left half of A, area 50


def test_pairwise_intersection_iou_ioa_hand_values():
    b1 = Boxes([A, B])
    b2 = Boxes([B, C, E])
    inter = pairwise_intersection(b1, b2)
    assert torch.allclose(inter, torch.tensor([[25.0, 0.0, 50.0], [100.0, 0.0, 0.0]]))
    iou = pairwise_iou(b1, b2)
    expected_iou = torch.tensor([[25 / 175, 0.0, 50 / 100], [1.0, 0.0, 0.0]])
    assert torch.allclose(iou, expected_iou)
    # IoA divides by the area of boxes2.
    ioa = pairwise_ioa(b1, b2)
    assert torch.allclose(ioa, torch.tensor([[25 / 100, 0.0, 50 / 50], [1.0, 0.0, 0.0]]))
    ioa_rev = pairwise_ioa(Boxes([E]), Boxes([A]))
    assert torch.allclose(ioa_rev, torch.tensor([[0.5]]))


def test_iou_of_degenerate_and_disjoint_boxes_is_zero_not_nan():
    boxes = Boxes([A, C, D])
    iou = pairwise_iou(boxes, Boxes([D, D]))
    assert torch.isfinite(iou).all()
    assert torch.equal(iou, torch.zeros(3, 2))
    assert torch.equal(pairwise_ioa(boxes, Boxes([D])), torch.zeros(3, 1))
    assert torch.equal(pairwise_iou(Boxes([A]), Boxes([C])), torch.zeros(1, 1))
    m = matched_pairwise_iou(Boxes([D, A]), Boxes([D, C]))
    assert torch.equal(m, torch.zeros(2))


def test_pairwise_iou_empty():
    assert pairwise_iou(Boxes(torch.zeros(0, 4)), Boxes([A])).shape == (0, 1)
    assert pairwise_iou(Boxes([A, B]), Boxes([])).shape == (2, 0)


def test_matched_pairwise_iou():
    m = matched_pairwise_iou(Boxes([A, A, B]), Boxes([B, C, B]))
    assert torch.allclose(m, torch.tensor([1 / 7, 0.0, 1.0]))
    with pytest.raises(ValueError, match="equal length"):
        matched_pairwise_iou(Boxes([A]), Boxes([A, B]))


def test_area_centers_scale():
    b = Boxes([[1.0, 2.0, 4.0, 8.0], [0.0, 0.0, 10.0, 20.0]])
    assert torch.equal(b.area(), torch.tensor([18.0, 200.0]))
    assert torch.equal(b.get_centers(), torch.tensor([[2.5, 5.0], [5.0, 10.0]]))
    b.scale(2.0, 0.5)
    assert torch.equal(b.tensor, torch.tensor([[2.0, 1.0, 8.0, 4.0], [0.0, 0.0, 20.0, 10.0]]))


def test_clip():
    b = Boxes([[-5.0, -3.0, 25.0, 12.0], [2.0, 3.0, 4.0, 5.0], [30.0, 1.0, 40.0, 2.0]])
    b.clip((10, 20))  # (height, width)
    assert torch.equal(b.tensor, torch.tensor([[0.0, 0.0, 20.0, 10.0], [2.0, 3.0, 4.0, 5.0], [20.0, 1.0, 20.0, 2.0]]))
    with pytest.raises(FloatingPointError):
        Boxes([[0.0, float("nan"), 1.0, 1.0]]).clip((10, 10))


def test_nonempty():
    b = Boxes([[0, 0, 5, 5], [0, 0, 0, 5], [0, 0, 5, 0.5], [5, 5, 4, 6]])
    assert b.nonempty().tolist() == [True, False, True, False]
    assert b.nonempty(threshold=1).tolist() == [True, False, False, False]


def test_inside_box():
    b = Boxes([[0, 0, 19, 9], [-1, 0, 5, 5], [0, 0, 20, 5], [0, 0, 5, 11]])
    assert b.inside_box((10, 20)).tolist() == [True, False, False, False]
    assert b.inside_box((10, 20), boundary_threshold=1).tolist() == [True, True, True, False]
    assert b.inside_box((10, 20), boundary_threshold=2).tolist() == [True, True, True, True]


def test_constructor_dtype_and_shapes():
    b = Boxes(np.array([[1, 2, 3, 4]], dtype=np.int64))
    assert b.tensor.dtype == torch.float32
    assert Boxes(torch.tensor([[1, 2, 3, 4]], dtype=torch.float64)).tensor.dtype == torch.float32
    assert Boxes([]).tensor.shape == (0, 4)
    assert Boxes(torch.zeros(0)).tensor.shape == (0, 4)
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        Boxes(torch.zeros(3, 5))
    with pytest.raises(ValueError):
        Boxes(torch.zeros(4))


def test_getitem_len_iter_cat_clone():
    b = Boxes([A, B, C])
    assert len(b) == 3
    one = b[1]
    assert isinstance(one, Boxes) and one.tensor.tolist() == [B]
    assert b[-1].tensor.tolist() == [C]
    assert b[1:].tensor.tolist() == [B, C]
    masked = b[torch.tensor([True, False, True])]
    assert isinstance(masked, Boxes) and masked.tensor.tolist() == [A, C]
    assert b[torch.tensor([2, 0])].tensor.tolist() == [C, A]
    assert len(b[torch.zeros(3, dtype=torch.bool)]) == 0
    with pytest.raises(IndexError):
        b[torch.tensor(1)]  # a 0-dim index gives a vector, not boxes
    assert [t.tolist() for t in b] == [A, B, C]

    cat = Boxes.cat([b, Boxes([D]), Boxes([])])
    assert cat.tensor.tolist() == [A, B, C, D]
    assert len(Boxes.cat([])) == 0
    with pytest.raises(TypeError):
        Boxes.cat([b, torch.zeros(1, 4)])

    c = b.clone()
    c.tensor[0, 0] = 100
    assert b.tensor[0, 0] == 0
    assert b.to("cpu").device == torch.device("cpu")


def test_box_mode_convert_all_types():
    xywh = [1.0, 2.0, 3.0, 4.0]
    xyxy = [1.0, 2.0, 4.0, 6.0]
    out = BoxMode.convert(xywh, BoxMode.XYWH_ABS, BoxMode.XYXY_ABS)
    assert isinstance(out, list) and out == xyxy
    out = BoxMode.convert(tuple(xyxy), BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)
    assert isinstance(out, tuple) and out == tuple(xywh)

    arr = np.array([xywh, [0.0, 0.0, 10.0, 5.0]])
    out = BoxMode.convert(arr, BoxMode.XYWH_ABS, BoxMode.XYXY_ABS)
    assert isinstance(out, np.ndarray)
    np.testing.assert_allclose(out, [xyxy, [0.0, 0.0, 10.0, 5.0]])
    np.testing.assert_allclose(arr[0], xywh)  # input not modified

    t = torch.tensor([xyxy])
    out = BoxMode.convert(t, BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)
    assert isinstance(out, torch.Tensor) and out.tolist() == [xywh]
    assert t.tolist() == [xyxy]
    back = BoxMode.convert(out, BoxMode.XYWH_ABS, BoxMode.XYXY_ABS)
    assert back.tolist() == [xyxy]
    # int modes (as stored in dataset dicts) are accepted
    assert BoxMode.convert(xywh, 1, 0) == xyxy
    assert BoxMode.convert(xywh, BoxMode.XYWH_ABS, BoxMode.XYWH_ABS) is xywh


def test_box_mode_relative_and_bad_input():
    assert int(BoxMode.XYXY_ABS) == 0 and int(BoxMode.XYWH_ABS) == 1
    with pytest.raises(NotImplementedError, match="relative"):
        BoxMode.convert([0, 0, 1, 1], BoxMode.XYXY_REL, BoxMode.XYXY_ABS)
    with pytest.raises(NotImplementedError, match="relative"):
        BoxMode.convert([0, 0, 1, 1], BoxMode.XYXY_ABS, BoxMode.XYWH_REL)
    with pytest.raises(ValueError, match="4 numbers"):
        BoxMode.convert([0, 0, 1], BoxMode.XYWH_ABS, BoxMode.XYXY_ABS)
    with pytest.raises(ValueError):
        BoxMode.convert(torch.zeros(2, 3), BoxMode.XYWH_ABS, BoxMode.XYXY_ABS)


def test_iou_values_against_formula_random():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(6, 2, generator=g) * 50
    wh = torch.rand(6, 2, generator=g) * 30 + 1
    t = torch.cat([xy, xy + wh], dim=1)
    iou = pairwise_iou(Boxes(t), Boxes(t))
    for i in range(6):
        for j in range(6):
            a, b = t[i].tolist(), t[j].tolist()
            iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
            ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
            inter = iw * ih
            union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
            assert math.isclose(iou[i, j].item(), inter / union, rel_tol=1e-5, abs_tol=1e-6)


def test_pairwise_point_box_distance():
    from d2lite.structures import pairwise_point_box_distance

    points = torch.tensor([[2.0, 3.0], [12.0, 1.0]])
    d = pairwise_point_box_distance(points, Boxes([A, B]))
    assert d.shape == (2, 2, 4)
    assert d[0, 0].tolist() == [2.0, 3.0, 8.0, 7.0]
    assert d[0, 1].tolist() == [-3.0, -2.0, 13.0, 12.0]
    assert d[1, 0].tolist() == [12.0, 1.0, -2.0, 9.0]


def test_box_mode_keeps_int_lists():
    out = BoxMode.convert([1, 2, 3, 4], BoxMode.XYWH_ABS, BoxMode.XYXY_ABS)
    assert out == [1, 2, 4, 6] and all(isinstance(v, int) for v in out)
