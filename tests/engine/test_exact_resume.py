"""ExactResume + stop signals, in-process on a toy model: a run stopped by a signal saves
a checkpoint and resumes to exactly the uninterrupted run (weights, optimizer, data
stream with aspect-ratio grouping and random augmentations, dropout, running state,
smoothed metrics)."""

import json
import logging
import os
import signal

import numpy as np
import pytest
import torch
from torch import nn

from d2lite.checkpoint import DetectionCheckpointer
from d2lite.data import DatasetFromList, MapDataset, build_batch_data_loader
from d2lite.data.samplers import TrainingSampler
from d2lite.engine import HookBase, SimpleTrainer, hooks
from d2lite.engine.exact_resume import ExactResume, iteration_seed
from d2lite.engine.preemption import StopSignals, TrainingInterrupted, parse_signals, resume_command
from d2lite.utils.events import JSONWriter

MAX_ITER = 12
PERIOD = 4


def _augment(d):
    x = torch.tensor(d["x"]) + torch.from_numpy(np.random.normal(0, 0.1, 3)).float()  # an "augmentation"
    return {"x": x, "y": d["y"], "width": d["width"], "height": d["height"]}


def _loader(batch=2, sampler_seed=1):
    g = np.random.default_rng(0)
    dicts = [
        {"x": g.normal(size=3).tolist(), "y": float(i % 2), "width": 20 + 10 * (i % 3 == 0), "height": 25}
        for i in range(9)
    ]
    return build_batch_data_loader(
        MapDataset(DatasetFromList(dicts), _augment),
        TrainingSampler(9, seed=sampler_seed),
        batch,
        aspect_ratio_grouping=True,
    )


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.fc = nn.Linear(3, 4)
        self.out = nn.Linear(4, 1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        self.dropout = nn.Dropout(0.3)  # uses torch's global RNG
        self.normalizer = 1.0  # running state outside the state dict

    def running_state_dict(self):
        return {"normalizer": self.normalizer}

    def load_running_state_dict(self, state):
        self.normalizer = state["normalizer"]

    def forward(self, batch):
        x = torch.stack([d["x"] for d in batch])
        y = torch.tensor([[d["y"]] for d in batch])
        pred = self.out(self.dropout(torch.tanh(self.fc(x))))
        self.normalizer = 0.9 * self.normalizer + 0.1 * float(pred.detach().abs().mean())
        return {"loss_mse": ((pred - y) ** 2).mean() / self.normalizer, "loss_l1": 0.1 * (pred - y).abs().mean()}


class _SignalAt(HookBase):
    """Sends ``sig`` to this process before iteration ``k`` runs (the trainer is mid-iteration)."""

    def __init__(self, k, sig=signal.SIGTERM):
        self.k, self.sig = k, sig

    def before_step(self):
        if self.trainer.iter == self.k:
            os.kill(os.getpid(), self.sig)


class _SignalDuringSave(DetectionCheckpointer):
    """A checkpointer that receives more signals while it writes."""

    def save(self, name, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        super().save(name, **kwargs)


class _SwitchLoaderAt(HookBase):
    """Replaces the training loader before iteration ``k`` (as RTMDet's PipelineSwitchHook):
    the stage follows from the iteration, so a resumed run switches before its first step."""

    def __init__(self, k):
        self.k, self.switched = k, False

    def before_step(self):
        if not self.switched and self.trainer.iter >= self.k:
            self.trainer.reset_data_loader(lambda: _loader(batch=3, sampler_seed=2))
            self.switched = True


def _build(output_dir, extra_hooks=(), checkpointer_cls=DetectionCheckpointer, switch_at=None):
    os.makedirs(output_dir, exist_ok=True)
    model = _Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[6], gamma=0.3)
    stream = _loader()
    trainer = SimpleTrainer(model, stream, opt)
    ckpt = checkpointer_cls(model, str(output_dir), trainer=trainer)
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=sched),
            _SwitchLoaderAt(switch_at) if switch_at is not None else None,
            ExactResume(ckpt, None if switch_at is not None else stream, seed=5),  # None: the trainer's loader
            hooks.PeriodicCheckpointer(ckpt, period=PERIOD, max_iter=MAX_ITER),
            *extra_hooks,
            hooks.PeriodicWriter([JSONWriter(os.path.join(output_dir, "metrics.json"))], period=1),
        ]
    )
    return model, trainer, ckpt


