import dataclasses

import pytest
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn import functional as F

from d2lite.layers import (
    CNNBlockBase,
    Conv2d,
    FrozenBatchNorm2d,
    ShapeSpec,
    cat,
    cross_entropy,
    get_norm,
    nonzero_tuple,
    shapes_to_tensor,
)


def test_shape_spec_dataclass_defaults_and_equality():
    s = ShapeSpec(channels=256, stride=8)
    assert dataclasses.is_dataclass(s)
    assert (s.channels, s.height, s.width, s.stride) == (256, None, None, 8)
    assert ShapeSpec() == ShapeSpec(None, None, None, None)
    assert ShapeSpec(3) == ShapeSpec(channels=3)
    assert not isinstance(s, tuple)  # not a namedtuple (detectron2 PR #4253)


def test_shape_spec_inside_omegaconf():
    cfg = OmegaConf.create({"s": ShapeSpec(channels=3, stride=4), "shapes": {"p3": ShapeSpec(channels=8)}})
    assert isinstance(cfg.s, DictConfig)
    assert cfg.s.channels == 3 and cfg.s.stride == 4 and cfg.shapes.p3.channels == 8
    assert "channels: 3" in OmegaConf.to_yaml(cfg)
    assert OmegaConf.to_object(cfg)["s"] == ShapeSpec(channels=3, stride=4)
    cfg2 = OmegaConf.create({"s": ShapeSpec(channels=5)}, flags={"allow_objects": True})
    assert cfg2.s.channels == 5
    cfg2.s.channels = 7  # overridable like any config value
    assert cfg2.s.channels == 7


def test_cat_shortcut_and_concat():
    a = torch.rand(2, 3)
    assert cat([a]) is a
    out = cat([a, torch.ones(1, 3)], dim=0)
    assert out.shape == (3, 3) and torch.equal(out[2], torch.ones(3))
    assert cat([a, a], dim=1).shape == (2, 6)
    with pytest.raises(TypeError):
        cat(a)


def test_nonzero_tuple():
    x = torch.tensor([0, 3, 0, 5])
    (idx,) = nonzero_tuple(x)
    assert idx.tolist() == [1, 3]
    rows, cols = nonzero_tuple(torch.tensor([[0, 1], [1, 0]]))
    assert rows.tolist() == [0, 1] and cols.tolist() == [1, 0]
    (idx0,) = nonzero_tuple(torch.tensor(4))
    assert idx0.tolist() == [0]
    assert nonzero_tuple(torch.tensor(0))[0].numel() == 0


def test_shapes_to_tensor_and_cross_entropy():
    assert shapes_to_tensor([3, 4]).tolist() == [3, 4]
    logits = torch.zeros(0, 5, requires_grad=True)
    loss = cross_entropy(logits, torch.zeros(0, dtype=torch.long))
    assert loss.item() == 0.0
    loss.backward()
    x = torch.tensor([[2.0, 0.0]])
    assert cross_entropy(x, torch.tensor([0])).item() == pytest.approx(F.cross_entropy(x, torch.tensor([0])).item())


def test_conv2d_param_names_match_detectron2():
    conv = Conv2d(3, 4, kernel_size=3, padding=1, bias=False, norm=get_norm("BN", 4), activation=F.relu)
    assert list(conv.state_dict().keys()) == [
        "weight",
        "norm.weight",
        "norm.bias",
        "norm.running_mean",
        "norm.running_var",
        "norm.num_batches_tracked",
    ]
    frozen = Conv2d(3, 4, 1, bias=False, norm=get_norm("FrozenBN", 4))
    assert list(frozen.state_dict().keys()) == [
        "weight",
        "norm.weight",
        "norm.bias",
        "norm.running_mean",
        "norm.running_var",
    ]
    assert [n for n, _ in frozen.named_parameters()] == ["weight"]
    plain = Conv2d(3, 4, 1)
    assert list(plain.state_dict().keys()) == ["weight", "bias"]
    assert plain.norm is None and plain.activation is None


def test_conv2d_forward_applies_norm_then_activation():
    torch.manual_seed(0)
    gn = nn.GroupNorm(2, 4)
    conv = Conv2d(3, 4, kernel_size=3, stride=2, padding=1, norm=gn, activation=F.relu)
    x = torch.randn(2, 3, 9, 9)
    out = conv(x)
    expected = F.relu(gn(F.conv2d(x, conv.weight, conv.bias, stride=2, padding=1)))
    assert out.shape == (2, 4, 5, 5)
    assert torch.allclose(out, expected)
    assert (out >= 0).all() and (out == 0).any()
    # no norm / activation: exactly the convolution
    plain = Conv2d(3, 4, kernel_size=1)
    assert torch.allclose(plain(x), F.conv2d(x, plain.weight, plain.bias))
    # empty batch passes through
    assert Conv2d(3, 4, 3, padding=1)(torch.zeros(0, 3, 8, 8)).shape == (0, 4, 8, 8)


def test_conv2d_loads_state_dict_of_same_structure_strictly():
    src = Conv2d(2, 3, 3, bias=False, norm=get_norm("FrozenBN", 3))
    src.norm.running_mean.fill_(0.5)
    dst = Conv2d(2, 3, 3, bias=False, norm=get_norm("FrozenBN", 3))
    dst.load_state_dict(src.state_dict(), strict=True)
    assert torch.equal(dst.norm.running_mean, torch.full((3,), 0.5))


def test_cnn_block_base_freeze():
    class Block(CNNBlockBase):
        def __init__(self):
            super().__init__(3, 4, 2)
            self.conv = Conv2d(3, 4, 3, stride=2, padding=1, bias=False, norm=nn.BatchNorm2d(4))

    block = Block()
    assert (block.in_channels, block.out_channels, block.stride) == (3, 4, 2)
    assert block.freeze() is block
    assert isinstance(block.conv.norm, FrozenBatchNorm2d)
    assert all(not p.requires_grad for p in block.parameters())
