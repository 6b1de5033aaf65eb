import json
import os

import pytest
import torch
from fvcore.common.checkpoint import Checkpointer
from torch import nn

from d2lite.engine import HookBase, SimpleTrainer, hooks
from d2lite.utils.events import EventWriter, JSONWriter


class _Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0, 2.0]))

    def forward(self, x):
        return {"loss": (self.w * x).sum()}


class _Loader:
    def __iter__(self):
        while True:
            yield torch.tensor([1.0, 1.0])


def _trainer(lr=0.1, **kwargs):
    model = _Model()
    opt = torch.optim.SGD(model.parameters(), lr=lr, **kwargs)
    return SimpleTrainer(model, _Loader(), opt)


class _Fail(HookBase):
    def __init__(self, at):
        self.at = at

    def after_step(self):
        if self.trainer.iter == self.at:
            raise RuntimeError(f"fail at {self.at}")


def test_gradient_clipping_norm_hand_checked():
    t = _trainer(lr=1.0)
    t.model.w.data = torch.tensor([0.0, 0.0])
    t.data_loader = iter([torch.tensor([3.0, 4.0])])  # grad = (3, 4), norm 5
    t.register_hooks([hooks.GradientClipping(clip_type="norm", clip_value=2.0, norm_type=2.0)])
    t.train(0, 1)
    # clipped grad = (3, 4) * 2 / 5 = (1.2, 1.6)
    assert torch.allclose(t.model.w.detach(), torch.tensor([-1.2, -1.6]), atol=1e-6)
    assert t.storage.latest()["grad_norm"][0] == pytest.approx(5.0)


def test_gradient_clipping_norm_does_nothing_below_threshold():
    t = _trainer(lr=1.0)
    t.model.w.data = torch.tensor([0.0, 0.0])
    t.data_loader = iter([torch.tensor([0.3, 0.4])])
    t.register_hooks([hooks.GradientClipping(clip_value=1.0)])
    t.train(0, 1)
    assert torch.allclose(t.model.w.detach(), torch.tensor([-0.3, -0.4]))


def test_gradient_clipping_inf_norm_and_value():
    t = _trainer(lr=1.0)
    t.model.w.data = torch.tensor([0.0, 0.0])
    t.data_loader = iter([torch.tensor([3.0, -0.5])])
    t.register_hooks([hooks.GradientClipping(clip_type="value", clip_value=1.0)])
    t.train(0, 1)
    assert torch.allclose(t.model.w.detach(), torch.tensor([-1.0, 0.5]))

    t = _trainer(lr=1.0)
    t.model.w.data = torch.tensor([0.0, 0.0])
    t.data_loader = iter([torch.tensor([3.0, -1.5])])  # inf-norm 3 -> scale 1/3
    t.register_hooks([hooks.GradientClipping(clip_value=1.0, norm_type=float("inf"))])
    t.train(0, 1)
    assert torch.allclose(t.model.w.detach(), torch.tensor([-1.0, 0.5]), atol=1e-6)


def test_gradient_clipping_bad_args():
    with pytest.raises(ValueError, match="clip_type"):
        hooks.GradientClipping(clip_type="abs")
    with pytest.raises(ValueError, match="clip_value"):
        hooks.GradientClipping(clip_value=0)


def test_lr_scheduler_hook_writes_lr_then_steps():
    t = _trainer(lr=1.0)
    sched = torch.optim.lr_scheduler.MultiStepLR(t.optimizer, milestones=[2], gamma=0.1)
    t.register_hooks([hooks.LRScheduler(scheduler=sched)])
    t.train(0, 4)
    assert [(it, v) for v, it in t.storage.history("lr").values()] == [
        (0, 1.0),
        (1, 1.0),
        (2, pytest.approx(0.1)),
        (3, pytest.approx(0.1)),
    ]
    assert t.storage.smoothing_hints()["lr"] is False


def test_lr_scheduler_hook_with_param_scheduler_and_trainer_optimizer():
    from fvcore.common.param_scheduler import MultiStepParamScheduler

    t = _trainer(lr=2.0)
    multiplier = MultiStepParamScheduler([1.0, 0.5], milestones=[2], num_updates=4)
    t.register_hooks([hooks.LRScheduler(scheduler=multiplier)])
    t.train(0, 4)
    assert [v for v, _ in t.storage.history("lr").values()] == [2.0, 2.0, 1.0, 1.0]


