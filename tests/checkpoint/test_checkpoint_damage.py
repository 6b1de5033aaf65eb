"""Damaged checkpoint directories, interrupted saves and states that no longer fit."""

import logging
import os
import signal
import subprocess
import sys

import pytest
import torch
from torch import nn

from d2lite.checkpoint import CheckpointError, DetectionCheckpointer, IncompatibleCheckpointError, check_optimizer_state
from d2lite.engine import SimpleTrainer
from d2lite.engine.output_dir import remove_temporary_files


class _Step:
    """A checkpointable that records the step it was restored to."""

    def __init__(self, step=0):
        self.step = step

    def state_dict(self):
        return {"step": self.step}

    def load_state_dict(self, sd):
        self.step = sd["step"]


def _saved_run(tmp_path, steps=(1, 3, 5)):
    """A checkpoint directory with model_000000{1,3,5}.pth (model weight = step) and last_checkpoint."""
    for step in steps:
        model = nn.Linear(2, 1)
        with torch.no_grad():
            model.weight.fill_(step)
        DetectionCheckpointer(model, str(tmp_path), state=_Step(step)).save(f"model_{step:07d}")
    return tmp_path


def _resume(tmp_path):
    model, state = nn.Linear(2, 1), _Step()
    DetectionCheckpointer(model, str(tmp_path), state=state).resume_or_load("", resume=True)
    return state.step, float(model.weight[0, 0].detach())


@pytest.mark.parametrize(
    "damage, skipped",
    [
        (lambda d: (d / "last_checkpoint").write_text(""), "last_checkpoint is empty"),
        (lambda d: (d / "last_checkpoint").write_bytes(b"\x80\xff\xfe\x00garbage"), "last_checkpoint is not text"),
        (
            lambda d: (d / "last_checkpoint").write_text("model_0000099.pth"),
            "last_checkpoint names model_0000099.pth, which does not exist",
        ),
        (lambda d: (d / "last_checkpoint").unlink(), "last_checkpoint does not exist"),
    ],
    ids=["empty", "binary", "missing-file", "no-tag"],
)
def test_damaged_tag_falls_back_to_newest_checkpoint(tmp_path, caplog, damage, skipped):
    damage(_saved_run(tmp_path))
    with caplog.at_level(logging.WARNING):
        assert _resume(tmp_path) == (5, 5.0)
    assert skipped in caplog.text and "Resuming from" in caplog.text and "model_0000005.pth" in caplog.text
    assert "init_checkpoint" not in caplog.text


def test_truncated_checkpoint_is_skipped_for_the_previous_one(tmp_path, caplog):
    run = _saved_run(tmp_path)
    path = run / "model_0000005.pth"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with caplog.at_level(logging.WARNING):
        assert _resume(run) == (3, 3.0)
    assert "model_0000005.pth cannot be read" in caplog.text and "model_0000003.pth" in caplog.text


def test_intact_directory_resumes_silently_from_the_tag(tmp_path, caplog):
    run = _saved_run(tmp_path)
    (run / "last_checkpoint").write_text("model_0000003.pth")  # the tag wins over newer files
    with caplog.at_level(logging.WARNING):
        assert _resume(run) == (3, 3.0)
    assert "Skipped" not in caplog.text


def test_nothing_readable_raises_naming_last_checkpoint(tmp_path):
    run = _saved_run(tmp_path, steps=(1,))
    (run / "model_0000001.pth").write_bytes(b"not a zip")
    (run / "last_checkpoint").write_text("")
    with pytest.raises(CheckpointError) as e:
        _resume(run)
    message = str(e.value)
    assert "last_checkpoint is empty" in message and "model_0000001.pth cannot be read" in message
    assert "init_checkpoint" not in message


def test_empty_directory_starts_from_scratch(tmp_path):
    assert not DetectionCheckpointer(nn.Linear(2, 1), str(tmp_path)).has_checkpoint()
    assert _resume(tmp_path)[0] == 0


# ------------------------------------------------------------- optimizer state fit


