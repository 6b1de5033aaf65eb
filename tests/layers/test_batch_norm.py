import logging
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import d2lite.layers.batch_norm as bn_module
from d2lite.layers import FrozenBatchNorm2d, LayerNorm, NaiveSyncBatchNorm, SyncBatchNorm, get_norm

# onepass: the outcome does not depend on the float path (make test-1thread skips it).
pytestmark = pytest.mark.onepass


def _trained_bn(c: int = 4, seed: int = 0) -> nn.BatchNorm2d:
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(c)
    bn.weight.data = torch.rand(c, generator=g) + 0.5
    bn.bias.data = torch.randn(c, generator=g)
    bn.running_mean = torch.randn(c, generator=g)
    bn.running_var = torch.rand(c, generator=g) + 0.1
    return bn.eval()


def test_frozen_bn_default_is_identity_and_has_no_params():
    fbn = FrozenBatchNorm2d(3)
    assert list(fbn.parameters()) == []
    assert sorted(fbn.state_dict().keys()) == ["bias", "running_mean", "running_var", "weight"]
    x = torch.randn(2, 3, 4, 4)
    assert torch.allclose(fbn(x), x, atol=1e-6)


def test_frozen_bn_matches_bn_eval_in_both_code_paths():
    bn = _trained_bn()
    fbn = FrozenBatchNorm2d(4)
    fbn.load_state_dict(bn.state_dict())  # num_batches_tracked is ignored, strict load works
    x = torch.randn(2, 4, 5, 5)
    expected = bn(x)
    assert torch.allclose(fbn(x), expected, atol=1e-5)
    xg = x.clone().requires_grad_()
    out = fbn(xg)  # the requires_grad path
    assert torch.allclose(out, expected, atol=1e-5)
    out.sum().backward()
    assert xg.grad is not None
    # training mode changes nothing
    fbn.train()
    assert torch.allclose(fbn(x), expected, atol=1e-5)
    assert torch.equal(fbn.running_mean, bn.running_mean)


def test_convert_frozen_batchnorm_keeps_values_recursively():
    bn = _trained_bn(seed=1)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), bn, nn.Sequential(nn.BatchNorm2d(4), nn.ReLU()))
    x = torch.randn(2, 3, 6, 6)
    model.eval()
    expected = model(x)
    converted = FrozenBatchNorm2d.convert_frozen_batchnorm(model)
    assert converted is model
    assert isinstance(model[1], FrozenBatchNorm2d) and isinstance(model[2][0], FrozenBatchNorm2d)
    assert torch.equal(model[1].weight, bn.weight.data) and torch.equal(model[1].running_var, bn.running_var)
    model.train()
    assert torch.allclose(model(x), expected, atol=1e-5)
    # only the conv remains trainable
    assert [n for n, _ in model.named_parameters()] == ["0.weight", "0.bias"]
    # a BN module itself is replaced by a new module
    single = FrozenBatchNorm2d.convert_frozen_batchnorm(_trained_bn())
    assert isinstance(single, FrozenBatchNorm2d)
    # SyncBN variants are converted too
    assert isinstance(FrozenBatchNorm2d.convert_frozen_batchnorm(NaiveSyncBatchNorm(4)), FrozenBatchNorm2d)
    assert isinstance(FrozenBatchNorm2d.convert_frozen_batchnorm(SyncBatchNorm(4)), FrozenBatchNorm2d)
    assert isinstance(FrozenBatchNorm2d.convert_frozen_batchnorm(nn.SyncBatchNorm(4)), FrozenBatchNorm2d)
    with pytest.raises(ValueError, match="track_running_stats"):
        FrozenBatchNorm2d.convert_frozen_batchnorm(nn.BatchNorm2d(4, track_running_stats=False))


def test_convert_back_to_batchnorm():
    fbn = FrozenBatchNorm2d.convert_frozen_batchnorm(_trained_bn(seed=2))
    bn = FrozenBatchNorm2d.convert_frozenbatchnorm2d_to_batchnorm2d(nn.Sequential(fbn))[0]
    assert isinstance(bn, nn.BatchNorm2d)
    assert torch.equal(bn.running_mean, fbn.running_mean) and bn.weight.requires_grad