def _resume(output_dir, **kwargs):
    model, trainer, ckpt = _build(output_dir, **kwargs)
    ckpt.resume_or_load("", resume=True)
    start = trainer.iter + 1
    trainer.train(start, MAX_ITER)
    return model, start


def _metrics(output_dir):
    """iteration -> list of the records written for it (a resumed run may write one twice)."""
    out = {}
    for line in open(os.path.join(output_dir, "metrics.json")):
        record = json.loads(line)
        if "total_loss" in record:
            out.setdefault(record["iteration"], []).append({k: v for k, v in record.items() if "time" not in k})
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    model, trainer, _ = _build(out)
    trainer.train(0, MAX_ITER)
    return out, {k: v.clone() for k, v in model.state_dict().items()}, model.normalizer


def _assert_same_as_reference(model, out, reference, resumed_from):
    ref_out, ref_weights, ref_normalizer = reference
    for k, v in model.state_dict().items():
        assert torch.equal(v, ref_weights[k]), k
    assert model.normalizer == ref_normalizer
    ref, got = _metrics(ref_out), _metrics(out)
    assert sorted(got) == list(range(MAX_ITER))
    for it in range(resumed_from, MAX_ITER):  # the smoothed medians too
        assert got[it][-1] == ref[it][0], it


def test_stop_signal_saves_then_resume_is_exact(tmp_path, reference):
    handler_before = signal.getsignal(signal.SIGTERM)
    _, trainer, ckpt = _build(tmp_path, extra_hooks=[_SignalAt(6)])
    with pytest.raises(TrainingInterrupted) as info:
        trainer.train(0, MAX_ITER)
    stopped = info.value
    assert (stopped.signal, stopped.iteration, stopped.exit_code) == (signal.SIGTERM, 6, 143)
    assert stopped.checkpoint == os.path.join(str(tmp_path), "model_0000006.pth")
    assert "Training stopped by SIGTERM after iteration 6 of 12" in stopped.message and "--resume" in stopped.message
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000006.pth"
    assert signal.getsignal(signal.SIGTERM) is handler_before  # handlers restored
    assert max(_metrics(tmp_path)) == 6  # the writers flushed the stop iteration
    state = torch.load(stopped.checkpoint, weights_only=False)["trainer"]["hooks"]["ExactResume"]
    assert state["seed"] == 5 and state["data_stream"]["positions"] == [trainer.data_loader._position]
    assert state["model_running_state"] == [{"": {"normalizer": trainer.model.normalizer}}]
    model, start = _resume(tmp_path)
    assert start == 7
    _assert_same_as_reference(model, tmp_path, reference, 7)


def test_crash_between_checkpoints_then_resume_is_exact(tmp_path, reference):
    class _Crash(HookBase):
        def after_step(self):
            if self.trainer.iter == 9:
                raise RuntimeError("simulated crash")

    _, trainer, ckpt = _build(tmp_path, extra_hooks=[_Crash()])
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer.train(0, MAX_ITER)
    assert ckpt.get_checkpoint_file().endswith("model_0000007.pth")
    model, start = _resume(tmp_path)
    assert start == 8
    _assert_same_as_reference(model, tmp_path, reference, 8)


def test_signals_while_saving_are_ignored(tmp_path, capfd):
    _, trainer, ckpt = _build(tmp_path, extra_hooks=[_SignalAt(2, signal.SIGUSR1)], checkpointer_cls=_SignalDuringSave)
    with pytest.raises(TrainingInterrupted) as info:
        trainer.train(0, MAX_ITER)
    assert info.value.signal == signal.SIGUSR1 and info.value.exit_code == 128 + signal.SIGUSR1
    checkpoint = torch.load(tmp_path / "model_0000002.pth", weights_only=False)  # complete and readable
    assert checkpoint["iteration"] == 2 and "ExactResume" in checkpoint["trainer"]["hooks"]
    err = capfd.readouterr().err
    assert "received SIGUSR1: stopping after the current iteration" in err
    assert "received SIGINT, already stopping on SIGUSR1: ignored" in err


