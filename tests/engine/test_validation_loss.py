"""hooks.ValidationLoss: validation losses in the event storage, without changing the training run."""

import copy
import random

import numpy as np
import pytest
import torch
from torch import nn

from d2lite.engine import SimpleTrainer, hooks
from d2lite.utils.events import EventStorage, get_event_storage


class ToyModel(nn.Module):
    """Batches are lists of dicts {"x": (3,) tensor, "y": float}. In training mode returns
    loss_a = sum of (w . bn(x) - y)^2 / normalizer and loss_b = |w|_1 * mean(y), where
    normalizer is an EMA of the batch size kept in a plain attribute (as RetinaNet's
    loss_normalizer), stored only while ``update_running_state`` (the documented switch
    ValidationLoss turns off); puts "num_seen".
    Eval mode raises: the hook must keep the model in training mode."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(3)
        self.linear = nn.Linear(3, 1, bias=False)
        self.drop = nn.Dropout(p=0.5)
        with torch.no_grad():
            self.linear.weight.copy_(torch.tensor([[0.5, -1.0, 2.0]]))
        self.normalizer = 10.0
        self.update_running_state = True

    def forward(self, batch):
        if not self.training:
            raise RuntimeError("ToyModel only computes losses")
        x = torch.stack([d["x"] for d in batch])
        y = torch.tensor([d["y"] for d in batch])
        pred = self.linear(self.drop(self.bn(x))).squeeze(1)
        get_event_storage().put_scalar("num_seen", float(len(batch)))
        normalizer = 0.5 * self.normalizer + 0.5 * len(batch)
        if self.update_running_state:
            self.normalizer = normalizer
        return {
            "loss_a": ((pred - y) ** 2).sum() / normalizer,
            "loss_b": self.linear.weight.abs().sum() * y.mean(),
        }


def _batches(seed: int, n: int, size: int = 4):
    g = torch.Generator().manual_seed(seed)
    return [
        [{"x": torch.randn(3, generator=g) * 2 + 1, "y": float(torch.rand(1, generator=g))} for _ in range(size)]
        for _ in range(n)
    ]


@torch.no_grad()
def _manual_losses(model: ToyModel, batch):
    """Hand computation with the BN running statistics and without dropout."""
    x = torch.stack([d["x"] for d in batch])
    y = torch.tensor([d["y"] for d in batch])
    bn = model.bn
    xn = (x - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    pred = xn @ model.linear.weight[0]
    normalizer = 0.5 * model.normalizer + 0.5 * len(batch)  # the training EMA, updated by this batch only
    return float(((pred - y) ** 2).sum() / normalizer), float(model.linear.weight.abs().sum() * y.mean())


class _Snapshot(hooks.HookBase):
    """Records, after each step (before the hooks after it), the model state and what
    the ValidationLoss hook should compute: registered before it."""

    def __init__(self, val_batches, num_batches=None):
        self.val_batches, self.num_batches = val_batches, num_batches
        self.expected = {}

    def after_step(self):
        model = self.trainer.model
        used = self.val_batches[: self.num_batches]
        losses = [_manual_losses(model, b) for b in used]
        a = sum(x[0] for x in losses) / len(used)
        b = sum(x[1] for x in losses) / len(used)
        self.expected[self.trainer.iter] = {
            "val_loss_a": a,
            "val_loss_b": b,
            "val_total_loss": a + b,
            "val_num_seen": 4.0,
        }


def _train(max_iter, extra_hooks=(), seed=0):
    torch.manual_seed(seed)
    model = ToyModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    train_batches = _batches(100, 50)

    def loader():
        while True:
            yield from train_batches

    trainer = SimpleTrainer(model, loader(), optimizer)
    trainer.register_hooks(list(extra_hooks))
    trainer.train(0, max_iter)
    return trainer


def test_values_and_iterations_match_hand_computation():
    val = _batches(7, 3)
    snap = _Snapshot(val)
    trainer = _train(5, [snap, hooks.ValidationLoss(2, val)])
    storage = trainer.storage
    for name in ("val_loss_a", "val_loss_b", "val_total_loss", "val_num_seen"):
        history = storage.history(name).values()
        # After iterations 1 and 3 (period 2) and 4 (the last), once each.
        assert [it for _, it in history] == [1, 3, 4], name
        for value, it in history:
            assert value == pytest.approx(snap.expected[it][name], rel=1e-5, abs=1e-7), (name, it)
        assert storage.smoothing_hints()[name] is False
    # The model's own scalar during validation did not land in the training scalar.
    assert [it for _, it in storage.history("num_seen").values()] == [0, 1, 2, 3, 4]


def test_last_iteration_on_a_period_boundary_validates_once():
    val = _batches(7, 2)
    trainer = _train(4, [hooks.ValidationLoss(2, val)])
    assert [it for _, it in trainer.storage.history("val_total_loss").values()] == [1, 3]


class _RandomDrawingLoader:
    """Draws from the torch, numpy and python RNGs while iterating, like a DataLoader
    (base seed) or random augmentations do."""

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        for b in self.batches:
            torch.rand(1), np.random.rand(), random.random()
            yield b


def test_training_run_is_unchanged_by_the_hook():
    val = _RandomDrawingLoader(_batches(7, 3))
    plain = _train(6)
    validated = _train(6, [hooks.ValidationLoss(1, val)])
    # Identical weights, BN running statistics and batch counter, optimizer momentum and
    # training losses: the validation passes (every iteration) changed nothing, also not
    # the RNG stream used by dropout.
    for (k, a), (_, b) in zip(plain.model.state_dict().items(), validated.model.state_dict().items()):
        assert torch.equal(a, b), k
    assert plain.model.normalizer == validated.model.normalizer
    for pa, pb in zip(plain.model.parameters(), validated.model.parameters()):
        assert torch.equal(
            plain.optimizer.state[pa]["momentum_buffer"], validated.optimizer.state[pb]["momentum_buffer"]
        )
    assert plain.storage.history("loss_a").values() == validated.storage.history("loss_a").values()
    assert validated.storage.history("val_total_loss").values()  # it did run


def test_bn_stats_params_grads_and_flags_untouched_by_one_pass():
    val = _batches(7, 2)
    model = ToyModel()
    model.bn.eval()  # a user-frozen BN must stay frozen
    model.linear.weight.grad = torch.full_like(model.linear.weight, 0.25)
    before = copy.deepcopy(model.state_dict())
    trainer = SimpleTrainer(model, iter([]), torch.optim.SGD(model.parameters(), lr=0.1))
    model.bn.eval()  # SimpleTrainer called model.train()
    flags = {name: m.training for name, m in model.named_modules()}
    hook = hooks.ValidationLoss(1, val)
    trainer.register_hooks([hook])
    with EventStorage(0) as trainer.storage:
        trainer.iter, trainer.max_iter = 0, 10
        hook.after_step()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert torch.equal(model.linear.weight.grad, torch.full_like(model.linear.weight, 0.25))
    assert {name: m.training for name, m in model.named_modules()} == flags
    assert trainer.storage.latest()["val_loss_a"][0] == pytest.approx(
        sum(_manual_losses(model, b)[0] for b in val) / 2, rel=1e-5
    )


def test_flags_during_the_pass():
    """BN and dropout in eval mode, the rest as the user left it (a user-frozen module stays frozen)."""
    seen = []

    class Recording(ToyModel):
        def forward(self, batch):
            seen.append({name: m.training for name, m in self.named_modules()})
            return super().forward(batch)

    model = Recording()
    trainer = SimpleTrainer(model, iter([]), torch.optim.SGD(model.parameters(), lr=0.1))
    model.linear.eval()
    hook = hooks.ValidationLoss(1, _batches(7, 1))
    trainer.register_hooks([hook])
    with EventStorage(0) as trainer.storage:
        trainer.iter, trainer.max_iter = 0, 10
        hook.after_step()
    assert seen == [{"": True, "bn": False, "linear": False, "drop": False}]
    assert [m.training for m in (model, model.bn, model.linear, model.drop)] == [True, True, False, True]


def test_training_flags_restored_after_an_exception():
    model = ToyModel()
    trainer = SimpleTrainer(model, iter([]), torch.optim.SGD(model.parameters(), lr=0.1))
    bad = [[{"x": torch.zeros(2), "y": 0.0}]]  # wrong feature size: BatchNorm1d raises
    hook = hooks.ValidationLoss(1, bad)
    trainer.register_hooks([hook])
    with EventStorage(0) as trainer.storage:
        trainer.iter, trainer.max_iter = 0, 10
        with pytest.raises(RuntimeError):
            hook.after_step()
    assert all(m.training for m in model.modules())
    assert torch.is_grad_enabled()


def test_num_batches_is_honoured():
    val = _batches(7, 5)
    snap = _Snapshot(val, num_batches=2)
    seen = []

    class Counting:
        def __iter__(self):
            for b in val:
                seen.append(b)
                yield b

    trainer = _train(2, [snap, hooks.ValidationLoss(2, Counting(), num_batches=2)])
    value, it = trainer.storage.latest()["val_loss_a"]
    assert it == 1 and value == pytest.approx(snap.expected[1]["val_loss_a"], rel=1e-5)
    assert len(seen) <= 3  # 2 used (+1 fetched before the loop stops)
    # Using all 5 batches gives a different mean, so the limit mattered.
    all_five = sum(_manual_losses(trainer.model, b)[0] for b in val) / 5
    assert value != pytest.approx(all_five, rel=1e-5)


@pytest.mark.parametrize("period", [0, -1, 1.5, True])
def test_bad_period_is_rejected(period):
    with pytest.raises(ValueError, match="period"):
        hooks.ValidationLoss(period, [])


@pytest.mark.parametrize("num_batches", [0, -3, 2.0])
def test_bad_num_batches_is_rejected(num_batches):
    with pytest.raises(ValueError, match="num_batches"):
        hooks.ValidationLoss(1, [], num_batches=num_batches)


def test_empty_loader_names_the_problem():
    with pytest.raises(ValueError, match="yielded no batch"):
        _train(2, [hooks.ValidationLoss(1, [])])


def test_model_that_does_not_return_losses_is_reported():
    class Bad(ToyModel):
        def forward(self, batch):
            return [1.0]

    model = Bad()
    trainer = SimpleTrainer(model, iter([]), torch.optim.SGD(model.parameters(), lr=0.1))
    hook = hooks.ValidationLoss(1, _batches(7, 1))
    trainer.register_hooks([hook])
    with EventStorage(0) as trainer.storage:
        trainer.iter, trainer.max_iter = 0, 10
        with pytest.raises(TypeError, match="dict of losses"):
            hook.after_step()


def test_tool_derives_the_loader_from_dataloader_test_and_runs_retinanet():
    """lazy_train's loader for the hook (quick config): annotated batches of the test
    images at the test size, training batch size; the user's cfg is not modified. Then one
    pass of the real RetinaNet on 2 batches changes no state and keeps num_pos_anchors apart."""
    from helpers import QUICK_CONFIG, REPO_ROOT

    from d2lite.config import LazyConfig, instantiate
    from d2lite.engine import lazy_train as tool

    cfg = LazyConfig.load(str(REPO_ROOT / QUICK_CONFIG))
    cfg = LazyConfig.apply_overrides(cfg, ["dataloader.train.total_batch_size=2", "dataloader.test.num_workers=0"])
    loader = tool.build_val_loss_loader(cfg)
    assert cfg.dataloader.test.mapper.is_train is False and cfg.dataloader.test.dataset.filter_empty is False
    assert "batch_size" not in cfg.dataloader.test
    batch = next(iter(loader))
    assert len(batch) == 2
    test_short_edge = cfg.dataloader.test.mapper.augmentations[0].short_edge_length
    for d in batch:
        assert len(d["instances"]) > 0
        assert min(d["image"].shape[1:]) == test_short_edge  # the test augmentation

    model = instantiate(cfg.model)
    before = copy.deepcopy(model.state_dict())
    normalizer = model.loss_normalizer
    trainer = SimpleTrainer(model, iter([]), torch.optim.SGD(model.parameters(), lr=0.1))
    hook = hooks.ValidationLoss(5, loader, num_batches=2)
    trainer.register_hooks([hook])
    with EventStorage(4) as trainer.storage:
        trainer.iter, trainer.max_iter = 4, 100
        hook.after_step()
    latest = trainer.storage.latest()
    assert set(latest) == {"val_total_loss", "val_loss_cls", "val_loss_box_reg", "val_num_pos_anchors"}
    assert latest["val_total_loss"][0] == pytest.approx(latest["val_loss_cls"][0] + latest["val_loss_box_reg"][0])
    assert all(it == 4 for _, it in latest.values())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert model.loss_normalizer == normalizer and model.training

    cfg.dataloader.val_loss = cfg.dataloader.test  # an explicit loader wins
    explicit = tool.build_val_loss_loader(cfg)
    assert "instances" not in next(iter(explicit))[0]
