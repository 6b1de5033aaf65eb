import logging
import os
import pickle
import re
import urllib.error

import numpy as np
import pytest
import torch
from torch import nn

from d2lite.checkpoint import DetectionCheckpointer
from d2lite.checkpoint.catalog import ModelCatalog
from d2lite.checkpoint.detection_checkpoint import split_load_options
from d2lite.utils.file_io import DownloadError, PathManager, resolve_model_zoo_url


class _FrozenBN(nn.Module):
    """Test double of d2's FrozenBatchNorm2d: four buffers, no parameters."""

    def __init__(self, c):
        super().__init__()
        for name, fill in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
            self.register_buffer(name, torch.full((c,), fill))


class _ConvNorm(nn.Conv2d):
    """Mirrors d2's Conv2d with a `norm` child: keys conv.weight, conv.norm.*."""

    def __init__(self, cin, cout, k):
        super().__init__(cin, cout, k, bias=False)
        self.norm = _FrozenBN(cout)


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.shortcut = _ConvNorm(4, 8, 1)
        self.conv1 = _ConvNorm(4, 8, 1)


class _Stem(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = _ConvNorm(3, 4, 3)


class _TinyResNet(nn.Module):
    """Keys like d2's ResNet: stem.conv1.weight, stem.conv1.norm.weight, res2.0.conv1.weight."""

    def __init__(self):
        super().__init__()
        self.stem = _Stem()
        self.res2 = nn.Sequential(_Block())


class _Detector(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.bottom_up = _TinyResNet()
        self.head = nn.Linear(8, 2)


class _Counter:
    def __init__(self, n=0):
        self.n = n

    def state_dict(self):
        return {"n": self.n}

    def load_state_dict(self, sd):
        self.n = sd["n"]


def _randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            t.copy_(torch.rand(t.shape, generator=g))
    return model


def _train_step(model, opt):
    loss = sum((p**2).sum() for p in model.parameters())
    loss.backward()
    opt.step()
    opt.zero_grad()


def _assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_save_load_round_trip_and_resume(tmp_path):
    model = _randomize(_Detector(), 0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    _train_step(model, opt)
    counter = _Counter(7)
    ckpt = DetectionCheckpointer(model, str(tmp_path / "out"), optimizer=opt, counter=counter)
    ckpt.save("model_0000009", iteration=9)
    assert ckpt.has_checkpoint()
    assert ckpt.get_checkpoint_file() == str(tmp_path / "out" / "model_0000009.pth")
    assert sorted(os.listdir(tmp_path / "out")) == ["last_checkpoint", "model_0000009.pth"]

    model2 = _randomize(_Detector(), 1)
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.1, momentum=0.9)
    counter2 = _Counter()
    ckpt2 = DetectionCheckpointer(model2, str(tmp_path / "out"), optimizer=opt2, counter=counter2)
    extra = ckpt2.resume_or_load("/nonexistent/ignored_when_resuming.pth", resume=True)
    assert extra["iteration"] == 9
    _assert_same_state(model, model2)
    assert counter2.n == 7
    for p, p2 in zip(model.parameters(), model2.parameters()):
        assert torch.equal(opt.state[p]["momentum_buffer"], opt2.state[p2]["momentum_buffer"])


def test_resume_or_load_without_resume_loads_model_only(tmp_path):
    model = _randomize(_Detector(), 0)
    DetectionCheckpointer(model, str(tmp_path), counter=_Counter(5)).save("m")
    model2 = _randomize(_Detector(), 1)
    counter2 = _Counter(0)
    other_dir = tmp_path / "fresh"
    ckpt2 = DetectionCheckpointer(model2, str(other_dir), counter=counter2)
    # resume=True but nothing to resume in other_dir -> load the given path, model only
    ckpt2.resume_or_load(str(tmp_path / "m.pth"), resume=True)
    _assert_same_state(model, model2)
    assert counter2.n == 0
    counter2.n = 0
    ckpt3 = DetectionCheckpointer(_Detector(), str(tmp_path), counter=counter2)
    ckpt3.resume_or_load(str(tmp_path / "m.pth"), resume=False)
    assert counter2.n == 0  # non-resume never loads checkpointables


def test_interrupted_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    model = _randomize(_Detector(), 0)
    ckpt = DetectionCheckpointer(model, str(tmp_path), counter=_Counter(1))
    ckpt.save("model_0000001", iteration=1)
    ckpt.save("model_0000002", iteration=2)
    expected = {k: v.clone() for k, v in model.state_dict().items()}

    real_save = torch.save

    def crashing_save(obj, f, *args, **kwargs):
        f.write(b"PARTIAL-DATA" * 10)
        raise KeyboardInterrupt("simulated crash during save")

    _randomize(model, 5)
    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save("model_0000003", iteration=3)
    with pytest.raises(KeyboardInterrupt):  # overwriting an existing file must not corrupt it
        ckpt.save("model_0000002", iteration=3)
    monkeypatch.setattr(torch, "save", real_save)

    assert sorted(os.listdir(tmp_path)) == [
        "last_checkpoint",
        "model_0000001.pth",
        "model_0000002.pth",
    ]  # no temp files left
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000002.pth"
    model2 = _Detector()
    extra = DetectionCheckpointer(model2, str(tmp_path)).resume_or_load("", resume=True)
    assert extra["iteration"] == 2
    for k, v in model2.state_dict().items():
        assert torch.equal(v, expected[k]), k


def test_interrupted_tag_keeps_previous_tag(tmp_path, monkeypatch):
    ckpt = DetectionCheckpointer(_Detector(), str(tmp_path))
    ckpt.save("model_a")
    real_fsync = os.fsync
    calls = []

    def failing_fsync(fd):
        calls.append(fd)
        if len(calls) == 2:  # the checkpoint file is written; fail writing the tag
            raise OSError("disk full")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save("model_b")
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert (tmp_path / "last_checkpoint").read_text() == "model_a.pth"
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_ddp_wrapped_model_keys_have_no_module_prefix(tmp_path):
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed not available")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        model = _randomize(_Detector(), 0)
        ddp = nn.parallel.DistributedDataParallel(model)
        DetectionCheckpointer(ddp, str(tmp_path)).save("ddp")
        sd = torch.load(tmp_path / "ddp.pth", weights_only=False)["model"]
        assert "head.weight" in sd and not any(k.startswith("module.") for k in sd)
        model2 = _Detector()
        DetectionCheckpointer(nn.parallel.DistributedDataParallel(model2)).load(str(tmp_path / "ddp.pth"))
        _assert_same_state(model, model2)
    finally:
        dist.destroy_process_group()


def test_load_state_dict_saved_with_module_prefix(tmp_path):
    model = _randomize(_Detector(), 0)
    torch.save({"model": {"module." + k: v for k, v in model.state_dict().items()}}, tmp_path / "wrapped.pth")
    model2 = _Detector()
    DetectionCheckpointer(model2).load(str(tmp_path / "wrapped.pth"))
    _assert_same_state(model, model2)


def test_detectron2_format_pkl(tmp_path, caplog):
    src = _randomize(_TinyResNet(), 3)
    data = {"model": {k: v.numpy() for k, v in src.state_dict().items()}, "__author__": "Detectron2 Model Zoo"}
    with open(tmp_path / "d2.pkl", "wb") as f:
        pickle.dump(data, f)
    model = _TinyResNet()
    DetectionCheckpointer(model).load(str(tmp_path / "d2.pkl"))
    _assert_same_state(src, model)

    # with matching_heuristics, names are matched by suffix into a bigger model
    data["matching_heuristics"] = True
    with open(tmp_path / "d2h.pkl", "wb") as f:
        pickle.dump(data, f)
    det = _Detector()
    with caplog.at_level(logging.WARNING):
        DetectionCheckpointer(det).load(str(tmp_path / "d2h.pkl"))
    _assert_same_state(src, det.backbone.bottom_up)
    # missing keys are logged grouped by module, as fvcore/detectron2 do
    assert "not found in the checkpoint:\nhead.{bias, weight}" in caplog.text


def _c2_blobs(seed=0):
    rng = np.random.RandomState(seed)
    shapes = {
        "conv1_w": (4, 3, 3, 3),
        "res_conv1_bn_s": (4,),
        "res_conv1_bn_b": (4,),
        "res2_0_branch1_w": (8, 4, 1, 1),
        "res2_0_branch1_bn_s": (8,),
        "res2_0_branch1_bn_b": (8,),
        "res2_0_branch2a_w": (8, 4, 1, 1),
        "res2_0_branch2a_bn_s": (8,),
        "res2_0_branch2a_bn_b": (8,),
        "fc1000_w": (10, 8),
        "fc1000_b": (10,),
    }
    blobs = {k: rng.rand(*s).astype(np.float32) for k, s in shapes.items()}
    blobs["conv1_w_momentum"] = np.zeros((4, 3, 3, 3), np.float32)
    return blobs


@pytest.mark.parametrize("wrap_in_blobs", [True, False])
def test_caffe2_format_pkl_converts_names(tmp_path, caplog, wrap_in_blobs):
    blobs = _c2_blobs()
    with open(tmp_path / "R-tiny.pkl", "wb") as f:
        pickle.dump({"blobs": blobs} if wrap_in_blobs else blobs, f)
    det = _Detector()
    with caplog.at_level(logging.INFO):
        DetectionCheckpointer(det).load(str(tmp_path / "R-tiny.pkl"))
    bu = det.backbone.bottom_up
    expect = {
        bu.stem.conv1.weight: "conv1_w",
        bu.stem.conv1.norm.weight: "res_conv1_bn_s",
        bu.stem.conv1.norm.bias: "res_conv1_bn_b",
        bu.res2[0].conv1.weight: "res2_0_branch2a_w",
        bu.res2[0].conv1.norm.weight: "res2_0_branch2a_bn_s",
        bu.res2[0].conv1.norm.bias: "res2_0_branch2a_bn_b",
        bu.res2[0].shortcut.weight: "res2_0_branch1_w",
        bu.res2[0].shortcut.norm.bias: "res2_0_branch1_bn_b",
    }
    for tensor, c2_name in expect.items():
        assert torch.equal(tensor, torch.from_numpy(blobs[c2_name])), c2_name
    assert "fc1000_w" in caplog.text  # unexpected, reported with its C2 name
    assert "conv1_w_momentum" not in caplog.text  # optimizer blobs are dropped
    assert "Following weights matched with submodule backbone.bottom_up" in caplog.text


def test_incompatible_keys_are_logged_by_name(tmp_path, caplog):
    model = _randomize(_Detector(), 0)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd["head.weight"] = torch.zeros(3, 8)  # wrong shape: (3, 8) vs (2, 8)
    sd["extra_layer.weight"] = torch.zeros(1)
    del sd["backbone.bottom_up.stem.conv1.weight"]
    torch.save({"model": sd}, tmp_path / "bad.pth")
    target = _randomize(_Detector(), 1)
    head_before = target.head.weight.clone()
    with caplog.at_level(logging.WARNING):
        DetectionCheckpointer(target).load(str(tmp_path / "bad.pth"))
    text = caplog.text
    # One table row per reshaped parameter: name | checkpoint shape | model shape.
    assert re.search(r"\| head\.weight\s*\| \(3, 8\)\s*\| \(2, 8\)\s*\|", text), text
    assert "head.weight" not in text.split("not found in the checkpoint")[-1]  # not also listed as missing
    assert "extra_layer.weight" in text
    assert "backbone.bottom_up.stem.conv1.weight" in text
    assert torch.equal(target.head.weight, head_before)  # skipped, not loaded
    assert torch.equal(target.head.bias, model.head.bias)  # the rest is loaded


def test_bad_files(tmp_path):
    ckpt = DetectionCheckpointer(_Detector())
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        ckpt.load(str(tmp_path / "missing.pth"))
    (tmp_path / "trunc.pth").write_bytes(b"\x80\x02garbage")
    with pytest.raises(RuntimeError, match="trunc.pth"):
        ckpt.load(str(tmp_path / "trunc.pth"))
    with open(tmp_path / "list.pth", "wb") as f:
        torch.save([1, 2], f)
    with pytest.raises(ValueError, match="list.pth"):
        ckpt.load(str(tmp_path / "list.pth"))
    assert ckpt.load("") == {}  # empty path: nothing to load


def test_model_zoo_url_mapping():
    url = "https://dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/MSRA/R-50.pkl"
    assert resolve_model_zoo_url("detectron2://ImageNetPretrained/MSRA/R-50.pkl") == url
    assert resolve_model_zoo_url("d2lite://ImageNetPretrained/MSRA/R-50.pkl") == url
    assert resolve_model_zoo_url("/local/R-50.pkl") == "/local/R-50.pkl"
    with pytest.raises(ValueError, match="names no file"):
        resolve_model_zoo_url("detectron2://")
    assert ModelCatalog.get("ImageNetPretrained/MSRA/R-50") == (
        "https://dl.fbaipublicfiles.com/detectron/ImageNetPretrained/MSRA/R-50.pkl"
    )
    with pytest.raises(KeyError, match="MSRA/R-50"):
        ModelCatalog.get("ImageNetPretrained/MSRA/R-5000")


def test_offline_download_gives_clear_error(tmp_path, monkeypatch):
    import iopath.common.file_io as iopath_file_io

    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "cache"))
    requested = []

    def no_network(url, *args, **kwargs):
        requested.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(iopath_file_io, "download", no_network)
    url = "https://dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/MSRA/R-50.pkl"
    with pytest.raises(DownloadError, match="manually") as e:
        PathManager.get_local_path("detectron2://ImageNetPretrained/MSRA/R-50.pkl")
    assert url in str(e.value) and "local path" in str(e.value)
    assert isinstance(e.value.__cause__, urllib.error.URLError)
    assert requested == [url]
    with pytest.raises(DownloadError, match="ImageNetPretrained/MSRA/R-50.pkl"):
        DetectionCheckpointer(_Detector()).resume_or_load("detectron2://ImageNetPretrained/MSRA/R-50.pkl", resume=False)
    with pytest.raises(DownloadError, match="detectron/ImageNetPretrained/MSRA/R-50.pkl"):
        PathManager.get_local_path("catalog://ImageNetPretrained/MSRA/R-50")


