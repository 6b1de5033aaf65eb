import logging

import pytest
import torch

from d2lite.checkpoint.c2_model_loading import (
    align_and_update_state_dicts,
    convert_basic_c2_names,
    convert_c2_detectron_names,
)


def test_convert_basic_c2_names():
    c2 = [
        "conv1_w",
        "res_conv1_bn_s",
        "res_conv1_bn_b",
        "res2_0_branch2a_w",
        "res2_0_branch2a_bn_s",
        "res2_0_branch2a_bn_b",
        "res2_0_branch1_w",
        "res2_0_branch1_bn_s",
        "res3_1_branch2b_w",
        "res4_5_branch2c_bn_b",
        "fc1000_w",
        "res2_0_branch2a_bn_rm",
        "res2_0_branch2a_bn_riv",
        "res5_0_branch2a_gn_s",
    ]
    assert convert_basic_c2_names(c2) == [
        "stem.conv1.weight",
        "stem.conv1.norm.weight",
        "stem.conv1.norm.bias",
        "res2.0.conv1.weight",
        "res2.0.conv1.norm.weight",
        "res2.0.conv1.norm.bias",
        "res2.0.shortcut.weight",
        "res2.0.shortcut.norm.weight",
        "res3.1.conv2.weight",
        "res4.5.conv3.norm.bias",
        "fc1000.weight",
        "res2.0.conv1.norm.running_mean",
        "res2.0.conv1.norm.running_var",
        "res5.0.conv1.norm.weight",
    ]


def test_convert_c2_detectron_names_fpn_retinanet_and_heads():
    w = {
        k: torch.arange(8.0).reshape(8, 1)
        for k in [
            "fpn_inner_res5_2_sum_w",
            "fpn_inner_res4_5_sum_lateral_b",
            "fpn_res3_3_sum_w",
            "fpn_6_w",
            "fpn_7_b",
            "retnet_cls_conv_n0_fpn3_w",
            "retnet_bbox_conv_n3_fpn3_b",
            "retnet_cls_pred_fpn3_w",
            "retnet_bbox_pred_fpn3_b",
            "conv_rpn_fpn2_w",
            "rpn_bbox_pred_fpn2_b",
            "fc6_w",
            "cls_score_b",
            "bbox_pred_w",
        ]
    }
    new, orig = convert_c2_detectron_names(w)
    expected = {
        "fpn_lateral5.weight": "fpn_inner_res5_2_sum_w",
        "fpn_lateral4.bias": "fpn_inner_res4_5_sum_lateral_b",
        "fpn_output3.weight": "fpn_res3_3_sum_w",
        "top_block.p6.weight": "fpn_6_w",
        "top_block.p7.bias": "fpn_7_b",
        "head.cls_subnet.0.weight": "retnet_cls_conv_n0_fpn3_w",
        "head.bbox_subnet.6.bias": "retnet_bbox_conv_n3_fpn3_b",
        "head.cls_score.weight": "retnet_cls_pred_fpn3_w",
        "head.bbox_pred.bias": "retnet_bbox_pred_fpn3_b",
        "proposal_generator.rpn_head.conv.weight": "conv_rpn_fpn2_w",
        "proposal_generator.rpn_head.anchor_deltas.bias": "rpn_bbox_pred_fpn2_b",
        "box_head.fc1.weight": "fc6_w",
        "cls_score.bias": "cls_score_b",
        "bbox_pred.weight": "bbox_pred_w",
    }
    assert orig == expected
    # background class of cls_score moves from index 0 to the end
    assert new["cls_score.bias"].flatten().tolist() == [1, 2, 3, 4, 5, 6, 7, 0]
    # background box deltas (first 4 rows) are dropped
    assert new["bbox_pred.weight"].flatten().tolist() == [4, 5, 6, 7]
    # RetinaNet's sigmoid classifier has no background row: unchanged
    assert torch.equal(new["head.cls_score.weight"], w["retnet_cls_pred_fpn3_w"])


def _sd(*names, shape=(2,)):
    return {n: torch.full(shape, float(i)) for i, n in enumerate(names)}


