import math

import pytest
import torch
from fvcore.common.param_scheduler import CosineParamScheduler, MultiStepParamScheduler

from d2lite.solver import (
    FlatCosineParamScheduler,
    LRMultiplier,
    WarmupCosineLR,
    WarmupMultiStepLR,
    WarmupParamScheduler,
)
from d2lite.solver.lr_scheduler import _get_warmup_factor_at_iter

BASE_LR = 0.1


def _optimizer(base_lr=BASE_LR, n_groups=1):
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": base_lr * (i + 1)} for i in range(n_groups)]
    return torch.optim.SGD(groups, lr=base_lr, momentum=0.9)


def _lrs(opt, sched, n_iter):
    """lr used at iterations 0..n_iter-1 (scheduler stepped after each optimizer step)."""
    out = []
    for _ in range(n_iter):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


# Hand-computed: warmup_factor=0.001, warmup_iters=5, milestones=[10, 20], gamma=0.1.
# linear at iter 2: alpha = 2/5 -> 0.001 * 0.6 + 0.4 = 0.4006.
MULTISTEP_LINEAR = {
    0: 1e-4,
    2: 0.04006,
    4: 0.1 * (0.001 * 0.2 + 0.8),
    5: 0.1,
    9: 0.1,
    10: 0.01,
    19: 0.01,
    20: 0.001,
    29: 0.001,
}
MULTISTEP_CONSTANT = {0: 1e-4, 2: 1e-4, 4: 1e-4, 5: 0.1, 10: 0.01, 20: 0.001}


@pytest.mark.parametrize("method,expected", [("linear", MULTISTEP_LINEAR), ("constant", MULTISTEP_CONSTANT)])
def test_warmup_multistep_lr(method, expected):
    opt = _optimizer()
    sched = WarmupMultiStepLR(opt, [10, 20], gamma=0.1, warmup_factor=0.001, warmup_iters=5, warmup_method=method)
    lrs = _lrs(opt, sched, 30)
    for it, lr in expected.items():
        assert lrs[it] == pytest.approx(lr, rel=1e-9), it


@pytest.mark.parametrize("method,expected", [("linear", MULTISTEP_LINEAR), ("constant", MULTISTEP_CONSTANT)])
def test_lr_multiplier_warmup_multistep_matches_formula(method, expected):
    opt = _optimizer()
    multiplier = WarmupParamScheduler(
        MultiStepParamScheduler([1.0, 0.1, 0.01], milestones=[10, 20], num_updates=30),
        warmup_factor=0.001,
        warmup_length=5 / 30,
        warmup_method=method,
    )
    sched = LRMultiplier(opt, multiplier, max_iter=30)
    lrs = _lrs(opt, sched, 30)
    for it, lr in expected.items():
        assert lrs[it] == pytest.approx(lr, rel=1e-9), it
    # identical to the legacy scheduler at every iteration
    opt2 = _optimizer()
    legacy = _lrs(
        opt2, WarmupMultiStepLR(opt2, [10, 20], warmup_factor=0.001, warmup_iters=5, warmup_method=method), 30
    )
    assert lrs == pytest.approx(legacy, rel=1e-9)


def test_lr_multiplier_keeps_group_ratio():
    opt = _optimizer(n_groups=2)
    sched = LRMultiplier(opt, CosineParamScheduler(1.0, 0.0), max_iter=10)
    for _ in range(5):
        opt.step()
        sched.step()
    lr0, lr1 = (g["lr"] for g in opt.param_groups)
    assert lr0 == pytest.approx(0.1 * 0.5)  # cos at where=0.5
    assert lr1 == pytest.approx(2 * lr0)


def test_warmup_cosine_lr_numbers():
    opt = _optimizer()
    sched = WarmupCosineLR(opt, max_iters=100, warmup_factor=0.001, warmup_iters=10)
    lrs = _lrs(opt, sched, 101)
    assert lrs[0] == pytest.approx(1e-4)
    # iter 5: warmup 0.001*0.5+0.5=0.5005; cosine 0.5*(1+cos(pi*0.05))=0.99384417
    assert lrs[5] == pytest.approx(0.1 * 0.5005 * 0.99384417, rel=1e-7)
    assert lrs[50] == pytest.approx(0.05)
    assert lrs[75] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 0.75)))
    assert lrs[100] == pytest.approx(0.0, abs=1e-12)