def test_save_disabled_and_checkpoint_listing(tmp_path):
    DetectionCheckpointer(_Detector(), str(tmp_path / "off"), save_to_disk=False).save("m")
    DetectionCheckpointer(_Detector(), "").save("m")
    assert not (tmp_path / "off").exists()
    ckpt = DetectionCheckpointer(_Detector(), str(tmp_path / "on"))  # main process -> saves
    assert not ckpt.has_checkpoint() and ckpt.get_checkpoint_file() == ""
    ckpt.save("model_0000004")
    ckpt.save("model_final")
    assert sorted(os.path.basename(f) for f in ckpt.get_all_checkpoint_files()) == [
        "model_0000004.pth",
        "model_final.pth",
    ]
    assert ckpt.get_checkpoint_file().endswith("model_final.pth")
    with pytest.raises(ValueError, match="directory part"):
        ckpt.save("sub/model")


# ------------------------------------------------------------ query options of a checkpoint path
@pytest.mark.parametrize(
    "path, expected",
    [
        ("out/model.pth", ("out/model.pth", {})),
        ("out/model.pth?matching_heuristics=True", ("out/model.pth", {"matching_heuristics": True})),
        ("out/model.pth?matching_heuristics=true", ("out/model.pth", {"matching_heuristics": True})),
        ("out/model.pth?matching_heuristics=False", ("out/model.pth", {"matching_heuristics": False})),
        ("https://host/m.pth?matching_heuristics=1", ("https://host/m.pth", {"matching_heuristics": True})),
    ],
)
def test_split_load_options(path, expected):
    assert split_load_options(path) == expected