def test_best_param_group_id():
    a, b, c = (nn.Parameter(torch.zeros(1)) for _ in range(3))
    opt = torch.optim.SGD([{"params": [a], "lr": 0.1}, {"params": [b, c], "lr": 0.2}], lr=0.1)
    assert hooks.LRScheduler.get_best_param_group_id(opt) == 1
    opt = torch.optim.SGD([{"params": [a], "lr": 0.5}, {"params": [b], "lr": 0.2}, {"params": [c], "lr": 0.2}], lr=0.1)
    assert hooks.LRScheduler.get_best_param_group_id(opt) == 1


def test_periodic_checkpointer_files(tmp_path):
    t = _trainer()
    ckpt = Checkpointer(t.model, str(tmp_path), trainer=t)
    t.register_hooks([hooks.PeriodicCheckpointer(ckpt, period=2)])
    t.train(0, 5)
    assert sorted(os.listdir(tmp_path)) == [
        "last_checkpoint",
        "model_0000001.pth",
        "model_0000003.pth",
        "model_final.pth",
    ]
    final = torch.load(tmp_path / "model_final.pth", weights_only=False)
    assert final["iteration"] == 4 and final["trainer"]["iteration"] == 4
    assert "optimizer" in final["trainer"]
    assert torch.equal(final["model"]["w"], t.model.w.detach())


def test_periodic_checkpointer_max_to_keep(tmp_path):
    t = _trainer()
    ckpt = Checkpointer(t.model, str(tmp_path))
    t.register_hooks([hooks.PeriodicCheckpointer(ckpt, period=1, max_to_keep=2)])
    t.train(0, 5)
    assert sorted(os.listdir(tmp_path)) == [
        "last_checkpoint",
        "model_0000003.pth",
        "model_0000004.pth",
        "model_final.pth",
    ]


def test_periodic_checkpointer_no_final_after_failure(tmp_path):
    t = _trainer()
    ckpt = Checkpointer(t.model, str(tmp_path))
    t.register_hooks([hooks.PeriodicCheckpointer(ckpt, period=2), _Fail(at=4)])
    with pytest.raises(RuntimeError, match="fail at 4"):
        t.train(0, 10)
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth", "model_0000003.pth"]
    assert (tmp_path / "last_checkpoint").read_text().strip() == "model_0000003.pth"
    with pytest.raises(ValueError, match="period"):
        hooks.PeriodicCheckpointer(ckpt, period=0)


def test_eval_hook_periodic_and_after_train():
    calls = []

    def eval_fn():
        calls.append(t.iter)
        return {"bbox": {"AP": 10.0 + len(calls), "AP50": torch.tensor(20.0)}, "n": 3}

    t = _trainer()
    t.register_hooks([hooks.EvalHook(2, eval_fn)])
    t.train(0, 6)
    # after iterations 1 and 3 (next_iter 2, 4); the one at next_iter 6 == max_iter runs in after_train
    assert calls == [1, 3, 6]
    latest = t.storage.latest()
    assert latest["bbox/AP"] == (13.0, 6)
    assert latest["bbox/AP50"] == (20.0, 6)
    assert latest["n"] == (3.0, 6)
    assert [it for _, it in t.storage.history("bbox/AP").values()] == [1, 3, 6]


def test_eval_hook_not_after_failed_training():
    calls = []
    t = _trainer()
    t.register_hooks([hooks.EvalHook(0, lambda: calls.append(1)), _Fail(at=1)])
    with pytest.raises(RuntimeError):
        t.train(0, 3)
    assert calls == []


def test_eval_hook_bad_results():
    t = _trainer()
    t.register_hooks([hooks.EvalHook(1, lambda: {"bbox": {"AP": "high"}})])
    with pytest.raises(ValueError, match="nested dict of float. Got 'bbox/AP: high'"):
        t.train(0, 2)
    t = _trainer()
    t.register_hooks([hooks.EvalHook(1, lambda: [1.0])])
    with pytest.raises(TypeError, match="must return a dict"):
        t.train(0, 2)


def test_best_checkpointer(tmp_path):
    scores = iter([5.0, 3.0, 7.0])
    t = _trainer()
    saved = []

    class RecordingCheckpointer(Checkpointer):
        def save(self, name, **kwargs):
            saved.append((name, kwargs["iteration"]))
            super().save(name, **kwargs)

    ckpt = RecordingCheckpointer(t.model, str(tmp_path))
    t.register_hooks(
        [
            hooks.EvalHook(2, lambda: {"bbox": {"AP": next(scores)}}),
            hooks.BestCheckpointer(2, ckpt, "bbox/AP", mode="max"),
        ]
    )
    t.train(0, 6)
    # evals at iterations 1 (5.0 -> first), 3 (3.0 -> not better), 6 (7.0 -> better)
    assert saved == [("model_best", 1), ("model_best", 6)]
    best = hooks.BestCheckpointer
    assert t._hooks[1].best_metric == 7.0 and t._hooks[1].best_iter == 6
    assert t.state_dict()["hooks"]["BestCheckpointer"] == {"best_metric": 7.0, "best_iter": 6}
    assert os.path.exists(tmp_path / "model_best.pth")
    with pytest.raises(ValueError, match="mode"):
        best(2, ckpt, "bbox/AP", mode="highest")