def test_frozen_bn_loads_old_checkpoint_without_running_stats():
    fbn = FrozenBatchNorm2d(2)
    sd = {"weight": torch.tensor([2.0, 3.0]), "bias": torch.tensor([1.0, 0.0])}
    # state dicts carry per-module versions in _metadata; version 1 had no running stats
    from collections import OrderedDict

    sd = OrderedDict(sd)
    sd._metadata = OrderedDict({"": {"version": 1}})
    fbn.load_state_dict(sd, strict=True)
    assert torch.equal(fbn.running_mean, torch.zeros(2)) and torch.equal(fbn.running_var, torch.ones(2))
    # a plain dict has no version either (detectron2 treats it as old)
    FrozenBatchNorm2d(2).load_state_dict({"weight": torch.ones(2), "bias": torch.zeros(2)})
    # a current (version 3) checkpoint missing running stats is an error
    current = FrozenBatchNorm2d(2).state_dict()
    del current["running_mean"]
    with pytest.raises(RuntimeError, match="running_mean"):
        FrozenBatchNorm2d(2).load_state_dict(current)


def test_get_norm_types():
    assert type(get_norm("BN", 8)) is nn.BatchNorm2d
    assert type(get_norm("SyncBN", 8)) is SyncBatchNorm
    assert isinstance(get_norm("SyncBN", 8), nn.SyncBatchNorm)
    assert type(get_norm("naiveSyncBN", 8)) is NaiveSyncBatchNorm
    assert isinstance(get_norm("FrozenBN", 8), FrozenBatchNorm2d)
    gn = get_norm("GN", 64)
    assert isinstance(gn, nn.GroupNorm) and gn.num_groups == 32 and gn.num_channels == 64
    assert type(get_norm("nnSyncBN", 8)) is nn.SyncBatchNorm
    assert get_norm("naiveSyncBN_N", 8)._stats_mode == "N"
    assert isinstance(get_norm("LN", 8), LayerNorm)
    assert get_norm("", 8) is None and get_norm(None, 8) is None
    custom = get_norm(lambda c: nn.GroupNorm(4, c), 8)
    assert isinstance(custom, nn.GroupNorm) and custom.num_groups == 4
    assert get_norm("BN", 8).num_features == 8
    with pytest.raises(KeyError, match="unknown norm 'bn'"):
        get_norm("bn", 8)
    with pytest.raises(TypeError):
        get_norm(3, 8)
    with pytest.raises(ValueError):
        NaiveSyncBatchNorm(4, stats_mode="X")


@pytest.mark.parametrize("name", ["SyncBN", "naiveSyncBN"])
def test_syncbn_single_process_is_bn_and_warns_once(monkeypatch, caplog, name):
    monkeypatch.setattr(bn_module, "_warned_single_process_syncbn", False)
    torch.manual_seed(0)
    sync = get_norm(name, 4)
    bn = nn.BatchNorm2d(4)
    assert list(sync.state_dict().keys()) == list(bn.state_dict().keys())
    x = torch.randn(3, 4, 5, 5) * 2 + 1
    with caplog.at_level(logging.WARNING, logger="d2lite.layers.batch_norm"):
        out = sync(x)
        out2 = get_norm("SyncBN", 4)(x)  # other layers in the same process
        get_norm("naiveSyncBN", 4)(x)
    assert torch.allclose(out, bn(x), atol=1e-6)
    assert torch.allclose(sync.running_mean, bn.running_mean) and torch.allclose(sync.running_var, bn.running_var)
    assert out2.shape == x.shape
    warnings = [r for r in caplog.records if "single process" in r.getMessage()]
    assert len(warnings) == 1
    sync.eval()
    bn.eval()
    assert torch.allclose(sync(x), bn(x), atol=1e-6)
    bn.load_state_dict(sync.state_dict(), strict=True)


def test_syncbn_with_world_size_one_process_group_on_cpu(monkeypatch):
    """USERS.md #10: nn.SyncBatchNorm refuses CPU input once a process group exists; SyncBN must not."""
    monkeypatch.setattr(bn_module, "_warned_single_process_syncbn", False)
    dist.init_process_group("gloo", rank=0, world_size=1, init_method=f"tcp://127.0.0.1:{_free_port()}")
    try:
        x = torch.randn(2, 4, 3, 3)
        with pytest.raises(ValueError, match="GPU"):
            nn.SyncBatchNorm(4)(x)
        torch.manual_seed(0)
        out = get_norm("SyncBN", 4)(x)
        assert torch.allclose(out, nn.BatchNorm2d(4)(x), atol=1e-6)
    finally:
        dist.destroy_process_group()


