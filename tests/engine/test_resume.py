"""An interrupted run resumed from its last checkpoint ends exactly like an
uninterrupted run: same parameters, optimizer state (momentum), LR and EMA."""

import os

import pytest
import torch
from fvcore.common.checkpoint import Checkpointer
from torch import nn

from d2lite.engine import HookBase, SimpleTrainer, hooks
from d2lite.modeling.ema import ModelEMA

MAX_ITER = 10
PERIOD = 3


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.fc1 = nn.Linear(3, 4)
        self.fc2 = nn.Linear(4, 1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, batch):
        x, y = batch
        pred = self.fc2(torch.tanh(self.fc1(x)))
        return {"loss_mse": ((pred - y) ** 2).mean(), "loss_l1": 0.1 * (pred - y).abs().mean()}


class _IterLoader:
    """Batch i depends only on the iteration index i."""

    def __init__(self, start_iter):
        self.start_iter = start_iter

    def __iter__(self):
        i = self.start_iter
        while True:
            g = torch.Generator().manual_seed(1000 + i)
            x = torch.randn(4, 3, generator=g)
            yield x, x.sum(dim=1, keepdim=True).sin()
            i += 1


class _FailAt(HookBase):
    def __init__(self, k):
        self.k = k

    def before_step(self):
        if self.trainer.iter == self.k:
            raise RuntimeError(f"simulated crash at iteration {self.k}")


def _build(output_dir, start_iter, checkpointer_cls, fail_at=None):
    os.makedirs(output_dir, exist_ok=True)
    model = _Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[4, 7], gamma=0.3)
    ema = ModelEMA(model, momentum=0.2)
    trainer = SimpleTrainer(model, _IterLoader(start_iter), opt)
    ckpt = checkpointer_cls(model, str(output_dir), trainer=trainer, ema=ema)
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.EMAHook(ema),
            hooks.LRScheduler(scheduler=sched),
            hooks.PeriodicCheckpointer(ckpt, period=PERIOD, max_iter=MAX_ITER),
            _FailAt(fail_at) if fail_at is not None else None,
        ]
    )
    return model, opt, sched, ema, trainer, ckpt


def _checkpointer_classes():
    classes = [pytest.param(Checkpointer, id="fvcore")]
    try:
        from d2lite.checkpoint import DetectionCheckpointer
    except ImportError:
        return classes
    return classes + [pytest.param(DetectionCheckpointer, id="DetectionCheckpointer")]


@pytest.mark.parametrize("checkpointer_cls", _checkpointer_classes())
def test_interrupted_run_resumes_to_same_result(tmp_path, checkpointer_cls):
    # uninterrupted reference
    ref_model, ref_opt, ref_sched, ref_ema, ref_trainer, _ = _build(tmp_path / "ref", 0, checkpointer_cls)
    ref_trainer.train(0, MAX_ITER)

    # crash at iteration 7: last checkpoint is after iteration 5 (model_0000005.pth)
    run_dir = tmp_path / "run"
    *_, trainer, ckpt = _build(run_dir, 0, checkpointer_cls, fail_at=7)
    with pytest.raises(RuntimeError, match="simulated crash at iteration 7"):
        trainer.train(0, MAX_ITER)
    assert not os.path.exists(run_dir / "model_final.pth")
    assert ckpt.get_checkpoint_file().endswith("model_0000005.pth")

    # resume in a "new process": fresh objects, state only from disk
    ckpt_state = torch.load(ckpt.get_checkpoint_file(), weights_only=False)
    start_iter = ckpt_state["trainer"]["iteration"] + 1
    assert start_iter == 6
    model, opt, sched, ema, trainer, ckpt = _build(run_dir, start_iter, checkpointer_cls)
    ckpt.resume_or_load("", resume=True)
    assert trainer.iter + 1 == start_iter
    assert sched.last_epoch == 6 and int(ema.steps) == 6
    trainer.train(start_iter, MAX_ITER)

    for (name, p), (_, p_ref) in zip(model.named_parameters(), ref_model.named_parameters()):
        assert torch.equal(p, p_ref), name
    for p, p_ref in zip(model.parameters(), ref_model.parameters()):
        assert torch.equal(opt.state[p]["momentum_buffer"], ref_opt.state[p_ref]["momentum_buffer"])
    assert opt.param_groups[0]["lr"] == ref_opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.3 * 0.3)
    assert sched.state_dict() == ref_sched.state_dict()
    for k, v in ema.state_dict().items():
        assert torch.equal(v, ref_ema.state_dict()[k]), k
    # the same final checkpoint file as the reference run
    final = torch.load(run_dir / "model_final.pth", weights_only=False)
    ref_final = torch.load(tmp_path / "ref" / "model_final.pth", weights_only=False)
    assert final["iteration"] == ref_final["iteration"] == MAX_ITER - 1
    for k in ref_final["model"]:
        assert torch.equal(final["model"][k], ref_final["model"][k])
    # metrics logged after resuming match the reference run's
    assert trainer.storage.history("total_loss").values() == [
        (v, it) for v, it in ref_trainer.storage.history("total_loss").values() if it >= start_iter
    ]