def test_signal_during_the_last_iteration_finishes_normally(tmp_path, caplog):
    _, trainer, ckpt = _build(tmp_path, extra_hooks=[_SignalAt(MAX_ITER - 1)])
    with caplog.at_level(logging.WARNING, logger="d2lite.engine.exact_resume"):
        trainer.train(0, MAX_ITER)
    assert ckpt.get_checkpoint_file().endswith("model_final.pth")
    assert "training completes normally" in caplog.text


def test_checkpoint_without_exact_resume_state_resumes_with_a_warning(tmp_path, caplog):
    _, trainer, ckpt = _build(tmp_path)
    trainer.train(0, 5)  # checkpoint after iteration 3
    path = tmp_path / "model_0000003.pth"
    checkpoint = torch.load(path, weights_only=False)
    del checkpoint["trainer"]["hooks"]["ExactResume"]  # as saved before this feature
    torch.save(checkpoint, path)
    (tmp_path / "last_checkpoint").write_text("model_0000003.pth")
    with caplog.at_level(logging.WARNING, logger="d2lite.engine.exact_resume"):
        _resume(tmp_path)
    assert "the data stream restarts from its beginning" in caplog.text


def test_iteration_seeds():
    assert iteration_seed(0, 0, 0) != iteration_seed(0, 1, 0) != iteration_seed(0, 0, 1)
    assert iteration_seed(3, 1, 7) == iteration_seed(3, 1, 7)


def test_parse_signals():
    assert parse_signals(["SIGTERM", "int", 10, "SIGTERM"]) == (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
    with pytest.raises(ValueError, match=r"train.stop_signals: unknown signal 'SIGFOO'"):
        parse_signals(["SIGFOO"])
    with pytest.raises(ValueError, match="SIGKILL cannot be caught"):
        parse_signals(["SIGKILL"])


def test_stop_signals_install_and_restore():
    before = signal.getsignal(signal.SIGUSR2)
    stop = StopSignals(["SIGUSR2"])
    assert stop.install() and stop.received is None
    try:
        os.kill(os.getpid(), signal.SIGUSR2)
        assert stop.received == signal.SIGUSR2
    finally:
        stop.uninstall()
    assert signal.getsignal(signal.SIGUSR2) is before


def test_training_interrupted_exit_codes():
    e = TrainingInterrupted.from_exit_code(138)
    assert e.signal == signal.SIGUSR1 and e.exit_code == 138
    assert TrainingInterrupted.from_exit_code(1) is None
    assert TrainingInterrupted.from_exit_code(-15) is None


def test_resume_command(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    monkeypatch.delenv("SLURM_PROCID", raising=False)
    cmd = resume_command(["tools/train.py", "--config-file", "a b.py", "--resume", "train.max_iter=5"], cwd="/x y")
    assert cmd.startswith("cd '/x y' && ")
    assert cmd.endswith("tools/train.py --resume --config-file 'a b.py' train.max_iter=5")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert "same torchrun options" in resume_command(["t.py"])


def test_loader_replaced_mid_run_resumes_exactly(tmp_path):
    """The trainer's loader is replaced before iteration 5; a run resumed after that (from
    iteration 7) continues the replacement loader's stream."""
    model, trainer, _ = _build(tmp_path / "reference", switch_at=5)
    trainer.train(0, MAX_ITER)
    reference = (tmp_path / "reference", {k: v.clone() for k, v in model.state_dict().items()}, model.normalizer)

    class _Crash(HookBase):
        def after_step(self):
            if self.trainer.iter == 9:
                raise RuntimeError("simulated crash")

    out = tmp_path / "run"
    _, trainer, ckpt = _build(out, extra_hooks=[_Crash()], switch_at=5)
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer.train(0, MAX_ITER)
    state = torch.load(out / "model_0000007.pth", weights_only=False)["trainer"]["hooks"]["ExactResume"]
    assert state["data_stream"]["batch_size"] == 3  # the replacement loader's position was saved
    model, start = _resume(out, switch_at=5)
    assert start == 8
    _assert_same_as_reference(model, out, reference, 8)
