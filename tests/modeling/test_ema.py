import math

import pytest
import torch
from torch import nn

from d2lite.modeling.ema import ModelEMA


def _lin(w, b):
    m = nn.Linear(2, 1)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([w]))
        m.bias.fill_(b)
    return m


def _set(m, w, b):
    with torch.no_grad():
        m.weight.copy_(torch.tensor([w]))
        m.bias.fill_(b)


def test_first_update_copies_then_formula():
    model = _lin([1.0, 2.0], 0.0)
    ema = ModelEMA(model, momentum=0.1)
    assert not ema.module.weight.requires_grad
    _set(model, [3.0, 6.0], 1.0)
    ema.update(model, 0)  # first update: copy
    assert torch.equal(ema.module.weight, torch.tensor([[3.0, 6.0]]))
    _set(model, [13.0, 16.0], 11.0)
    ema.update(model, 1)  # 0.9 * ema + 0.1 * param
    assert torch.allclose(ema.module.weight, torch.tensor([[4.0, 7.0]]))
    assert torch.allclose(ema.module.bias, torch.tensor([2.0]))
    assert int(ema.steps) == 2
    # the source model is not modified
    assert torch.equal(model.weight, torch.tensor([[13.0, 16.0]]))


def test_momentum_fn_mmdet_exp_momentum():
    gamma, base = 2000, 0.0002

    def exp_momentum(step):  # mmdet ExpMomentumEMA
        return (1 - base) * math.exp(-float(1 + step) / gamma) + base

    model = _lin([0.0, 0.0], 0.0)
    ema = ModelEMA(model, momentum=base, momentum_fn=exp_momentum, update_buffers=True)
    ema.update(model, 0)
    _set(model, [1.0, 1.0], 1.0)
    ema.update(model, 1)
    m1 = (1 - 0.0002) * math.exp(-2 / 2000) + 0.0002  # 0.9998 * 0.9990005 + 0.0002
    assert m1 == pytest.approx(0.999001, abs=1e-6)
    assert ema.module.weight[0, 0].item() == pytest.approx(m1, rel=1e-6)
    _set(model, [0.0, 0.0], 0.0)
    ema.update(model, 2)
    m2 = (1 - 0.0002) * math.exp(-3 / 2000) + 0.0002
    assert ema.module.weight[0, 0].item() == pytest.approx((1 - m2) * m1, rel=1e-5)


def test_default_step_counts_updates_and_interval():
    model = _lin([0.0, 0.0], 0.0)
    ema = ModelEMA(model, momentum=0.5, interval=2)
    ema.update(model)  # step 0: copy
    _set(model, [4.0, 4.0], 4.0)
    ema.update(model)  # step 1: skipped (1 % 2 != 0)
    assert torch.equal(ema.module.weight, torch.zeros(1, 2))
    ema.update(model)  # step 2: 0.5 * 0 + 0.5 * 4
    assert torch.allclose(ema.module.weight, torch.full((1, 2), 2.0))
    assert int(ema.steps) == 3


def _bn_model():
    return nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))


def test_buffers_copied_without_update_buffers():
    model = _bn_model()
    ema = ModelEMA(model, momentum=0.1)
    ema.update(model, 0)
    with torch.no_grad():
        model[1].running_mean.fill_(10.0)
        model[1].num_batches_tracked.fill_(7)
    ema.update(model, 1)
    assert torch.equal(ema.module[1].running_mean, torch.full((2,), 10.0))
    assert int(ema.module[1].num_batches_tracked) == 7


def test_buffers_averaged_with_update_buffers_and_int_buffers_copied():
    model = _bn_model()
    ema = ModelEMA(model, momentum=0.1, update_buffers=True)
    ema.update(model, 0)  # running_mean 0 copied
    with torch.no_grad():
        model[1].running_mean.fill_(10.0)
        model[1].num_batches_tracked.fill_(7)
    ema.update(model, 1)
    assert torch.allclose(ema.module[1].running_mean, torch.full((2,), 1.0))
    assert ema.module[1].num_batches_tracked.dtype == torch.long
    assert int(ema.module[1].num_batches_tracked) == 7


