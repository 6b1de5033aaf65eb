"""Load Caffe2/Detectron-style and detectron2-style files into d2lite's real ResNet/FPN/RetinaNet head."""

import logging
import pickle
import re

import pytest
import torch
from torch import nn

from d2lite.checkpoint import DetectionCheckpointer

backbone_mod = pytest.importorskip("d2lite.modeling.backbone")
retinanet_mod = pytest.importorskip("d2lite.modeling.meta_arch.retinanet")
from d2lite.layers import ShapeSpec  # noqa: E402


def _tiny_retinanet_like():
    resnet = backbone_mod.ResNet(
        stem=backbone_mod.BasicStem(norm="FrozenBN"),
        stages=backbone_mod.ResNet.make_default_stages(18, norm="FrozenBN"),
        out_features=["res3", "res4", "res5"],
    )
    fpn = backbone_mod.FPN(
        resnet, ["res3", "res4", "res5"], out_channels=16, top_block=backbone_mod.LastLevelP6P7(512, 16, "res5")
    )
    head = retinanet_mod.RetinaNetHead(
        input_shape=[ShapeSpec(channels=16)] * 5, num_classes=3, num_anchors=2, conv_dims=[16, 16]
    )
    model = nn.Module()
    model.backbone, model.head = fpn, head
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for t in model.state_dict().values():
            t.copy_(torch.rand(t.shape, generator=g))
    return model


_BN = {"weight": "s", "bias": "b", "running_mean": "rm", "running_var": "riv"}
_BRANCH = {"conv1": "2a", "conv2": "2b", "conv3": "2c", "shortcut": "1"}


def _to_c2_name(key, last_block):
    """Hand-written inverse of the C2 -> d2lite conversion (Detectron RetinaNet blob names)."""
    wb = lambda leaf: {"weight": "w", "bias": "b"}[leaf]  # noqa: E731
    m = re.match(r"backbone\.bottom_up\.stem\.conv1\.(norm\.)?(\w+)$", key)
    if m:
        return f"res_conv1_bn_{_BN[m.group(2)]}" if m.group(1) else f"conv1_{wb(m.group(2))}"
    m = re.match(r"backbone\.bottom_up\.res(\d)\.(\d+)\.(\w+)\.(norm\.)?(\w+)$", key)
    if m:
        base = f"res{m.group(1)}_{m.group(2)}_branch{_BRANCH[m.group(3)]}"
        return f"{base}_bn_{_BN[m.group(5)]}" if m.group(4) else f"{base}_{wb(m.group(5))}"
    m = re.match(r"backbone\.fpn_lateral(\d)\.(\w+)$", key)
    if m:
        s = int(m.group(1))
        lateral = "" if s == 5 else "_lateral"
        return f"fpn_inner_res{s}_{last_block}_sum{lateral}_{wb(m.group(2))}"
    m = re.match(r"backbone\.fpn_output(\d)\.(\w+)$", key)
    if m:
        return f"fpn_res{m.group(1)}_{last_block}_sum_{wb(m.group(2))}"
    m = re.match(r"backbone\.top_block\.p(\d)\.(\w+)$", key)
    if m:
        return f"fpn_{m.group(1)}_{wb(m.group(2))}"
    m = re.match(r"head\.(cls|bbox)_subnet\.(\d+)\.(\w+)$", key)
    if m:
        return f"retnet_{m.group(1)}_conv_n{int(m.group(2)) // 2}_fpn3_{wb(m.group(3))}"
    m = re.match(r"head\.(cls_score|bbox_pred)\.(\w+)$", key)
    if m:
        kind = {"cls_score": "cls", "bbox_pred": "bbox"}[m.group(1)]
        return f"retnet_{kind}_pred_fpn3_{wb(m.group(2))}"
    raise AssertionError(f"no C2 name for {key}")


def test_caffe2_detectron_retinanet_blobs_load_into_d2lite_model(tmp_path, caplog):
    src = _tiny_retinanet_like()
    blobs = {_to_c2_name(k, last_block=1): v.numpy() for k, v in src.state_dict().items()}
    assert "res2_0_branch2a_w" in blobs and "fpn_inner_res5_1_sum_w" in blobs
    with open(tmp_path / "retinanet_c2.pkl", "wb") as f:
        pickle.dump({"blobs": blobs, "cfg": "ignored"}, f)

    dst = _tiny_retinanet_like()
    with torch.no_grad():
        for t in dst.state_dict().values():
            t.zero_()
    DetectionCheckpointer(dst).load(str(tmp_path / "retinanet_c2.pkl"))
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k
    assert "not found in the checkpoint" not in caplog.text
    assert "not used by the model" not in caplog.text