def test_align_longest_suffix_and_dot_boundary(caplog):
    model = _sd(
        "backbone.bottom_up.stem.conv1.weight", "backbone.bottom_up.res2.0.conv1.weight", "head.my_conv1.weight"
    )
    ckpt = {
        "conv1.weight": torch.ones(2),
        "res2.0.conv1.weight": torch.full((2,), 2.0),
        "stem.conv1.weight": torch.full((2,), 3.0),
        "fc.weight": torch.zeros(5),
    }
    with caplog.at_level(logging.INFO, logger="d2lite.checkpoint.c2_model_loading"):
        out = align_and_update_state_dicts(model, ckpt, c2_conversion=False)
    # stem.conv1.weight (longest) wins over conv1.weight for the stem key
    assert torch.equal(out["backbone.bottom_up.stem.conv1.weight"], torch.full((2,), 3.0))
    assert torch.equal(out["backbone.bottom_up.res2.0.conv1.weight"], torch.full((2,), 2.0))
    # "my_conv1" does not end with ".conv1": no match
    assert "head.my_conv1.weight" not in out
    # unmatched checkpoint keys are kept so the loader reports them as unexpected
    assert set(out) == {
        "backbone.bottom_up.stem.conv1.weight",
        "backbone.bottom_up.res2.0.conv1.weight",
        "fc.weight",
        "conv1.weight",
    }
    text = caplog.text
    assert "Following weights matched with submodule backbone.bottom_up" in text
    assert "res2.0.conv1.weight" in text and "stem.conv1.weight" in text
    assert "head.my_conv1.weight" in text  # reported as not found


def test_align_ambiguity_raises():
    model = _sd("a.conv.weight", "b.conv.weight")
    with pytest.raises(ValueError, match="conv.weight"):
        align_and_update_state_dicts(model, {"conv.weight": torch.zeros(2)}, c2_conversion=False)


def test_align_shape_mismatch_is_logged_and_skipped(caplog):
    model = _sd("backbone.res2.0.conv1.weight", "backbone.res2.0.conv2.weight", shape=(4,))
    with caplog.at_level(logging.WARNING):
        out = align_and_update_state_dicts(
            model, {"res2_0_branch2a_w": torch.zeros(3), "res2_0_branch2b_w": torch.ones(4)}, c2_conversion=True
        )
    assert "backbone.res2.0.conv1.weight" not in out
    assert torch.equal(out["backbone.res2.0.conv2.weight"], torch.ones(4))
    assert set(out) == {"backbone.res2.0.conv2.weight", "res2.0.conv1.weight"}
    msg = caplog.text
    assert "res2_0_branch2a_w" in msg and "backbone.res2.0.conv1.weight" in msg
    assert "(3,)" in msg and "(4,)" in msg


def test_align_ambiguity_ignores_shape_mismatched_candidates():
    # as in detectron2: a wrong-shaped second match is skipped, not an ambiguity
    model = {"a.conv.weight": torch.zeros(2), "b.conv.weight": torch.zeros(5)}
    out = align_and_update_state_dicts(model, {"conv.weight": torch.ones(2)}, c2_conversion=False)
    assert set(out) == {"a.conv.weight"}


def test_align_with_c2_conversion_values():
    model = _sd(
        "backbone.bottom_up.stem.conv1.weight",
        "backbone.bottom_up.stem.conv1.norm.weight",
        "backbone.bottom_up.res2.0.conv1.norm.bias",
    )
    ckpt = {
        "conv1_w": torch.full((2,), 7.0),
        "res_conv1_bn_s": torch.full((2,), 8.0),
        "res2_0_branch2a_bn_b": torch.full((2,), 9.0),
    }
    out = align_and_update_state_dicts(model, ckpt, c2_conversion=True)
    assert out["backbone.bottom_up.stem.conv1.weight"][0] == 7.0
    assert out["backbone.bottom_up.stem.conv1.norm.weight"][0] == 8.0
    assert out["backbone.bottom_up.res2.0.conv1.norm.bias"][0] == 9.0