def test_periodic_writer_writes_and_closes():
    events = []

    class W(EventWriter):
        def write(self):
            events.append(("write", t.iter))

        def close(self):
            events.append(("close", t.iter))

    t = _trainer()
    t.register_hooks([hooks.PeriodicWriter([W()], period=3)])
    t.train(0, 5)
    assert events == [("write", 2), ("write", 4), ("write", 5), ("close", 5)]
    with pytest.raises(TypeError, match="not an EventWriter"):
        hooks.PeriodicWriter([object()])


def test_periodic_writer_failing_writer_does_not_cost_the_others_their_last_write(tmp_path):
    class Broken(EventWriter):
        closed = False

        def write(self):
            if t.iter == t.max_iter:
                raise OSError("disk full")

        def close(self):
            Broken.closed = True

    t = _trainer()
    path = tmp_path / "metrics.json"
    t.register_hooks(
        [
            hooks.CallbackHook(after_train=lambda tr: tr.storage.put_scalar("final", 1.0, smoothing_hint=False)),
            hooks.PeriodicWriter([Broken(), JSONWriter(str(path), window_size=1)], period=100),
        ]
    )
    with pytest.raises(OSError, match="disk full"):
        t.train(0, 3)
    assert Broken.closed
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["iteration"] for line in lines] == [2, 3] and lines[-1]["final"] == 1.0


def test_periodic_writer_json_end_to_end(tmp_path):
    t = _trainer()
    sched = torch.optim.lr_scheduler.StepLR(t.optimizer, step_size=2, gamma=0.5)
    path = tmp_path / "metrics.json"
    t.register_hooks(
        [hooks.LRScheduler(scheduler=sched), hooks.PeriodicWriter([JSONWriter(str(path), window_size=1)], period=2)]
    )
    t.train(0, 4)
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["iteration"] for x in lines] == [1, 3]
    assert set(lines[0]) == {"iteration", "total_loss", "data_time", "rank_data_time", "lr"}
    # w after 1 step of lr 0.1 with grad (1, 1): (0.9, 1.9) -> loss at iter 1 = 2.8
    assert lines[0]["total_loss"] == pytest.approx(2.8)
    assert lines[0]["lr"] == pytest.approx(0.1) and lines[1]["lr"] == pytest.approx(0.05)


def test_iteration_timer_puts_time_after_warmup():
    t = _trainer()
    t.register_hooks([hooks.IterationTimer(warmup_iter=2)])
    t.train(0, 5)
    assert [it for _, it in t.storage.history("time").values()] == [1, 2, 3, 4]
    assert all(v >= 0 for v, _ in t.storage.history("time").values())


def test_callback_hook():
    calls = []
    t = _trainer()
    t.register_hooks(
        [
            hooks.CallbackHook(
                before_train=lambda tr: calls.append("bt"),
                before_step=lambda tr: calls.append(f"bs{tr.iter}"),
                after_step=lambda tr: calls.append(f"as{tr.iter}"),
                after_train=lambda tr: calls.append("at"),
            )
        ]
    )
    t.train(0, 2)
    assert calls == ["bt", "bs0", "as0", "bs1", "as1", "at"]


def test_ema_hook_updates_after_each_step():
    from d2lite.modeling.ema import ModelEMA

    t = _trainer(lr=1.0)
    ema = ModelEMA(t.model, momentum=0.5)
    t.register_hooks([hooks.EMAHook(ema)])
    t.train(0, 3)
    # grad is (1, 1) each step: w = (0,1), (-1,0), (-2,-1) after steps 0, 1, 2
    # ema: copy (0,1); 0.5*(0,1)+0.5*(-1,0) = (-0.5,0.5); 0.5*(-0.5,0.5)+0.5*(-2,-1) = (-1.25,-0.25)
    assert torch.allclose(ema.module.w, torch.tensor([-1.25, -0.25]))
    assert int(ema.steps) == 3


def test_torch_profiler_writes_trace(tmp_path):
    t = _trainer()
    t.register_hooks([hooks.TorchProfiler(lambda tr: tr.iter == 1, str(tmp_path))])
    t.train(0, 3)
    assert os.listdir(tmp_path) == ["profiler-trace-iter1.json"]
