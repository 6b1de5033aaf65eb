import pytest
import torch
from torch import nn

from d2lite.layers import FrozenBatchNorm2d, ShapeSpec
from d2lite.modeling.backbone import FPN, BasicBlock, BasicStem, BottleneckBlock, ResNet
from d2lite.modeling.backbone.fpn import LastLevelMaxPool, LastLevelP6P7


def _r18(out_features=("res2", "res3", "res4", "res5"), freeze_at=0, norm="BN"):
    return ResNet(
        stem=BasicStem(in_channels=3, out_channels=64, norm=norm),
        stages=ResNet.make_default_stages(18, norm=norm),
        out_features=list(out_features),
        freeze_at=freeze_at,
    )


def test_resnet18_shapes_and_output_shape():
    model = _r18().eval()
    assert model.output_shape() == {
        "res2": ShapeSpec(channels=64, stride=4),
        "res3": ShapeSpec(channels=128, stride=8),
        "res4": ShapeSpec(channels=256, stride=16),
        "res5": ShapeSpec(channels=512, stride=32),
    }
    out = model(torch.zeros(1, 3, 64, 96))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "res2": (1, 64, 16, 24),
        "res3": (1, 128, 8, 12),
        "res4": (1, 256, 4, 6),
        "res5": (1, 512, 2, 3),
    }
    # R18: res2 has no projection shortcut, res3 does
    assert model.res2[0].shortcut is None and model.res3[0].shortcut is not None
    with pytest.raises(ValueError, match="N, C, H, W"):
        model(torch.zeros(3, 64, 64))


def test_resnet_drops_unused_stages_and_classifier():
    model = _r18(out_features=["res3"])
    assert not hasattr(model, "res4") and model.stage_names == ("res2", "res3")
    cls = ResNet(BasicStem(norm="BN"), ResNet.make_default_stages(18), num_classes=10, out_features=["linear"])
    assert cls(torch.zeros(2, 3, 32, 32))["linear"].shape == (2, 10)
    with pytest.raises(ValueError, match="res6"):
        _r18(out_features=["res6"])


def test_freeze_at():
    model = _r18(freeze_at=2)
    assert all(not p.requires_grad for p in model.stem.parameters())
    assert all(not p.requires_grad for p in model.res2.parameters())
    assert all(p.requires_grad for p in model.res3.parameters())
    assert isinstance(model.stem.conv1.norm, FrozenBatchNorm2d)
    assert isinstance(model.res2[1].conv2.norm, FrozenBatchNorm2d)
    assert isinstance(model.res3[0].conv1.norm, nn.BatchNorm2d)
    model = _r18(freeze_at=1)
    assert isinstance(model.stem.conv1.norm, FrozenBatchNorm2d)
    assert isinstance(model.res2[0].conv1.norm, nn.BatchNorm2d)
    assert all(p.requires_grad for p in model.res2.parameters())


def test_bottleneck_stride_placement_and_make_stage():
    b = BottleneckBlock(256, 512, bottleneck_channels=128, stride=2, stride_in_1x1=True, norm="FrozenBN")
    assert b.conv1.stride == (2, 2) and b.conv2.stride == (1, 1)
    b = BottleneckBlock(256, 512, bottleneck_channels=128, stride=2, num_groups=32, dilation=2)
    assert b.conv1.stride == (1, 1) and b.conv2.stride == (2, 2)
    assert b.conv2.groups == 32 and b.conv2.dilation == (2, 2) and b.conv2.padding == (2, 2)
    assert b(torch.zeros(1, 256, 16, 16)).shape == (1, 512, 8, 8)

    blocks = ResNet.make_stage(BasicBlock, 3, in_channels=16, out_channels=32, stride_per_block=[2, 1, 1], norm="BN")
    assert [blk.stride for blk in blocks] == [2, 1, 1]
    assert [blk.in_channels for blk in blocks] == [16, 32, 32]
    with pytest.raises(ValueError, match="stride_per_block"):
        ResNet.make_stage(BasicBlock, 2, in_channels=16, out_channels=32, stride_per_block=[2])
    with pytest.raises(ValueError, match="depth"):
        ResNet.make_default_stages(20)