@pytest.mark.parametrize(
    "query, match",
    [
        (
            "matching_heuristics=True&foo=1&bar=2",
            r"unsupported query option\(s\) \['bar', 'foo'\].*matching_heuristics",
        ),
        ("dl=1", r"unsupported query option\(s\) \['dl'\].*downloaded first"),
        ("matching_heuristics=yes", r"matching_heuristics='yes' must be True or False"),
        ("matching_heuristics=True&matching_heuristics=False", r"\['matching_heuristics'\] given more than once"),
        ("matching_heuristics", r"cannot parse the query"),
    ],
)
def test_bad_query_options_are_errors_naming_them(tmp_path, query, match):
    model = _randomize(_Detector(), 0)
    torch.save({"model": model.state_dict()}, tmp_path / "m.pth")
    path = f"{tmp_path / 'm.pth'}?{query}"
    with pytest.raises(ValueError, match=match) as exc:
        DetectionCheckpointer(_Detector()).load(path)
    assert str(tmp_path / "m.pth") in str(exc.value)


def test_query_option_loads_bare_state_dict_and_zoo_pkl(tmp_path):
    src = _randomize(_Detector(), 0)
    backbone_sd = src.backbone.bottom_up.state_dict()  # keys lack "backbone.bottom_up."
    torch.save(backbone_sd, tmp_path / "bare.pth")
    with open(tmp_path / "zoo.pkl", "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in backbone_sd.items()}, "__author__": "someone"}, f)
    for name in ("bare.pth", "zoo.pkl"):
        dst = _randomize(_Detector(), 1)
        head = dst.head.weight.clone()
        DetectionCheckpointer(dst).load(f"{tmp_path / name}?matching_heuristics=True")
        for k, v in backbone_sd.items():
            assert torch.equal(dst.backbone.bottom_up.state_dict()[k], v), (name, k)
        assert torch.equal(dst.head.weight, head)


def test_local_file_with_question_mark_in_its_name_loads_as_is(tmp_path):
    src = _randomize(_Detector(), 0)
    torch.save({"model": src.state_dict()}, tmp_path / "odd?name.pth")
    dst = _randomize(_Detector(), 1)
    DetectionCheckpointer(dst).load(str(tmp_path / "odd?name.pth"))
    _assert_same_state(src, dst)