def test_detectron2_zoo_pkl_loads_strictly(tmp_path):
    src = _tiny_retinanet_like()
    with open(tmp_path / "model_final.pkl", "wb") as f:
        pickle.dump(
            {"model": {k: v.numpy() for k, v in src.state_dict().items()}, "__author__": "Detectron2 Model Zoo"}, f
        )
    dst = _tiny_retinanet_like()
    with torch.no_grad():
        for t in dst.state_dict().values():
            t.zero_()
    DetectionCheckpointer(dst).load(str(tmp_path / "model_final.pkl"))
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k


# --------------------------------------- detectron2's "?matching_heuristics=True" path option
def _zeroed(model):
    with torch.no_grad():
        for t in model.state_dict().values():
            t.zero_()
    return model


def _save_backbone_checkpoint(tmp_path):
    """A checkpoint of a bare ResNet-18 (keys "stem.conv1.weight", "res2.0.conv1.weight", ...),
    written by DetectionCheckpointer like any d2lite run's checkpoint."""
    src = _tiny_retinanet_like().backbone.bottom_up
    DetectionCheckpointer(src, str(tmp_path)).save("r18_backbone")
    assert "stem.conv1.weight" in torch.load(tmp_path / "r18_backbone.pth", weights_only=False)["model"]
    return src


def _assert_backbone_loaded(dst, src):
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[f"backbone.bottom_up.{k}"], v), k
    # the rest of the detector is not in the file and keeps its values
    assert all(not v.any() for k, v in dst.state_dict().items() if not k.startswith("backbone.bottom_up."))


def test_matching_heuristics_query_loads_a_backbone_into_a_detector(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="d2lite.checkpoint")
    src = _save_backbone_checkpoint(tmp_path)
    path = str(tmp_path / "r18_backbone.pth")

    dst = _zeroed(_tiny_retinanet_like())
    DetectionCheckpointer(dst).load(path)  # without the option: names differ by prefix, no weight loads
    assert all(not v.any() for v in dst.parameters())
    assert "backbone.bottom_up.stem.conv1.weight" in caplog.text  # reported as missing

    DetectionCheckpointer(dst).load(path + "?matching_heuristics=True")
    _assert_backbone_loaded(dst, src)
    assert "matched with submodule backbone.bottom_up" in caplog.text


def test_matching_heuristics_query_through_resume_or_load(tmp_path):
    """The train tool loads train.init_checkpoint with resume_or_load."""
    src = _save_backbone_checkpoint(tmp_path)
    dst = _zeroed(_tiny_retinanet_like())
    out = tmp_path / "run"  # no last_checkpoint there: init_checkpoint is loaded
    DetectionCheckpointer(dst, str(out)).resume_or_load(
        str(tmp_path / "r18_backbone.pth") + "?matching_heuristics=True", resume=True
    )
    _assert_backbone_loaded(dst, src)


def test_matching_heuristics_query_through_a_registered_path_handler(tmp_path):
    from iopath.common.file_io import PathHandler

    from d2lite.utils.file_io import PathManager

    class _Store(PathHandler):
        PREFIX = "d2lite-test-store://"

        def _get_supported_prefixes(self):
            return [self.PREFIX]

        def _get_local_path(self, path, **kwargs):
            assert "?" not in path, path  # the query never reaches the handler
            return str(tmp_path / path[len(self.PREFIX) :])

        def _open(self, path, mode="r", **kwargs):
            return open(self._get_local_path(path), mode)

    src = _save_backbone_checkpoint(tmp_path)
    PathManager.register_handler(_Store())
    try:
        dst = _zeroed(_tiny_retinanet_like())
        DetectionCheckpointer(dst).load("d2lite-test-store://r18_backbone.pth?matching_heuristics=True")
        _assert_backbone_loaded(dst, src)
    finally:
        del PathManager._path_handlers[_Store.PREFIX]  # iopath has no unregister
