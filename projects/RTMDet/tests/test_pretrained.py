"""ImageNet CSPNeXt checkpoints (mmpretrain layout) loaded into RTMDet's backbone through
``rtmdet-backbone://`` paths, and the offline error."""

import urllib.error

import pytest
import torch
from rtmdet_testing import tiny_rtmdet

from d2lite.checkpoint import DetectionCheckpointer
from d2lite.utils.file_io import DownloadError, PathManager
from rtmdet import BACKBONE_PREFIX, CSPNeXt, convert_backbone_state_dict

URL = "https://download.openmmlab.com/mmdetection/v3.0/rtmdet/cspnext_rsb_pretrain/cspnext-tiny_imagenet_600e.pth"


def _imagenet_checkpoint(path):
    """A CSPNeXt-tiny classifier checkpoint as mmpretrain saves it (random weights)."""
    torch.manual_seed(0)
    backbone = CSPNeXt(deepen_factor=0.167, widen_factor=0.375, norm="SyncBN")
    for p in backbone.state_dict().values():
        if p.dtype.is_floating_point:
            p.normal_()
    state = {"backbone." + k: v.clone() for k, v in backbone.state_dict().items()}
    state["head.fc.weight"] = torch.randn(1000, 384)
    state["head.fc.bias"] = torch.randn(1000)
    torch.save({"meta": {"epoch": 600}, "state_dict": state}, path)
    return backbone.state_dict()


def test_convert_backbone_state_dict_layouts():
    w = torch.ones(2)
    expected = {"backbone.bottom_up.stem.0.conv.weight": w}
    for ckpt in (
        {"state_dict": {"backbone.stem.0.conv.weight": w, "head.fc.weight": w}, "meta": {}},
        {"model": {"module.backbone.stem.0.conv.weight": w}},
        {"backbone.stem.0.conv.weight": w, "neck.x": w},
    ):
        assert convert_backbone_state_dict(ckpt) == expected
    with pytest.raises(KeyError, match="No weights start with 'backbone.'"):
        convert_backbone_state_dict({"state_dict": {"head.fc.weight": w}})


def test_backbone_checkpoint_loads_into_bottom_up_only(tmp_path, monkeypatch):
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "cspnext-tiny_imagenet_600e.pth"
    backbone_sd = _imagenet_checkpoint(path)
    model = tiny_rtmdet(num_classes=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    DetectionCheckpointer(model).resume_or_load(BACKBONE_PREFIX + str(path), resume=False)
    after = model.state_dict()
    for k, v in backbone_sd.items():
        assert torch.equal(after["backbone.bottom_up." + k], v), k
    others = [k for k in after if not k.startswith("backbone.bottom_up.")]
    assert others and all(torch.equal(after[k], before[k]) for k in others)  # neck and head untouched
    # converted once into the cache, reused afterwards
    local = PathManager.get_local_path(BACKBONE_PREFIX + str(path))
    assert local.startswith(str(tmp_path / "cache")) and local == PathManager.get_local_path(
        BACKBONE_PREFIX + str(path)
    )


def test_offline_url_names_the_url_and_the_override(tmp_path, monkeypatch):
    import iopath.common.file_io as iopath_file_io

    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "cache"))

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(iopath_file_io, "download", no_network)
    with pytest.raises(DownloadError) as e:
        DetectionCheckpointer(tiny_rtmdet()).resume_or_load(BACKBONE_PREFIX + URL, resume=False)
    message = str(e.value)
    assert (
        URL in message and "train.init_checkpoint=rtmdet-backbone:///path/to/cspnext-tiny_imagenet_600e.pth" in message
    )
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        PathManager.get_local_path(BACKBONE_PREFIX + str(tmp_path / "missing.pth"))