def test_warmup_factor_helper():
    assert _get_warmup_factor_at_iter("linear", 0, 10, 0.01) == pytest.approx(0.01)
    assert _get_warmup_factor_at_iter("linear", 5, 10, 0.01) == pytest.approx(0.505)
    assert _get_warmup_factor_at_iter("constant", 9, 10, 0.01) == 0.01
    assert _get_warmup_factor_at_iter("constant", 10, 10, 0.01) == 1.0
    with pytest.raises(ValueError, match="Unknown warmup method"):
        _get_warmup_factor_at_iter("exp", 1, 10, 0.01)


def test_warmup_param_scheduler_rescale_interval():
    # rescaled: cosine runs on the remaining 80% of training, starting after warmup.
    s = WarmupParamScheduler(CosineParamScheduler(1.0, 0.0), 0.1, 0.2, rescale_interval=True)
    assert s(0.0) == pytest.approx(0.1)
    assert s(0.1) == pytest.approx(0.55)  # halfway from 0.1 to cos(0)=1
    assert s(0.6) == pytest.approx(0.5)  # cosine at its own where=0.5
    fixed = WarmupParamScheduler(CosineParamScheduler(1.0, 0.0), 0.1, 0.2)
    assert fixed(0.6) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.6)))


def test_flat_cosine_param_scheduler():
    s = FlatCosineParamScheduler(1.0, 0.05, 0.5)
    assert s(0.0) == 1.0 and s(0.49) == 1.0
    assert s(0.75) == pytest.approx(0.05 + 0.95 * 0.5)
    assert s(1.0) == pytest.approx(0.05)
    # RTMDet-style: warmup then flat then cosine through LRMultiplier
    opt = _optimizer(base_lr=0.004)
    sched = LRMultiplier(opt, WarmupParamScheduler(s, 1e-5, 10 / 100), max_iter=100)
    lrs = _lrs(opt, sched, 100)
    assert lrs[0] == pytest.approx(0.004 * 1e-5)
    assert lrs[30] == pytest.approx(0.004)
    assert lrs[75] == pytest.approx(0.004 * 0.525)
    with pytest.raises(ValueError, match="flat_fraction"):
        FlatCosineParamScheduler(1.0, 0.0, 1.5)


def test_lr_multiplier_resume_is_exact():
    def make():
        opt = _optimizer(n_groups=2)
        mult = WarmupParamScheduler(
            MultiStepParamScheduler([1.0, 0.1, 0.01], milestones=[10, 20], num_updates=30), 0.001, 5 / 30
        )
        return opt, LRMultiplier(opt, mult, max_iter=30)

    opt, sched = make()
    full = _lrs(opt, sched, 30)

    opt, sched = make()
    first = _lrs(opt, sched, 12)
    opt_state, sched_state = opt.state_dict(), sched.state_dict()
    assert set(sched_state) == {"base_lrs", "last_epoch", "_last_lr"}

    opt2, sched2 = make()  # fresh objects, as after a restart
    opt2.load_state_dict(opt_state)
    sched2.load_state_dict(sched_state)
    assert sched2.get_last_lr() == sched.get_last_lr()
    rest = _lrs(opt2, sched2, 18)
    assert first + rest == full


def test_lr_multiplier_bad_input():
    opt = _optimizer()
    with pytest.raises(ValueError, match="ParamScheduler"):
        LRMultiplier(opt, lambda w: 1.0, max_iter=10)
    with pytest.raises(ValueError, match="max_iter"):
        LRMultiplier(opt, CosineParamScheduler(1, 0), max_iter=0)
    sched = LRMultiplier(opt, CosineParamScheduler(1, 0), max_iter=10)
    with pytest.raises(ValueError, match="param groups"):
        sched.load_state_dict({"base_lrs": [0.1, 0.2], "last_epoch": 3})


def test_legacy_schedulers_bad_input():
    opt = _optimizer()
    with pytest.raises(ValueError, match="increasing"):
        WarmupMultiStepLR(opt, [20, 10])
    with pytest.raises(ValueError, match="Unknown warmup method"):
        WarmupMultiStepLR(opt, [10], warmup_method="exp")
    with pytest.raises(ValueError, match="Unknown warmup method"):
        WarmupParamScheduler(CosineParamScheduler(1, 0), 0.1, 0.1, warmup_method="exp")
    with pytest.raises(ValueError, match="warmup_length"):
        WarmupParamScheduler(CosineParamScheduler(1, 0), 0.1, 100)