def test_state_dict_mmengine_keys_and_restore():
    model = _lin([1.0, 2.0], 0.5)
    ema = ModelEMA(model, momentum=0.25)
    ema.update(model, 0)
    _set(model, [5.0, 6.0], 4.5)
    ema.update(model, 1)
    sd = ema.state_dict()
    assert set(sd) == {"steps", "module.weight", "module.bias"}
    assert int(sd["steps"]) == 2

    restored = ModelEMA(_lin([0.0, 0.0], 0.0), momentum=0.25)
    restored.load_state_dict(sd)
    assert int(restored.steps) == 2
    assert torch.equal(restored.module.weight, ema.module.weight)
    # both continue identically
    _set(model, [9.0, 9.0], 9.0)
    ema.update(model, 2)
    restored.update(model, 2)
    assert torch.equal(restored.module.weight, ema.module.weight)
    assert torch.allclose(ema.module.weight, torch.tensor([[2.0, 3.0]]) * 0.75 + 0.25 * 9.0)


def test_apply_to_swaps_and_restores():
    model = _lin([1.0, 1.0], 0.0)
    ema = ModelEMA(model, momentum=0.5)
    ema.update(model, 0)
    _set(model, [3.0, 3.0], 2.0)
    ema.update(model, 1)  # ema = (2, 2), bias 1
    x = torch.tensor([[1.0, 1.0]])
    with ema.apply_to(model) as m:
        assert m is model
        assert torch.allclose(model(x), torch.tensor([[5.0]]))
    assert torch.allclose(model(x), torch.tensor([[8.0]]))
    with pytest.raises(RuntimeError, match="inside"):
        with ema.apply_to(model):
            raise RuntimeError("inside")
    assert torch.equal(model.weight, torch.tensor([[3.0, 3.0]]))
    assert torch.allclose(ema(x), torch.tensor([[5.0]]))


def test_bad_arguments():
    with pytest.raises(ValueError, match="momentum must be in"):
        ModelEMA(_lin([0.0, 0.0], 0.0), momentum=1.5)
    with pytest.raises(ValueError, match="interval"):
        ModelEMA(_lin([0.0, 0.0], 0.0), interval=0)
    ema = ModelEMA(_lin([0.0, 0.0], 0.0), momentum_fn=lambda s: 2.0)
    ema.update(_lin([0.0, 0.0], 0.0), 0)
    with pytest.raises(ValueError, match=r"momentum_fn\(1\) = 2.0"):
        ema.update(_lin([0.0, 0.0], 0.0), 1)
    with pytest.raises(KeyError, match="do not match"):
        ema.update(nn.Linear(2, 1, bias=False), 2)


def test_update_reuses_its_plan_without_state_dicts():
    """After the first update, updates do not rebuild state dicts (the tensors are grouped
    once) and still follow the formula; pickling drops the cached plan."""
    import pickle

    model = nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3))
    ema = ModelEMA(model, momentum=0.5, update_buffers=True)
    ema.update(model)

    def no_state_dict(*args, **kwargs):
        raise AssertionError("state_dict rebuilt during update")

    model.state_dict = no_state_dict
    ema.module.state_dict = no_state_dict
    before = ema.module[0].weight.clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].running_mean.fill_(2.0)
    ema.update(model)
    assert torch.allclose(ema.module[0].weight, 0.5 * before + 0.5 * model[0].weight)
    assert torch.allclose(ema.module[1].running_mean, torch.full((3,), 1.0))
    assert ema.module[1].num_batches_tracked.item() == model[1].num_batches_tracked.item()
    del model.state_dict, ema.module.state_dict
    clone = pickle.loads(pickle.dumps(ema))
    assert "_plan" not in clone.__dict__ and int(clone.steps) == 2