def test_layer_norm_channels_first():
    ln = LayerNorm(4)
    x = torch.randn(2, 4, 3, 3)
    ref = nn.functional.layer_norm(x.permute(0, 2, 3, 1), (4,), eps=1e-6).permute(0, 3, 1, 2)
    assert torch.allclose(ln(x), ref, atol=1e-5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _syncbn_worker(rank: int, world_size: int, port: int, norm: str, x: torch.Tensor, result_dir: str):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)  # a spawned child process: the test process keeps its thread count
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(0)
        layer = get_norm(norm, 4)
        layer.weight.data = torch.tensor([1.0, 2.0, 0.5, 1.5])
        chunk = x[rank * 2 : (rank + 1) * 2].clone().requires_grad_()
        out = layer(chunk)
        (out * torch.arange(out.numel()).view_as(out)).sum().backward()
        torch.save(
            {"out": out.detach(), "grad": chunk.grad, "rm": layer.running_mean, "rv": layer.running_var},
            os.path.join(result_dir, f"{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(
    "norm",
    [
        "SyncBN",
        pytest.param("naiveSyncBN", marks=pytest.mark.slow),
        pytest.param("naiveSyncBN_N", marks=pytest.mark.slow),
    ],
)
def test_syncbn_two_processes_equals_bn_on_whole_batch(tmp_path, norm):
    torch.manual_seed(1)
    x = torch.randn(4, 4, 3, 3) * 3 + 2
    mp.spawn(_syncbn_worker, args=(2, _free_port(), norm, x, str(tmp_path)), nprocs=2, join=True)

    bn = nn.BatchNorm2d(4)
    bn.weight.data = torch.tensor([1.0, 2.0, 0.5, 1.5])
    xg = x.clone().requires_grad_()
    ref = bn(xg)
    # same weighting of each element as the workers' per-chunk weights
    w = torch.cat([torch.arange(2 * 4 * 9).view(2, 4, 3, 3)] * 2).float()
    (ref * w).sum().backward()
    for rank in range(2):
        r = torch.load(tmp_path / f"{rank}.pt")
        assert torch.allclose(r["out"], ref[rank * 2 : (rank + 1) * 2].detach(), atol=1e-4)
        assert torch.allclose(r["grad"], xg.grad[rank * 2 : (rank + 1) * 2], atol=1e-4)
        assert torch.allclose(r["rm"], bn.running_mean, atol=1e-5)
    if norm == "SyncBN":
        # exact global statistics, unbiased running_var, like nn.SyncBatchNorm / BN on one process
        assert torch.allclose(r["rv"], bn.running_var, atol=1e-4)
    else:
        # detectron2's NaiveSyncBatchNorm keeps the biased variance
        biased_var = x.var(dim=(0, 2, 3), unbiased=False)
        assert torch.allclose(r["rv"], 0.9 + 0.1 * biased_var, atol=1e-4)


def test_fixed_norms_are_folded_into_conv2d():
    """Conv2d with a FrozenBN / eval-mode BN computes conv(x, w * scale) + shift, equal to
    norm(conv(x)); training BN, GN and norms with hooks are not folded."""
    from d2lite.layers import Conv2d
    from d2lite.layers.batch_norm import frozen_affine

    torch.manual_seed(0)
    x = torch.randn(2, 4, 9, 9, requires_grad=True)
    for norm in (FrozenBatchNorm2d(6), nn.BatchNorm2d(6)):
        with torch.no_grad():
            norm.running_mean.normal_()
            norm.running_var.uniform_(0.5, 2.0)
            norm.weight.normal_()
            norm.bias.normal_()
        conv = Conv2d(4, 6, 3, padding=1, bias=True, norm=norm).eval()
        assert frozen_affine(norm) is not None
        out = conv(x)
        ref = norm(nn.functional.conv2d(x, conv.weight, conv.bias, padding=1))
        assert torch.allclose(out, ref, atol=1e-5)
        (g_out,) = torch.autograd.grad(out.sum(), x)
        (g_ref,) = torch.autograd.grad(ref.sum(), x)
        assert torch.allclose(g_out, g_ref, atol=1e-5)
    bn = nn.BatchNorm2d(6).train()
    assert frozen_affine(bn) is None and frozen_affine(nn.GroupNorm(2, 6)) is None and frozen_affine(None) is None
    frozen = FrozenBatchNorm2d(6)
    seen = []
    frozen.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    assert frozen_affine(frozen) is None  # hooks must still see the norm's input and output
    Conv2d(4, 6, 3, padding=1, norm=frozen)(x)
    assert seen == [(2, 6, 9, 9)]
