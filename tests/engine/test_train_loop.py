import json
import threading

import pytest
import torch
from torch import nn

from d2lite.engine import AMPTrainer, HookBase, SimpleTrainer, TrainerBase, hooks


class _Model(nn.Module):
    """loss_a = mean(w * x), loss_b = 0.5 * sum(w ** 2); w starts at (1, 2)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0, 2.0]))

    def forward(self, x):
        return {"loss_a": (self.w * x).mean(), "loss_b": 0.5 * (self.w**2).sum()}


def _loader(values):
    for v in values:
        yield torch.tensor(v)


class _RecordingHook(HookBase):
    def __init__(self, log):
        self.log = log

    def before_train(self):
        self.log.append(("before_train", self.trainer.iter))

    def after_train(self):
        self.log.append(("after_train", self.trainer.iter))

    def before_step(self):
        assert self.trainer.storage.iter == self.trainer.iter
        self.log.append(("before_step", self.trainer.iter))

    def after_backward(self):
        self.log.append(("after_backward", self.trainer.iter))

    def after_step(self):
        self.log.append(("after_step", self.trainer.iter))


def test_hooks_called_in_order():
    log = []
    model = _Model()
    trainer = SimpleTrainer(model, _loader([[1.0, 1.0]] * 3), torch.optim.SGD(model.parameters(), lr=0.1))
    trainer.register_hooks([_RecordingHook(log), None])
    trainer.train(0, 3)
    expected = [("before_train", 0)]
    for i in range(3):
        expected += [("before_step", i), ("after_backward", i), ("after_step", i)]
    expected += [("after_train", 3)]
    assert log == expected
    assert trainer.iter == 3 and trainer.start_iter == 0 and trainer.max_iter == 3


def test_two_hooks_run_in_registration_order():
    log = []

    class Named(HookBase):
        def __init__(self, name):
            self.name = name

        def after_step(self):
            log.append(self.name)

    model = _Model()
    trainer = SimpleTrainer(model, _loader([[1.0, 1.0]] * 2), torch.optim.SGD(model.parameters(), lr=0.1))
    trainer.register_hooks([Named("a"), Named("b")])
    trainer.train(0, 2)
    assert log == ["a", "b", "a", "b"]


def test_register_non_hook_is_an_error():
    with pytest.raises(TypeError, match="not a HookBase"):
        TrainerBase().register_hooks([object()])


def test_simple_trainer_step_and_metrics():
    model = _Model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = SimpleTrainer(model, _loader([[2.0, 4.0]]), opt)
    trainer.train(0, 1)
    # loss_a = (1*2 + 2*4)/2 = 5, loss_b = 0.5*(1+4) = 2.5
    latest = trainer.storage.latest()
    assert latest["loss_a"] == (5.0, 0)
    assert latest["loss_b"] == (2.5, 0)
    assert latest["total_loss"] == (7.5, 0)
    assert "data_time" in latest and "rank_data_time" in latest
    # grad = x/2 + w = (2, 4); w <- w - 0.1 * grad
    assert torch.allclose(model.w.detach(), torch.tensor([0.8, 1.6]))


def test_single_tensor_loss_is_total_loss():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.tensor(3.0))

        def forward(self, x):
            return self.w * x

    model = M()
    trainer = SimpleTrainer(model, _loader([2.0]), torch.optim.SGD(model.parameters(), lr=0.5))
    trainer.train(0, 1)
    assert trainer.storage.latest()["total_loss"] == (6.0, 0)
    assert "loss" not in trainer.storage.latest()
    assert model.w.item() == pytest.approx(2.0)


def test_nan_loss_raises_naming_iteration_and_keeps_weights():
    log = []
    model = _Model()
    trainer = SimpleTrainer(
        model, _loader([[1.0, 1.0], [1.0, 1.0], [float("nan"), 1.0]]), torch.optim.SGD(model.parameters(), lr=0.1)
    )
    trainer.register_hooks([_RecordingHook(log)])
    with pytest.raises(FloatingPointError, match=r"Loss became infinite or NaN at iteration=2!") as e:
        trainer.train(0, 5)
    assert "loss_a" in str(e.value) and "nan" in str(e.value)
    # after_train still ran, with iter < max_iter (training failed)
    assert log[-1] == ("after_train", 2)
    # the NaN step did not touch the weights: two SGD steps of grad (0.5 + w)
    w = torch.tensor([1.0, 2.0])
    for _ in range(2):
        w = w - 0.1 * (0.5 + w)
    assert torch.allclose(model.w.detach(), w)
    assert torch.isfinite(model.w).all()


def test_nan_loss_message_names_each_term_and_how_to_proceed():
    model = _Model()
    trainer = SimpleTrainer(model, _loader([[float("inf"), 1.0]]), torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(FloatingPointError) as e:
        trainer.train(3, 4)
    message = str(e.value)
    assert "iteration=3" in message and "'loss_a': inf" in message and "'loss_b': 2.5" in message
    assert "Non-finite: loss_a." in message and "optimizer.lr" in message


def test_floating_point_error_inside_the_forward_names_the_iteration():
    from d2lite.structures import Boxes

    class M(_Model):
        def forward(self, x):
            Boxes(self.w.detach().repeat(2).view(1, 4) * x[0]).clip((10, 10))
            return super().forward(x)

    model = M()
    trainer = SimpleTrainer(
        model, _loader([[1.0, 1.0], [float("nan"), 1.0]]), torch.optim.SGD(model.parameters(), lr=0)
    )
    with pytest.raises(FloatingPointError, match=r"forward pass at iteration=6: Boxes.clip") as e:
        trainer.train(5, 7)
    assert isinstance(e.value.__cause__, FloatingPointError)


def test_inf_loss_also_raises():
    model = _Model()
    trainer = SimpleTrainer(model, _loader([[float("inf"), 1.0]]), torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(FloatingPointError, match="iteration=7"):
        trainer.train(7, 8)


def test_exception_in_hook_calls_after_train_and_reraises():
    calls = []

    class Boom(HookBase):
        def after_step(self):
            if self.trainer.iter == 1:
                raise RuntimeError("boom at 1")

    model = _Model()
    trainer = SimpleTrainer(model, _loader([[1.0, 1.0]] * 5), torch.optim.SGD(model.parameters(), lr=0.1))
    trainer.register_hooks([hooks.CallbackHook(after_train=lambda t: calls.append(t.iter)), Boom()])
    with pytest.raises(RuntimeError, match="boom at 1"):
        trainer.train(0, 5)
    assert calls == [1]


def test_gather_metric_period():
    model = _Model()
    trainer = SimpleTrainer(
        model, _loader([[1.0, 1.0]] * 4), torch.optim.SGD(model.parameters(), lr=0.1), gather_metric_period=2
    )
    trainer.train(0, 4)
    assert [it for _, it in trainer.storage.history("total_loss").values()] == [1, 3]


def test_zero_grad_before_forward():
    model = _Model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = SimpleTrainer(model, _loader([[2.0, 4.0]]), opt, zero_grad_before_forward=True)
    model.w.grad = torch.tensor([100.0, 100.0])  # stale gradient must be cleared
    trainer.train(0, 1)
    assert torch.allclose(model.w.detach(), torch.tensor([0.8, 1.6]))


def test_trainer_state_dict_holds_iteration_optimizer_and_hook_states():
    model = _Model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    trainer = SimpleTrainer(model, _loader([[1.0, 1.0]] * 2), opt)
    trainer.register_hooks([hooks.LRScheduler(scheduler=sched), hooks.IterationTimer()])
    trainer.train(0, 2)
    sd = trainer.state_dict()
    assert sd["iteration"] == 2
    assert set(sd["hooks"]) == {"LRScheduler"}
    assert sd["hooks"]["LRScheduler"]["last_epoch"] == 2
    assert "state" in sd["optimizer"] and "param_groups" in sd["optimizer"]

    model2 = _Model()
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.1, momentum=0.9)
    sched2 = torch.optim.lr_scheduler.StepLR(opt2, step_size=1, gamma=0.5)
    trainer2 = SimpleTrainer(model2, [], opt2)
    trainer2.register_hooks([hooks.LRScheduler(scheduler=sched2)])
    trainer2.load_state_dict(sd)
    assert trainer2.iter == 2
    assert sched2.last_epoch == 2
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.025)
    assert torch.equal(opt2.state[model2.w]["momentum_buffer"], opt.state[model.w]["momentum_buffer"])


def test_amp_trainer_refuses_fp16_on_cpu():
    model = _Model()
    with pytest.raises(ValueError, match="float16 mixed precision is not supported on CPU"):
        AMPTrainer(model, [], torch.optim.SGD(model.parameters(), lr=0.1), precision=torch.float16)
    with pytest.raises(ValueError, match="GradScaler is only used with float16 on CUDA"):
        AMPTrainer(model, [], torch.optim.SGD(model.parameters(), lr=0.1), grad_scaler=torch.amp.GradScaler("cpu"))


def test_amp_trainer_bf16_on_cpu_autocasts_and_clips():
    class Lin(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 1, bias=False)
            with torch.no_grad():
                self.fc.weight.copy_(torch.tensor([[3.0, 4.0]]))
            self.seen_dtype = None

        def forward(self, x):
            y = self.fc(x)
            self.seen_dtype = y.dtype
            return {"loss": y.float().sum()}

    model = Lin()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    trainer = AMPTrainer(model, _loader([[[3.0, 4.0]]]), opt)
    assert trainer.precision == torch.bfloat16 and trainer.grad_scaler is None
    trainer.register_hooks([hooks.GradientClipping("norm", clip_value=1.0)])
    trainer.train(0, 1)
    assert model.seen_dtype == torch.bfloat16
    # grad = x = (3, 4), norm 5 -> clipped to (0.6, 0.8); w = (3, 4) - (0.6, 0.8)
    assert torch.allclose(model.fc.weight.detach(), torch.tensor([[2.4, 3.2]]), atol=1e-6)
    assert trainer.storage.latest()["grad_norm"][0] == pytest.approx(5.0)
    assert "grad_scaler" not in trainer.state_dict()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_amp_trainer_fp16_on_cuda_unscales_before_hooks():
    class Lin(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 1, bias=False)
            with torch.no_grad():
                self.fc.weight.copy_(torch.tensor([[3.0, 4.0]]))

        def forward(self, x):
            return {"loss": self.fc(x.to(self.fc.weight.device)).float().sum()}

    seen = []
    model = Lin().cuda()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    # init_scale keeps the scaled fp16 gradients finite (65536 * 4 would overflow)
    scaler = torch.amp.GradScaler("cuda", init_scale=1024.0)
    trainer = AMPTrainer(model, _loader([[[3.0, 4.0]]]), opt, grad_scaler=scaler)
    assert trainer.precision == torch.float16 and trainer.grad_scaler.is_enabled()
    trainer.register_hooks(
        [hooks.CallbackHook(after_backward=lambda t: seen.append(model.fc.weight.grad.detach().cpu().clone()))]
    )
    trainer.train(0, 1)
    assert torch.allclose(seen[0], torch.tensor([[3.0, 4.0]]))  # true, unscaled gradient
    assert torch.allclose(model.fc.weight.detach().cpu(), torch.tensor([[0.0, 0.0]]))
    assert "grad_scaler" in trainer.state_dict()


def test_nan_loss_raises_on_non_main_rank(monkeypatch):
    from d2lite.utils import comm

    monkeypatch.setattr(comm, "is_main_process", lambda: False)
    monkeypatch.setattr(comm, "get_rank", lambda: 1)
    monkeypatch.setattr(comm, "gather", lambda data, dst=0: [])
    model = _Model()
    trainer = SimpleTrainer(
        model, _loader([[1.0, 1.0], [float("nan"), 1.0]]), torch.optim.SGD(model.parameters(), lr=0.1)
    )
    with pytest.raises(FloatingPointError, match=r"iteration=1!\nloss_dict = .*\(rank 1\)"):
        trainer.train(0, 2)
    # a finite loss on a non-main rank puts no averaged metrics
    assert "total_loss" not in trainer.storage.histories()


def test_two_stateful_hooks_of_one_type_rejected_at_registration():
    model = _Model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = SimpleTrainer(model, [], opt)
    trainer.register_hooks([hooks.LRScheduler(scheduler=torch.optim.lr_scheduler.StepLR(opt, 1))])
    with pytest.raises(ValueError, match=r"more than one stateful hook of type \['LRScheduler'\]"):
        trainer.register_hooks([hooks.LRScheduler(scheduler=torch.optim.lr_scheduler.StepLR(opt, 1))])
    # stateless hooks may repeat
    trainer.register_hooks([hooks.IterationTimer(), hooks.IterationTimer()])


# ------------------------------------------------------------------ async_write_metrics
_TIMING = ("data_time", "rank_data_time", "time")


def _metrics_run(tmp_path, trainer_cls=SimpleTrainer, name="run", **kwargs):
    """Train _Model 6 iterations with an LR schedule, per-iteration JSON writing and
    checkpointing; return the metrics.json lines (timings dropped), the storage
    histories seen by an after_train hook, and the final weights."""
    from d2lite.checkpoint import DetectionCheckpointer
    from d2lite.utils.events import JSONWriter

    torch.manual_seed(0)
    model = _Model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    data = [[float(i), 1.0 + i / 3] for i in range(6)]
    trainer = trainer_cls(model, _loader(data), opt, **kwargs)
    seen = {}
    out = tmp_path / name
    trainer.register_hooks(
        [
            hooks.LRScheduler(scheduler=torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)),
            hooks.PeriodicCheckpointer(DetectionCheckpointer(model, str(out), trainer=trainer), period=2),
            hooks.PeriodicWriter([JSONWriter(str(out / "metrics.json"), window_size=2)], period=1),
            hooks.CallbackHook(
                after_train=lambda t: seen.update(
                    {k: [v for v, _ in h.values()] for k, h in t.storage.histories().items() if k not in _TIMING}
                )
            ),
        ]
    )
    trainer.train(0, 6)
    lines = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    lines = [{k: v for k, v in line.items() if k not in _TIMING} for line in lines]
    ckpt = torch.load(out / "model_0000003.pth", weights_only=False)
    return lines, seen, model.w.detach().clone(), ckpt


@pytest.mark.parametrize("trainer_cls", [SimpleTrainer, AMPTrainer])
def test_async_write_metrics_gives_the_same_results_as_synchronous(tmp_path, trainer_cls):
    sync = _metrics_run(tmp_path, trainer_cls, "sync")
    asyn = _metrics_run(tmp_path, trainer_cls, "async", async_write_metrics=True)
    assert sync[0] == asyn[0] and len(sync[0]) == 6  # metrics.json, line by line
    assert [line["iteration"] for line in asyn[0]] == list(range(6))
    assert all("total_loss" in line and "loss_a" in line and "lr" in line for line in asyn[0])
    assert sync[1] == asyn[1] and len(asyn[1]["total_loss"]) == 6  # what after_train hooks see
    assert torch.equal(sync[2], asyn[2])  # the weights
    assert sync[3]["iteration"] == asyn[3]["iteration"] == 3
    assert torch.equal(sync[3]["model"]["w"], asyn[3]["model"]["w"])


class _ObservedTrainer(SimpleTrainer):
    """Records where and when the metrics are written; the write waits (up to 5 s) for the
    optimizer step of its iteration, which only returns in time if the write runs
    concurrently with it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.stepped = threading.Event()
        self.writes = []
        step = self.optimizer.step

        def observed_step(*a, **k):
            out = step(*a, **k)
            self.stepped.set()
            return out

        self.optimizer.step = observed_step

    def _write_metrics(self, loss_dict, data_time, prefix="", iter=None):
        overlapped = self.stepped.wait(timeout=5.0 if self.async_write_metrics else 0.0)
        self.writes.append((threading.current_thread().name, overlapped, iter))
        super()._write_metrics(loss_dict, data_time, prefix, iter)

    def run_step(self):
        self.stepped.clear()
        super().run_step()


