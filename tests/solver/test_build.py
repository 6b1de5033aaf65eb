import logging
import math

import pytest
import torch
from helpers import DETECTRON2_CONFIGS, REPO_ROOT
from torch import nn

from d2lite.config import LazyConfig, get_cfg, instantiate
from d2lite.modeling import build_model
from d2lite.solver import (
    LRMultiplier,
    WarmupCosineLR,
    WarmupMultiStepLR,
    build_lr_scheduler,
    build_optimizer,
    get_default_optimizer_params,
    maybe_add_gradient_clipping,
    reduce_param_groups,
)


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


# ---------------------------------------------------------------------------------------------
# build_optimizer / build_lr_scheduler from detectron2 YAML configs
# ---------------------------------------------------------------------------------------------

R50_1X_YAML = DETECTRON2_CONFIGS / "COCO-Detection" / "retinanet_R_50_FPN_1x.yaml"
R50_1X_PY = REPO_ROOT / "configs" / "COCO-Detection" / "retinanet_R_50_FPN_1x.py"


def _yaml_cfg(*opts):
    cfg = get_cfg()
    cfg.merge_from_file(str(R50_1X_YAML))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", *opts])
    return cfg


def _groups(optimizer, model):
    """Param groups as (parameter names, hyperparameters) for comparison across optimizers."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [
        ([names[id(p)] for p in g["params"]], {k: v for k, v in g.items() if k != "params"})
        for g in optimizer.param_groups
    ]


def _lr_at(scheduler, it):
    """The lr of the first param group at iteration ``it`` (as after ``it`` scheduler steps)."""
    scheduler.last_epoch = it - 1
    scheduler.optimizer.step()  # no gradients: parameters stay; keeps torch's step-order check quiet
    scheduler.step()
    return scheduler.optimizer.param_groups[0]["lr"]


def test_yaml_solver_equals_the_lazyconfig_file():
    """retinanet_R_50_FPN_1x.yaml's SOLVER gives the optimizer and lr schedule of retinanet_R_50_FPN_1x.py."""
    cfg = _yaml_cfg()
    model = build_model(cfg)
    lazy = LazyConfig.load(str(R50_1X_PY))
    lazy.optimizer.params.model = model
    opt_py = instantiate(lazy.optimizer)
    opt_yaml = build_optimizer(cfg, model)
    assert type(opt_yaml) is type(opt_py) is torch.optim.SGD
    groups_yaml, groups_py = _groups(opt_yaml, model), _groups(opt_py, model)
    assert groups_yaml == groups_py
    # FrozenBN has no trainable parameters, so every group has weight decay 1e-4
    assert [(g[1]["lr"], g[1]["weight_decay"], g[1]["momentum"]) for g in groups_yaml] == [(0.01, 1e-4, 0.9)]
    assert len(groups_yaml[0][0]) == sum(p.requires_grad for p in model.parameters())

    sched_yaml = build_lr_scheduler(cfg, opt_yaml)
    sched_py = LRMultiplier(opt_py, instantiate(lazy.lr_multiplier), lazy.train.max_iter)
    assert lazy.train.max_iter == cfg.SOLVER.MAX_ITER == 90000
    for it in (0, 1, 500, 999, 1000, 1001, 30000, 59999, 60000, 79999, 80000, 89999):
        expected = 0.01 * (0.001 + 0.999 * it / 1000 if it < 1000 else 0.1 ** ((it >= 60000) + (it >= 80000)))
        # the YAML schedule holds GAMMA**2 = 0.010000000000000002, the LazyConfig file 0.01
        assert _lr_at(sched_yaml, it) == pytest.approx(_lr_at(sched_py, it), rel=1e-12, abs=0), it
        assert _lr_at(sched_yaml, it) == pytest.approx(expected, rel=1e-12, abs=0), it


def test_lr_scheduler_steps_like_the_legacy_classes():
    """Stepped iteration by iteration, WarmupMultiStepLR equals the legacy class everywhere and
    WarmupCosineLR equals it after the warmup."""
    cfg = _yaml_cfg("SOLVER.MAX_ITER", "300", "SOLVER.STEPS", "(200, 250)", "SOLVER.WARMUP_ITERS", "30")

    def run(make):
        opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.01)
        sched = make(opt)
        lrs = []
        for _ in range(300):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return lrs

    new = run(lambda opt: build_lr_scheduler(cfg, opt))
    legacy = run(lambda opt: WarmupMultiStepLR(opt, [200, 250], warmup_iters=30))
    assert new == pytest.approx(legacy, rel=1e-9)
    assert new[0] == pytest.approx(1e-5) and new[299] == pytest.approx(1e-4)
    cfg.merge_from_list(["SOLVER.LR_SCHEDULER_NAME", "WarmupCosineLR"])
    new = run(lambda opt: build_lr_scheduler(cfg, opt))
    legacy = run(lambda opt: WarmupCosineLR(opt, 300, warmup_iters=30))
    assert new[30:] == pytest.approx(legacy[30:], rel=1e-9)
    assert new[0] == pytest.approx(1e-5) and new[299] < 1e-6


