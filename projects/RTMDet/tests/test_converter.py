"""mmdetection RTMDet checkpoint -> d2lite RTMDet, on a checkpoint built by the test
in mmdetection's layout ({"meta", "state_dict", "ema_state_dict"}) and key names."""

import pytest
import torch
from rtmdet_testing import tiny_rtmdet

from rtmdet import convert_mmdet_state_dict, load_mmdet_checkpoint, to_mmdet_state_dict


def _randomised(model):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.normal_(0, 0.1)
            elif name.endswith("running_var"):
                b.uniform_(0.5, 1.5)
        for conv in model.head.rtm_reg:  # positive distances, so boxes are non-empty
            conv.weight.normal_(0, 0.01)
            conv.bias.fill_(2.0)
    return model


def test_key_mapping_examples():
    mm = {
        "backbone.stem.0.conv.weight": 0,
        "backbone.stage4.1.poolings": 1,
        "neck.reduce_layers.0.bn.running_mean": 2,
        "neck.out_convs.2.conv.weight": 3,
        "bbox_head.cls_convs.0.0.conv.weight": 4,
        "bbox_head.rtm_cls.0.weight": 5,
        "bbox_head.rtm_reg.2.bias": 6,
    }
    ours = convert_mmdet_state_dict(mm)
    assert list(ours) == [
        "backbone.bottom_up.stem.0.conv.weight",
        "backbone.bottom_up.stage4.1.poolings",
        "backbone.reduce_layers.0.bn.running_mean",
        "backbone.out_convs.2.conv.weight",
        "head.cls_convs.0.0.conv.weight",
        "head.rtm_cls.0.weight",
        "head.rtm_reg.2.bias",
    ]
    assert to_mmdet_state_dict(ours) == mm
    with pytest.raises(KeyError, match="roi_head.bbox_head.fc_cls.weight"):
        convert_mmdet_state_dict({"roi_head.bbox_head.fc_cls.weight": 0})


def test_round_trip_strict_load_and_equal_outputs(tmp_path):
    src = _randomised(tiny_rtmdet(num_classes=3, widen=0.125, out_channels=16)).eval()
    mm_sd = to_mmdet_state_dict(src.state_dict())
    # every key is an mmdetection RTMDet name
    assert "backbone.stem.0.conv.weight" in mm_sd
    assert "backbone.stage1.1.attention.fc.weight" in mm_sd
    assert "backbone.stage4.2.blocks.0.conv2.depthwise_conv.conv.weight" in mm_sd
    assert "neck.reduce_layers.0.conv.weight" in mm_sd and "neck.bottom_up_blocks.1.final_conv.bn.weight" in mm_sd
    assert "bbox_head.cls_convs.2.1.conv.weight" in mm_sd and "bbox_head.rtm_cls.2.bias" in mm_sd
    raw = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in mm_sd.items()}
    ckpt = {
        "meta": {"mmdet_version": "3.0.0", "epoch": 300},
        "state_dict": mm_sd,  # EMA weights (EMAHook swaps them in before saving)
        "ema_state_dict": {"steps": torch.tensor(100), **{"module." + k: v for k, v in raw.items()}},
    }
    path = tmp_path / "rtmdet_mmdet.pth"
    torch.save(ckpt, path)

    dst = tiny_rtmdet(num_classes=3, widen=0.125, out_channels=16).eval()
    dst.load_state_dict(load_mmdet_checkpoint(str(path)), strict=True)
    img = torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8)
    a = src([{"image": img}])[0]["instances"]
    b = dst([{"image": img}])[0]["instances"]
    assert len(a) > 0
    assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor) and torch.equal(a.scores, b.scores)
    # shared head conv still shared after loading (one tensor on all levels)
    assert dst.head.cls_convs[2][0].conv.weight is dst.head.cls_convs[0][0].conv.weight

    raw_sd = load_mmdet_checkpoint(str(path), which="ema_state_dict")
    dst.load_state_dict(raw_sd, strict=True)
    assert torch.equal(dst.head.rtm_cls[1].weight, raw["bbox_head.rtm_cls.1.weight"])


def test_bad_checkpoints(tmp_path):
    with pytest.raises(KeyError, match="ema_state_dict"):
        load_mmdet_checkpoint({"meta": {}, "state_dict": {}}, which="ema_state_dict")
    with pytest.raises(ValueError, match="which"):
        load_mmdet_checkpoint({"state_dict": {}}, which="model")
    model = tiny_rtmdet(num_classes=3, widen=0.125, out_channels=16)
    wrong_classes = to_mmdet_state_dict(tiny_rtmdet(num_classes=5, widen=0.125, out_channels=16).state_dict())
    with pytest.raises(RuntimeError, match="rtm_cls"):
        model.load_state_dict(load_mmdet_checkpoint({"state_dict": wrong_classes}), strict=True)


def test_cli_output_loads_with_detection_checkpointer(tmp_path):
    import importlib.util
    import os

    from d2lite.checkpoint import DetectionCheckpointer

    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "convert_mmdet_checkpoint.py")
    spec = importlib.util.spec_from_file_location("convert_mmdet_checkpoint", script)
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)

    src = _randomised(tiny_rtmdet(num_classes=3, widen=0.125, out_channels=16)).eval()
    mm_path, out_path = str(tmp_path / "mm.pth"), str(tmp_path / "d2lite.pth")
    torch.save({"meta": {}, "state_dict": to_mmdet_state_dict(src.state_dict())}, mm_path)
    cli.main([mm_path, out_path])
    dst = tiny_rtmdet(num_classes=3, widen=0.125, out_channels=16).eval()
    DetectionCheckpointer(dst).load(out_path)
    for (k, a), (_, b) in zip(src.state_dict().items(), dst.state_dict().items()):
        assert torch.equal(a, b), k
    with pytest.raises(FileNotFoundError, match="does not exist"):
        cli.main([str(tmp_path / "missing.pth"), out_path])
