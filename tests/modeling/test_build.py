"""Building models from detectron2's YAML configs: registries, from_config of each component,
and equality with the LazyConfig files."""

import logging

import pytest
import torch
from helpers import DETECTRON2_CONFIGS, REPO_ROOT, assert_same_detector

from d2lite.config import LazyConfig, get_cfg, instantiate
from d2lite.layers import ShapeSpec
from d2lite.modeling import (
    ANCHOR_GENERATOR_REGISTRY,
    BACKBONE_REGISTRY,
    FPN,
    META_ARCH_REGISTRY,
    BasicBlock,
    BottleneckBlock,
    DefaultAnchorGenerator,
    ResNet,
    RetinaNet,
    RetinaNetHead,
    build_anchor_generator,
    build_backbone,
    build_model,
)
from d2lite.modeling.backbone.fpn import LastLevelMaxPool, LastLevelP6P7

R50_1X_YAML = DETECTRON2_CONFIGS / "COCO-Detection" / "retinanet_R_50_FPN_1x.yaml"
R50_1X_PY = REPO_ROOT / "configs" / "COCO-Detection" / "retinanet_R_50_FPN_1x.py"


def _cfg(*opts, yaml=R50_1X_YAML):
    cfg = get_cfg()
    cfg.merge_from_file(str(yaml))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", *opts])
    return cfg


def test_registries_hold_detectron2_names():
    assert META_ARCH_REGISTRY.get("RetinaNet") is RetinaNet
    assert ANCHOR_GENERATOR_REGISTRY.get("DefaultAnchorGenerator") is DefaultAnchorGenerator
    assert {"build_resnet_backbone", "build_resnet_fpn_backbone", "build_retinanet_resnet_fpn_backbone"} <= {
        name for name, _ in BACKBONE_REGISTRY
    }


def test_unknown_registered_name_lists_the_registered_ones():
    cfg = get_cfg()  # detectron2's default META_ARCHITECTURE is GeneralizedRCNN, which d2lite lacks
    cfg.MODEL.DEVICE = "cpu"
    with pytest.raises(KeyError, match="GeneralizedRCNN.*META_ARCH.*Registered: RetinaNet"):
        build_model(cfg)
    cfg = _cfg("MODEL.BACKBONE.NAME", "build_retinanet_resnet_fpn_backbon")
    with pytest.raises(KeyError, match="Did you mean 'build_retinanet_resnet_fpn_backbone'"):
        build_backbone(cfg)


def test_yaml_builds_the_lazyconfig_retinanet():
    """detectron2's retinanet_R_50_FPN_1x.yaml (+ Base-RetinaNet.yaml) through build_model and
    configs/COCO-Detection/retinanet_R_50_FPN_1x.py through instantiate are one model."""
    from_yaml = build_model(_cfg())
    from_py = instantiate(LazyConfig.load(str(R50_1X_PY)).model)
    assert isinstance(from_yaml, RetinaNet)
    assert next(from_yaml.parameters()).device.type == "cpu"
    # the 1x recipe freezes the stem and res2 (FREEZE_AT=2 / freeze_at=2)
    frozen = {k for k, p in from_yaml.named_parameters() if not p.requires_grad}
    assert frozen and all(k.startswith(("backbone.bottom_up.stem.", "backbone.bottom_up.res2.")) for k in frozen)
    assert_same_detector(from_yaml, from_py, num_classes=80)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_device_without_cuda_is_a_clear_error():
    cfg = get_cfg()
    cfg.merge_from_file(str(R50_1X_YAML))
    with pytest.raises(RuntimeError, match="MODEL.DEVICE='cuda'.*set MODEL.DEVICE to 'cpu'"):
        build_model(cfg)


def test_from_config_keywords_override_the_config():
    cfg = _cfg("MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64")
    model = RetinaNet(cfg, test_score_thresh=0.3, num_classes=80)
    assert model.test_score_thresh == 0.3
    assert RetinaNet.from_config(cfg)["test_score_thresh"] == 0.05


def test_resnet_backbone_from_config():
    cfg = _cfg(
        "MODEL.BACKBONE.NAME",
        "build_resnet_backbone",
        "MODEL.RESNETS.DEPTH",
        "18",
        "MODEL.RESNETS.RES2_OUT_CHANNELS",
        "64",
        "MODEL.RESNETS.OUT_FEATURES",
        '["res2", "res4"]',
        "MODEL.BACKBONE.FREEZE_AT",
        "1",
        "MODEL.RESNETS.NORM",
        "BN",
    )
    backbone = build_backbone(cfg)
    assert isinstance(backbone, ResNet)
    assert backbone.output_shape() == {
        "res2": ShapeSpec(channels=64, stride=4),
        "res4": ShapeSpec(channels=256, stride=16),
    }
    assert [type(b) for b in backbone.res2] == [BasicBlock, BasicBlock] and not hasattr(backbone, "res5")
    assert not any(p.requires_grad for p in backbone.stem.parameters())
    assert all(p.requires_grad for p in backbone.res2.parameters())
    assert isinstance(backbone.res2[0].conv1.norm, torch.nn.BatchNorm2d)


