"""MlvlPointGenerator and DistancePointBBoxCoder exact values."""

import pytest
import torch

from rtmdet import DistancePointBBoxCoder, MlvlPointGenerator


def test_points_offset_zero_with_stride():
    gen = MlvlPointGenerator([8, 16], offset=0.0)
    p8, p16 = gen.grid_priors([(2, 3), (1, 2)], with_stride=True)
    assert p8.tolist() == [
        [0, 0, 8, 8],
        [8, 0, 8, 8],
        [16, 0, 8, 8],
        [0, 8, 8, 8],
        [8, 8, 8, 8],
        [16, 8, 8, 8],
    ]
    assert p16.tolist() == [[0, 0, 16, 16], [16, 0, 16, 16]]
    assert gen.grid_priors([(1, 1), (1, 1)])[0].shape == (1, 2)
    # mmdetection's default offset 0.5 puts points at cell centres
    assert MlvlPointGenerator([8]).grid_priors([(1, 2)])[0].tolist() == [[4, 4], [12, 4]]
    with pytest.raises(ValueError, match="2 strides"):
        gen.grid_priors([(2, 2)])


def test_valid_flags():
    gen = MlvlPointGenerator([8, 16], offset=0.0)
    f8, f16 = gen.valid_flags([(2, 3), (1, 2)], (9, 9))
    # ceil(9 / 8) = 2 rows and 2 columns valid at stride 8; ceil(9 / 16) = 1 at stride 16
    assert f8.tolist() == [True, True, False, True, True, False]
    assert f16.tolist() == [True, False]
    assert all(f.all() for f in gen.valid_flags([(2, 3), (1, 2)], (16, 24)))


def test_coder_encode_decode_and_clamp():
    coder = DistancePointBBoxCoder()
    points = torch.tensor([[8.0, 8.0, 8.0, 8.0], [16.0, 0.0, 8.0, 8.0]])
    boxes = torch.tensor([[2.0, 3.0, 20.0, 30.0], [10.0, -4.0, 17.0, 5.0]])
    d = coder.encode(points, boxes)
    assert d.tolist() == [[6, 5, 12, 22], [6, 4, 1, 5]]  # left, top, right, bottom
    assert torch.equal(coder.decode(points, d), boxes)
    # clamp x to [0, w], y to [0, h] with max_shape (h, w)
    assert coder.decode(points, d, max_shape=(20, 18)).tolist() == [[2, 3, 18, 20], [10, 0, 17, 5]]
    assert DistancePointBBoxCoder(clip_border=False).decode(points, d, max_shape=(20, 18)).tolist() == boxes.tolist()
    assert coder.encode(points, boxes, max_dis=5.0).max() == pytest.approx(4.9)
    with pytest.raises(ValueError, match="encode"):
        coder.encode(points, boxes[:1])


def test_grid_priors_cached_per_sizes():
    gen = MlvlPointGenerator([8, 16], offset=0.0)
    a = gen.grid_priors([(4, 5), (2, 3)], with_stride=True)
    b = gen.grid_priors([(4, 5), (2, 3)], with_stride=True)
    assert all(x is y for x, y in zip(a, b))
    c = gen.grid_priors([(4, 5), (2, 3)], with_stride=False)  # another key
    assert c[0].shape == (20, 2)
    fresh = MlvlPointGenerator([8, 16], offset=0.0).grid_priors([(4, 5), (2, 3)], with_stride=True)
    assert all(torch.equal(x, y) for x, y in zip(a, fresh))