def test_resnet50_stage_names_and_channels():
    stages = ResNet.make_default_stages(50, stride_in_1x1=True, norm="FrozenBN")
    assert [len(s) for s in stages] == [3, 4, 6, 3]
    assert stages[1][0].conv1.stride == (2, 2)  # stride_in_1x1
    assert stages[3][0].conv2.in_channels == 512 and stages[3][-1].out_channels == 2048


def test_fpn_p3_p7_retinanet_style():
    bottom_up = _r18(out_features=["res3", "res4", "res5"])
    fpn = FPN(bottom_up, ["res3", "res4", "res5"], 32, top_block=LastLevelP6P7(512, 32)).eval()
    assert fpn.size_divisibility == 32
    assert fpn.padding_constraints == {"square_size": 0}
    shapes = fpn.output_shape()
    assert list(shapes) == ["p3", "p4", "p5", "p6", "p7"]
    assert [s.stride for s in shapes.values()] == [8, 16, 32, 64, 128]
    out = fpn(torch.zeros(1, 3, 128, 64))
    assert [tuple(v.shape[-2:]) for v in out.values()] == [(16, 8), (8, 4), (4, 2), (2, 1), (1, 1)]
    names = {k for k, _ in fpn.named_parameters() if not k.startswith("bottom_up.")}
    assert names == {
        f"{m}{s}.{p}" for m in ("fpn_lateral", "fpn_output") for s in (3, 4, 5) for p in ("weight", "bias")
    } | {f"top_block.p{s}.{p}" for s in (6, 7) for p in ("weight", "bias")}


def test_fpn_top_block_from_p5_and_maxpool_and_avg():
    bottom_up = _r18()
    fpn = FPN(bottom_up, ["res3", "res4", "res5"], 16, top_block=LastLevelP6P7(16, 16, in_feature="p5"))
    x = torch.randn(1, 3, 64, 64)
    out = fpn(x)
    assert out["p6"].shape == (1, 16, 1, 1) and out["p7"].shape == (1, 16, 1, 1)
    expected_p6 = fpn.top_block.p6(out["p5"])
    assert torch.allclose(out["p6"], expected_p6, atol=1e-6)

    fpn = FPN(
        bottom_up, ["res2", "res3", "res4", "res5"], 16, top_block=LastLevelMaxPool(), fuse_type="avg", square_pad=128
    )
    assert fpn.padding_constraints == {"square_size": 128}
    out = fpn(torch.randn(1, 3, 64, 64))
    assert list(out) == ["p2", "p3", "p4", "p5", "p6"]
    assert torch.equal(out["p6"], out["p5"][:, :, ::2, ::2])


def test_fpn_bad_input():
    bottom_up = _r18()
    with pytest.raises(ValueError, match="log2 contiguous"):
        FPN(bottom_up, ["res3", "res5"], 16)
    with pytest.raises(ValueError, match="fuse_type"):
        FPN(bottom_up, ["res3", "res4"], 16, fuse_type="max")
    with pytest.raises(ValueError, match="res6"):
        FPN(bottom_up, ["res5", "res6"], 16)


def test_fpn_top_block_in_feature_must_exist():
    # Without res5 in the bottom-up outputs, P6 has no input: say so at construction.
    bottom_up = _r18(out_features=("res3", "res4"))
    with pytest.raises(ValueError, match="top_block.in_feature 'res5'"):
        FPN(bottom_up, ["res3", "res4"], 16, top_block=LastLevelP6P7(512, 16))
    with pytest.raises(ValueError, match="top_block.in_feature 'p5'"):
        FPN(bottom_up, ["res3", "res4"], 16, top_block=LastLevelP6P7(16, 16, in_feature="p5"))
