import pytest
import torch
from torch import nn

from d2lite.solver import get_default_optimizer_params, reduce_param_groups


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)  # weight + bias
        self.bn = nn.BatchNorm2d(4)  # norm weight + norm bias
        self.gn = nn.GroupNorm(2, 4)
        self.head = nn.Linear(4, 2)
        self.head2 = nn.Linear(4, 2)
        self.head2.weight = self.head.weight  # shared parameter
        self.embedding = nn.Parameter(torch.zeros(3))
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


def _hparams_of(groups):
    """parameter id -> hyperparameters (without 'params'), asserting each param once."""
    out = {}
    for g in groups:
        for p in g["params"]:
            assert id(p) not in out, "parameter appears in two groups"
            out[id(p)] = {k: v for k, v in g.items() if k != "params"}
    return out


def test_defaults_equal_model_parameters():
    net = _Net()
    groups = get_default_optimizer_params(net)
    assert len(groups) == 1
    trainable = [p for p in net.parameters() if p.requires_grad]
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in trainable}
    assert len(groups[0]["params"]) == len(trainable)


def test_norm_bias_and_shared_params():
    net = _Net()
    groups = get_default_optimizer_params(
        net, base_lr=0.01, weight_decay=1e-4, weight_decay_norm=0.0, bias_lr_factor=2.0, weight_decay_bias=1e-5
    )
    hp = _hparams_of(groups)
    assert hp[id(net.conv.weight)] == {"lr": 0.01, "weight_decay": 1e-4}
    assert hp[id(net.conv.bias)] == {"lr": 0.02, "weight_decay": 1e-5}
    assert hp[id(net.bn.weight)] == {"lr": 0.01, "weight_decay": 0.0}
    assert hp[id(net.gn.weight)] == {"lr": 0.01, "weight_decay": 0.0}
    # bias of a norm layer: bias override is applied after the norm rule (as in d2)
    assert hp[id(net.bn.bias)] == {"lr": 0.02, "weight_decay": 1e-5}
    assert id(net.frozen.weight) not in hp
    n_params = sum(len(g["params"]) for g in groups)
    assert n_params == len({id(p) for p in net.parameters() if p.requires_grad})
    # merged: (base), (bias), (norm weight) -> 3 groups
    assert len(groups) == 3
    opt = torch.optim.SGD(groups, lr=0.5, momentum=0.9)  # accepted by torch
    assert len(opt.param_groups) == 3


def test_frozen_batchnorm_is_a_norm_type():
    layers = pytest.importorskip("d2lite.layers")
    if not hasattr(layers, "FrozenBatchNorm2d"):
        pytest.skip("d2lite.layers.FrozenBatchNorm2d not written yet")

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = layers.FrozenBatchNorm2d(4)
            # FrozenBN has buffers only; give it a trainable param to see the rule act
            self.norm.register_parameter("extra", nn.Parameter(torch.ones(1)))
            self.lin = nn.Linear(2, 2)

    m = M()
    hp = _hparams_of(get_default_optimizer_params(m, weight_decay=1.0, weight_decay_norm=0.0))
    assert hp[id(m.norm.extra)]["weight_decay"] == 0.0
    assert hp[id(m.lin.weight)]["weight_decay"] == 1.0


def test_overrides_and_lr_factor_func():
    net = _Net()
    groups = get_default_optimizer_params(
        net,
        base_lr=0.1,
        overrides={"embedding": {"lr": 0.5, "weight_decay": 0.0}},
        lr_factor_func=lambda name: 0.1 if name.startswith("head.") else 1.0,
    )
    hp = _hparams_of(groups)
    assert hp[id(net.embedding)] == {"lr": 0.5, "weight_decay": 0.0}
    assert hp[id(net.head.weight)]["lr"] == pytest.approx(0.01)
    assert hp[id(net.head2.bias)]["lr"] == pytest.approx(0.1)
    assert hp[id(net.conv.weight)] == {"lr": 0.1}


def test_bad_arguments():
    net = _Net()
    with pytest.raises(ValueError, match="embeding"):
        get_default_optimizer_params(net, overrides={"embeding": {"lr": 1.0}})
    with pytest.raises(ValueError, match="bias_lr_factor requires base_lr"):
        get_default_optimizer_params(net, bias_lr_factor=2.0)
    with pytest.raises(ValueError, match="Conflicting|conflicting"):
        get_default_optimizer_params(net, base_lr=0.1, weight_decay_bias=0.0, overrides={"bias": {"lr": 1.0}})
    with pytest.raises(ValueError, match="lr_factor_func requires base_lr"):
        get_default_optimizer_params(net, lr_factor_func=lambda n: 1.0)


def test_reduce_param_groups_merges_and_overwrites():
    a, b, c = (nn.Parameter(torch.zeros(1)) for _ in range(3))
    groups = reduce_param_groups(
        [
            {"params": [a], "lr": 0.1},
            {"params": [b], "lr": 0.1},
            {"params": [c], "lr": 0.2},
            {"params": [c], "lr": 0.1, "weight_decay": 0.0},  # later entry wins for c
        ]
    )
    assert len(groups) == 2
    assert groups[0] == {"lr": 0.1, "params": [a, b]}
    assert groups[1]["params"] == [c] and groups[1]["weight_decay"] == 0.0
    with pytest.raises(ValueError, match="'params'"):
        reduce_param_groups([{"lr": 0.1}])