def test_async_metrics_are_written_in_the_background_and_flushed_before_hooks():
    model = _Model()
    trainer = _ObservedTrainer(
        model, _loader([[1.0, 1.0]] * 3), torch.optim.SGD(model.parameters(), lr=0.1), async_write_metrics=True
    )
    seen = []
    trainer.register_hooks([hooks.CallbackHook(after_step=lambda t: seen.append(t.storage.latest()["total_loss"][1]))])
    trainer.train(0, 3)
    assert [(name.startswith("d2lite_write_metrics"), overlapped, it) for name, overlapped, it in trainer.writes] == [
        (True, True, 0),
        (True, True, 1),
        (True, True, 2),
    ]
    assert seen == [0, 1, 2]  # each after_step hook already saw its iteration's loss

    sync = _ObservedTrainer(model, _loader([[1.0, 1.0]]), torch.optim.SGD(model.parameters(), lr=0.1))
    sync.train(0, 1)
    assert sync.writes == [("MainThread", False, None)]  # default: written before the optimizer step


def test_async_nan_loss_raises_naming_the_iteration():
    log = []
    model = _Model()
    trainer = SimpleTrainer(
        model,
        _loader([[1.0, 1.0], [1.0, 1.0], [float("nan"), 1.0]]),
        torch.optim.SGD(model.parameters(), lr=0.1),
        async_write_metrics=True,
    )
    trainer.register_hooks([_RecordingHook(log)])
    with pytest.raises(FloatingPointError, match=r"Loss became infinite or NaN at iteration=2!"):
        trainer.train(0, 5)
    assert ("after_step", 2) not in log and log[-1] == ("after_train", 2)


def test_async_error_of_a_pending_write_does_not_hide_the_training_error(caplog):
    model = _Model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def failing_step(*args, **kwargs):
        raise RuntimeError("optimizer failed")

    opt.step = failing_step
    trainer = SimpleTrainer(model, _loader([[float("nan"), 1.0]]), opt, async_write_metrics=True)
    with pytest.raises(RuntimeError, match="optimizer failed"):
        trainer.train(0, 1)
    assert "Exception while writing the metrics of the last iteration" in caplog.text
    assert "FloatingPointError" in caplog.text


def test_async_trainer_trains_again_after_train():
    model = _Model()
    trainer = SimpleTrainer(
        model, _loader([[1.0, 1.0]] * 4), torch.optim.SGD(model.parameters(), lr=0.1), async_write_metrics=True
    )
    trainer.train(0, 2)
    trainer.train(2, 4)  # the executor shut down by after_train was replaced
    assert [it for _, it in trainer.storage.history("total_loss").values()] == [2, 3]
