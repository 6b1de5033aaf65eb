import math

import pytest
import torch

from d2lite.modeling.anchor_generator import DefaultAnchorGenerator


def test_small_grid_hand_computed():
    ag = DefaultAnchorGenerator(sizes=[[32]], aspect_ratios=[[0.5, 1, 2]], strides=[8], offset=0.0)
    assert ag.num_anchors == [3] and ag.num_cell_anchors == [3] and ag.box_dim == 4
    (anchors,) = ag([torch.zeros(1, 1, 2, 2)])
    s = 16 * math.sqrt(2)  # half of sqrt(32**2 / 0.5)
    t = 8 * math.sqrt(2)  # half of its height 0.5 * 2 * s
    cell = torch.tensor([[-s, -t, s, t], [-16, -16, 16, 16], [-t, -s, t, s]])
    # centers row-major with x fastest: (0,0), (8,0), (0,8), (8,8)
    expected = torch.cat([cell + torch.tensor([x, y, x, y], dtype=torch.float32) for y in (0, 8) for x in (0, 8)])
    assert anchors.tensor.shape == (12, 4)
    assert torch.allclose(anchors.tensor, expected, atol=1e-4)


def test_offset_and_size_major_order():
    ag = DefaultAnchorGenerator(sizes=[32, 64], aspect_ratios=[1.0, 4.0], strides=[16])  # offset 0.5
    (anchors,) = ag([torch.zeros(1, 1, 1, 2)])
    a = anchors.tensor
    # first location center (8, 8); order: (32, 1), (32, 4), (64, 1), (64, 4)
    assert torch.allclose(a[0], torch.tensor([-8.0, -8.0, 24.0, 24.0]))
    assert torch.allclose(a[1], torch.tensor([0.0, -24.0, 16.0, 40.0]))  # w=16, h=64
    assert torch.allclose(a[2], torch.tensor([-24.0, -24.0, 40.0, 40.0]))
    assert torch.allclose(a[5], a[1] + torch.tensor([16.0, 0.0, 16.0, 0.0]))  # second location, x += 16


def test_retinanet_config_levels():
    sizes = [[x, x * 2 ** (1.0 / 3), x * 2 ** (2.0 / 3)] for x in [32, 64, 128, 256, 512]]
    ag = DefaultAnchorGenerator(sizes=sizes, aspect_ratios=[0.5, 1.0, 2.0], strides=[8, 16, 32, 64, 128], offset=0.0)
    assert ag.num_anchors == [9] * 5
    feats = [torch.zeros(1, 1, 64 // s, 96 // s) for s in (8, 16, 32)] + [torch.zeros(1, 1, 1, 1)] * 2
    anchors = ag(feats)
    assert [len(a) for a in anchors] == [8 * 12 * 9, 4 * 6 * 9, 2 * 3 * 9, 9, 9]
    # the 4th anchor of level 0 is size 32*2^(1/3), ratio 0.5... check its area
    area = anchors[0].area()[4]
    assert area.item() == pytest.approx((32 * 2 ** (1.0 / 3)) ** 2, rel=1e-5)
    # anchors are not part of the state dict
    assert len(ag.state_dict()) == 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="offset"):
        DefaultAnchorGenerator(sizes=[[32]], aspect_ratios=[[1.0]], strides=[8], offset=1.0)
    with pytest.raises(ValueError, match="sizes"):
        DefaultAnchorGenerator(sizes=[[32], [64], [128]], aspect_ratios=[[1.0]], strides=[8, 16])
    ag = DefaultAnchorGenerator(sizes=[[32], [64]], aspect_ratios=[[1.0]], strides=[8, 16])
    with pytest.raises(ValueError, match="2 levels"):
        ag([torch.zeros(1, 1, 2, 2)])


def test_anchors_are_cached_per_feature_map_size():
    gen = DefaultAnchorGenerator(sizes=[[32.0]], aspect_ratios=[[1.0]], strides=[8, 16])
    feats = [torch.zeros(1, 1, 4, 5), torch.zeros(1, 1, 2, 3)]
    first = gen(feats)
    again = gen([torch.zeros(2, 3, 4, 5), torch.zeros(2, 3, 2, 3)])  # same sizes, other batch/channels
    assert all(a.tensor is b.tensor for a, b in zip(first, again))
    other = gen([torch.zeros(1, 1, 6, 5), torch.zeros(1, 1, 3, 3)])
    assert other[0].tensor.shape == (30, 4) and other[0].tensor is not first[0].tensor
    # the cached values are the computed ones
    fresh = DefaultAnchorGenerator(sizes=[[32.0]], aspect_ratios=[[1.0]], strides=[8, 16])
    assert all(torch.equal(a.tensor, b.tensor) for a, b in zip(fresh(feats), first))
    for h in range(20):  # bounded: least recently used sizes are dropped
        gen([torch.zeros(1, 1, h + 10, 5), torch.zeros(1, 1, 2, 3)])
    assert len(gen._anchor_cache) == DefaultAnchorGenerator._CACHE_SIZE