def test_lr_scheduler_options():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    cfg = _yaml_cfg("SOLVER.LR_SCHEDULER_NAME", "WarmupCosineLR", "SOLVER.BASE_LR", "0.1", "SOLVER.BASE_LR_END", "0.01")
    cfg.merge_from_list(["SOLVER.MAX_ITER", "100", "SOLVER.WARMUP_ITERS", "0"])
    assert _lr_at(build_lr_scheduler(cfg, opt), 99) == pytest.approx(0.01 + 0.09 * 0.5 * (1 + math.cos(math.pi * 0.99)))
    cfg.merge_from_list(["SOLVER.LR_SCHEDULER_NAME", "WarmupStepWithFixedGammaLR", "SOLVER.NUM_DECAYS", "2"])
    sched = build_lr_scheduler(cfg, opt)
    # 2 decays of GAMMA at 1/3 and 2/3 of training
    lrs = [_lr_at(sched, it) for it in (0, 33, 34, 66, 67, 99)]
    assert lrs == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    # explicit keywords, the primary path
    sched = build_lr_scheduler(opt, max_iter=10, steps=[5], warmup_iters=0)
    assert [_lr_at(sched, it) for it in (4, 5)] == pytest.approx([0.1, 0.01])
    cfg.merge_from_list(["SOLVER.LR_SCHEDULER_NAME", "WarmupPolyLR"])
    with pytest.raises(ValueError, match="Unknown LR scheduler.*'WarmupPolyLR'"):
        build_lr_scheduler(cfg, opt)


def test_steps_beyond_max_iter_are_dropped(caplog):
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    with caplog.at_level(logging.WARNING, logger="d2lite.solver.build"):
        sched = build_lr_scheduler(opt, max_iter=100, steps=(50, 150), warmup_iters=0)
    assert "larger than SOLVER.MAX_ITER" in caplog.text
    assert [_lr_at(sched, it) for it in (49, 50, 99)] == pytest.approx([1.0, 0.1, 0.1])


def test_build_optimizer_bias_and_norm_options():
    net = _Net()
    cfg = _yaml_cfg("SOLVER.BIAS_LR_FACTOR", "2.0", "SOLVER.WEIGHT_DECAY_BIAS", "0.0", "SOLVER.NESTEROV", "True")
    opt = build_optimizer(cfg, net)
    hparams = _hparams_of(opt.param_groups)
    assert hparams[id(net.conv.bias)]["lr"] == 0.02 and hparams[id(net.conv.bias)]["weight_decay"] == 0.0
    assert hparams[id(net.conv.weight)]["lr"] == 0.01 and hparams[id(net.conv.weight)]["weight_decay"] == 1e-4
    assert hparams[id(net.bn.weight)]["weight_decay"] == 0.0  # WEIGHT_DECAY_NORM
    assert all(h["nesterov"] for h in hparams.values())
    explicit = build_optimizer(net, base_lr=0.01, bias_lr_factor=2.0, weight_decay_bias=0.0, nesterov=True)
    assert _hparams_of(explicit.param_groups) == hparams


def test_gradient_clipping_is_per_parameter():
    """SOLVER.CLIP_GRADIENTS clips each parameter's gradient on its own (detectron2), so two
    gradients of norm 3 and 4 both end at norm 1 (a global clip would give 0.6 and 0.8)."""
    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))
    model = nn.Module()
    model.a, model.b = a, b
    cfg = _yaml_cfg("SOLVER.CLIP_GRADIENTS.ENABLED", "True", "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "norm")
    opt = build_optimizer(cfg, model)
    assert isinstance(opt, torch.optim.SGD) and type(opt).__name__ == "SGDWithGradientClip"
    a.grad, b.grad = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 4.0])
    opt.step()
    assert a.grad.norm().item() == pytest.approx(1.0) and b.grad.norm().item() == pytest.approx(1.0)
    cfg.merge_from_list(["SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "value", "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", "0.5"])
    opt = build_optimizer(cfg, model)
    a.grad, b.grad = torch.tensor([3.0, -0.2]), torch.tensor([0.0, -4.0])
    opt.step()
    assert a.grad.tolist() == pytest.approx([0.5, -0.2]) and b.grad.tolist() == pytest.approx([0.0, -0.5])
    plain = torch.optim.Adam(model.parameters())
    assert maybe_add_gradient_clipping(_yaml_cfg(), plain) is plain  # disabled: unchanged
    cfg.merge_from_list(["SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "max"])
    with pytest.raises(ValueError, match="clip_type must be one of"):
        build_optimizer(cfg, model)