def test_resnext_backbone_widths():
    cfg = _cfg(
        "MODEL.BACKBONE.NAME",
        "build_resnet_backbone",
        "MODEL.RESNETS.NUM_GROUPS",
        "32",
        "MODEL.RESNETS.WIDTH_PER_GROUP",
        "4",
        "MODEL.RESNETS.OUT_FEATURES",
        '["res5"]',
        "MODEL.RESNETS.RES5_DILATION",
        "2",
    )
    backbone = build_backbone(cfg)
    block = backbone.res3[0]
    assert isinstance(block, BottleneckBlock)
    assert block.conv2.groups == 32 and block.conv2.out_channels == 32 * 4 * 2  # widths double per stage
    assert backbone.res5[0].conv2.dilation == (2, 2)
    assert backbone.output_shape()["res5"] == ShapeSpec(channels=2048, stride=16)  # dilated res5 keeps stride 16


@pytest.mark.parametrize(
    "opts, match",
    [
        (["MODEL.RESNETS.DEFORM_ON_PER_STAGE", "[False, True, False, False]"], "DEFORM_ON_PER_STAGE"),
        (["MODEL.RESNETS.DEPTH", "18"], "RES2_OUT_CHANNELS must be 64 for R18"),
        (["MODEL.RESNETS.DEPTH", "42"], "MODEL.RESNETS.DEPTH must be one of"),
        (["MODEL.RESNETS.OUT_FEATURES", '["res3", "res4"]'], "no 'res5'"),
    ],
)
def test_backbone_config_errors_name_the_key(opts, match):
    with pytest.raises(ValueError, match=match):
        build_backbone(_cfg(*opts))


def test_fpn_backbones():
    retina = build_backbone(_cfg("MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64"))
    assert isinstance(retina, FPN) and isinstance(retina.top_block, LastLevelP6P7)
    assert list(retina.output_shape()) == ["p3", "p4", "p5", "p6", "p7"]
    assert retina.top_block.p6.in_channels == 512  # res5 of R18
    rcnn = build_backbone(
        _cfg(
            "MODEL.BACKBONE.NAME",
            "build_resnet_fpn_backbone",
            "MODEL.RESNETS.OUT_FEATURES",
            '["res2", "res3", "res4", "res5"]',
            "MODEL.FPN.IN_FEATURES",
            '["res2", "res3", "res4", "res5"]',
            "MODEL.FPN.NORM",
            "GN",
        )
    )
    assert isinstance(rcnn.top_block, LastLevelMaxPool)
    assert list(rcnn.output_shape()) == ["p2", "p3", "p4", "p5", "p6"]
    assert isinstance(rcnn.fpn_lateral2.norm, torch.nn.GroupNorm)


def test_anchor_generator_and_head_from_config():
    cfg = _cfg()
    shapes = [ShapeSpec(channels=256, stride=s) for s in (8, 16, 32, 64, 128)]
    anchors = build_anchor_generator(cfg, shapes)
    assert anchors.strides == [8, 16, 32, 64, 128] and anchors.offset == 0.0
    assert anchors.num_cell_anchors == [9] * 5
    # Base-RetinaNet.yaml's eval'd sizes: 3 octave scales of 32 px at P3, area 32**2 for the first anchor
    cell = list(anchors.cell_anchors)[0]
    assert cell[1].tolist() == pytest.approx([-16.0, -16.0, 16.0, 16.0])
    assert (cell[4, 2] - cell[4, 0]).item() == pytest.approx(32 * 2 ** (1 / 3))
    head = RetinaNetHead(cfg, shapes)
    assert head.cls_score.out_channels == 9 * 80 and head.bbox_pred.out_channels == 9 * 4
    assert len([m for m in head.cls_subnet if isinstance(m, torch.nn.Conv2d)]) == 4
    assert head.cls_score.bias[0].item() == pytest.approx(-4.59512, abs=1e-5)  # -log(99), PRIOR_PROB 0.01
    cfg = _cfg("MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", "[[1.0], [1.0], [0.5, 1.0], [1.0], [1.0]]")
    with pytest.raises(ValueError, match="same number of anchors at every level"):
        RetinaNetHead(cfg, shapes)


def test_retinanet_in_features_must_exist():
    with pytest.raises(ValueError, match=r"MODEL.RETINANET.IN_FEATURES has \['p8'\]"):
        build_model(_cfg("MODEL.RETINANET.IN_FEATURES", '["p3", "p8"]'))


def test_out_of_scope_keys_do_not_change_the_model(tmp_path, caplog):
    """A detectron2 YAML with R-CNN keys loads (one warning) and builds the same RetinaNet."""
    yaml = tmp_path / "with_rcnn_keys.yaml"
    yaml.write_text(
        f'_BASE_: "{R50_1X_YAML}"\n'
        "MODEL:\n  MASK_ON: True\n  ROI_HEADS:\n    NUM_CLASSES: 3\n  RPN:\n    IN_FEATURES: [p3]\n"
    )
    with caplog.at_level(logging.WARNING, logger="d2lite.config.config"):
        cfg = _cfg(yaml=yaml)
    warnings = [r.getMessage() for r in caplog.records if "outside d2lite's scope" in r.getMessage()]
    assert len(warnings) == 1 and "MODEL.MASK_ON, MODEL.ROI_HEADS, MODEL.RPN" in warnings[0]
    assert "ROI_HEADS" not in cfg.MODEL and cfg.MODEL.RETINANET.NUM_CLASSES == 80