def test_check_optimizer_state_names_parameters_and_shapes():
    old = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    opt = torch.optim.Adam(old.parameters())
    old(torch.randn(5, 4)).sum().backward()
    opt.step()
    saved = opt.state_dict()
    new = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 5))  # a changed head
    new_opt = torch.optim.Adam(new.parameters())
    names = {id(p): n for n, p in new.named_parameters()}
    with pytest.raises(IncompatibleCheckpointError) as e:
        check_optimizer_state(new_opt, saved, names)
    assert "1.weight (saved (2, 3), model (5, 3))" in str(e.value) and "1.bias (saved (2,), model (5,))" in str(e.value)
    assert "0.weight" not in str(e.value)
    check_optimizer_state(torch.optim.Adam(old.parameters()), saved)  # the same model fits
    with pytest.raises(IncompatibleCheckpointError, match="1 parameter groups, the optimizer 2"):
        check_optimizer_state(torch.optim.Adam([{"params": [new[0].weight]}, {"params": [new[0].bias]}]), saved)


def test_trainer_refuses_an_optimizer_state_for_another_model():
    class M(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.fc = nn.Linear(2, n)

    old = M(3)
    trainer = SimpleTrainer(old, [], torch.optim.AdamW(old.parameters()))
    old.fc(torch.ones(1, 2)).sum().backward()
    trainer.optimizer.step()
    saved = trainer.state_dict()
    new = M(5)
    resumed = SimpleTrainer(new, [], torch.optim.AdamW(new.parameters()))
    with pytest.raises(IncompatibleCheckpointError, match=r"fc\.weight \(saved \(3, 2\), model \(5, 2\)\)"):
        resumed.load_state_dict(saved)
    assert resumed.iter == 0 and not resumed.optimizer.state  # nothing restored
    SimpleTrainer(M(3), [], torch.optim.AdamW(M(3).parameters())).load_state_dict(saved)  # same model: fine


# ------------------------------------------------------------- interrupted saves

_SLOW_SAVE = """
import os, signal, sys, time
import torch
import d2lite.checkpoint.detection_checkpoint as dc

out, sig = sys.argv[1], sys.argv[2]
# Python's Ctrl-C handler, also when this test runs in a background job (whose shell made
# the children ignore SIGINT, so Python would not install it).
signal.signal(signal.SIGINT, signal.default_int_handler)


class Interrupting:
    # The checkpoint's temporary file; once 10 MB are written, SIGINT (as from Ctrl-C)
    # arrives, or the process waits to be killed.
    def __init__(self, f):
        self.f, self.written, self.fired = f, 0, False

    def write(self, data):
        self.written += len(data)
        if self.written > 10_000_000 and not self.fired:
            self.fired = True
            print("WRITING", flush=True)
            if sig == "INT":
                os.kill(os.getpid(), signal.SIGINT)
            else:
                time.sleep(300)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.f.__exit__(*exc)


real_fdopen = os.fdopen
dc.os.fdopen = lambda *a, **k: Interrupting(real_fdopen(*a, **k))


class Big:
    def state_dict(self):
        return {f"t{i}": torch.zeros(1_000_000) for i in range(10)}  # 40 MB in 10 records

    def load_state_dict(self, sd):
        pass


dc.DetectionCheckpointer(torch.nn.Linear(2, 2), out, big=Big()).save("model_0000007")
print("SAVED", flush=True)
"""


def test_ctrl_c_during_a_save_is_a_keyboard_interrupt_and_leaves_no_temp_file(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", _SLOW_SAVE, str(tmp_path), "INT"], capture_output=True, text=True, timeout=300
    )
    assert "WRITING" in proc.stdout and "SAVED" not in proc.stdout, proc.stdout + proc.stderr
    assert proc.returncode == -signal.SIGINT, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "KeyboardInterrupt", proc.stderr
    assert "unexpected pos" not in proc.stderr and "RuntimeError" not in proc.stderr
    assert os.listdir(tmp_path) == []  # no temporary file, no checkpoint, no tag


def test_a_killed_save_leaves_only_a_temporary_file(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_SAVE, str(tmp_path), "KILL"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "WRITING"
    finally:
        proc.kill()
        proc.wait()
    left = os.listdir(tmp_path)
    assert len(left) == 1 and left[0].startswith(".model_0000007.pth.") and left[0].endswith(".tmp"), left
    assert remove_temporary_files(str(tmp_path)) == left and os.listdir(tmp_path) == []
