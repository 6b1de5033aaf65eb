"""tools/lazyconfig_train_net.py keeps train.output_dir the user's record: one run at a
time, no silent mixing or replacing, damaged checkpoints never strand a run, a diverging
run says so, and mistakes stop before anything is written, in one line."""

import hashlib
import json
import shutil
import signal
import subprocess
import sys
import time

import pytest
from helpers import EVAL_SMALL, QUICK_CONFIG, REPO_ROOT, SHORT, run_tool

# Outcomes that do not depend on the float path (make test-1thread skips them), except divergence.
pytestmark = pytest.mark.slow
onepass = pytest.mark.onepass

# No evaluation: these tests are about the run's files, not its AP.
NO_EVAL = ["dataloader.evaluator=None"]


def _digests(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


def _error_line(proc, fail_fast=True):
    """The one line an error prints, last (no traceback; for a fail-fast error, no
    environment table or anything else before it either)."""
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    if fail_fast:
        assert "Environment info" not in proc.stdout + proc.stderr and "sys.platform" not in proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and proc.stderr.strip().splitlines()[-1] == errors[0], proc.stderr
    return errors[0]


def _copy_run(trained_run, tmp_path, name="run"):
    run = tmp_path / name
    shutil.copytree(trained_run[0], run)
    return run


def _train(out, *extra, resume=False):
    flags = ["--resume"] if resume else []
    return run_tool(
        "lazyconfig_train_net.py",
        "--config-file",
        QUICK_CONFIG,
        *flags,
        *SHORT,
        *NO_EVAL,
        *extra,
        f"train.output_dir={out}",
    )


# ----------------------------------------------------------------------- one run at a time

_KILLED_SAVE = """
import os, sys, time
import torch
import d2lite.checkpoint.detection_checkpoint as dc

real_fdopen = os.fdopen

class Stall:  # the save's temporary file: stall after the first bytes, to be killed
    def __init__(self, f):
        self.f = f
    def write(self, data):
        n = self.f.write(data)
        self.f.flush()
        print("WRITING", flush=True)
        time.sleep(300)
        return n
    def __getattr__(self, name):
        return getattr(self.f, name)
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        return self.f.__exit__(*exc)

dc.os.fdopen = lambda *a, **k: Stall(real_fdopen(*a, **k))
dc.DetectionCheckpointer(torch.nn.Linear(2, 2), sys.argv[1]).save("model_0000099")
"""


@onepass
def test_two_runs_into_one_directory_then_a_killed_run_is_resumed(tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen(
        [
            sys.executable,
            str(REPO_ROOT / "tools" / "lazyconfig_train_net.py"),
            "--config-file",
            QUICK_CONFIG,
            *SHORT,
            *NO_EVAL,
            "train.max_iter=100000",
            "train.checkpointer.period=2",
            f"train.output_dir={out}",
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 300
        while not (out / "model_0000001.pth").exists():  # training is under way
            assert first.poll() is None and time.time() < deadline, "the first run did not start training"
            time.sleep(0.5)
        second = _train(out)
        line = _error_line(second)
        assert f"train.output_dir={out} is in use by process {first.pid} " in line
        assert "lazyconfig_train_net.py" in line  # the holder's command line
        assert first.poll() is None  # the first run goes on
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert (out / "run.lock").exists()  # a killed run cannot clean up
    # The SIGKILL may have caught the first run in the middle of a save: its temporary file stays too.
    killed_run_temp = {p.name for p in out.iterdir() if p.name.endswith(".tmp")}
    # A save killed half-way leaves its temporary file.
    saver = subprocess.Popen([sys.executable, "-c", _KILLED_SAVE, str(out)], stdout=subprocess.PIPE, text=True)
    assert saver.stdout.readline().strip() == "WRITING"
    saver.kill()
    saver.wait()
    temp = sorted({p.name for p in out.iterdir() if p.name.endswith(".tmp")} - killed_run_temp)
    assert len(temp) == 1 and temp[0].startswith(".model_0000099.pth."), temp

    last = int(json.loads((out / "metrics.json").read_text().splitlines()[-1])["iteration"])
    resumed = _train(out, f"train.max_iter={last + 3}", resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    console = resumed.stdout + resumed.stderr
    assert f"was left by process {first.pid}" in console and "no longer running" in console
    removed = sorted(killed_run_temp | set(temp))
    assert f"Removed temporary files of an interrupted save from {out}: {', '.join(removed)}" in console
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
    assert not (out / "run.lock").exists()  # released at exit
    assert (out / "model_final.pth").exists()


# ------------------------------------------------------------------ no silent mixing


@onepass
def test_rerun_into_a_finished_directory_is_refused_until_overwrite(trained_run, tmp_path):
    run = _copy_run(trained_run, tmp_path)
    before = _digests(run)
    line = _error_line(_train(run, "train.max_iter=2"))
    assert f"train.output_dir={run} already holds a previous run" in line
    assert "--resume" in line and "--overwrite" in line and "model_0000001.pth" in line
    assert _digests(run) == before  # nothing touched

    proc = run_tool(
        "lazyconfig_train_net.py",
        "--config-file",
        QUICK_CONFIG,
        "--overwrite",
        *SHORT,
        *NO_EVAL,
        "train.max_iter=2",
        f"train.output_dir={run}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--overwrite: deleted the previous run" in proc.stdout + proc.stderr
    # Only the new run is left: no model_0000003.pth or inference/ of the old one, metrics of 2 iterations.
    assert sorted(p.name for p in run.glob("*.pth")) == ["model_0000001.pth", "model_final.pth"]
    assert not (run / "inference").exists()
    iterations = [json.loads(line)["iteration"] for line in (run / "metrics.json").read_text().splitlines()]
    assert iterations == [0, 1]
    manifest = json.loads((run / "manifest.json").read_text())
    assert len(manifest["history"]) == 1 and "--overwrite" in manifest["command_line"]


@onepass
def test_eval_only_writes_into_its_own_subdirectory(trained_run, tmp_path):
    run = _copy_run(trained_run, tmp_path)
    before = _digests(run)
    proc = run_tool(
        "lazyconfig_train_net.py",
        "--config-file",
        QUICK_CONFIG,
        "--eval-only",
        EVAL_SMALL,
        f"train.init_checkpoint={run / 'model_final.pth'}",
        f"train.output_dir={run}",
        "dataloader.test.num_workers=0",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _digests(run) == before  # config.yaml, manifest.json, log.txt, metrics... untouched
    evaluation = run / "eval" / "model_final"
    for name in ("config.yaml", "manifest.json", "log.txt", "inference/coco_instances_results.json"):
        assert (evaluation / name).is_file(), name
    assert json.loads((evaluation / "manifest.json").read_text())["args"]["eval_only"] is True


@onepass
def test_mistakes_stop_before_anything_is_written_in_one_line(trained_run, tmp_path):
    run = _copy_run(trained_run, tmp_path)
    before = _digests(run)
    line = _error_line(
        run_tool(
            "lazyconfig_train_net.py",
            "--config-file",
            QUICK_CONFIG,
            "--eval-only",
            EVAL_SMALL,
            f"train.init_checkpoint={run / 'model_9999999.pth'}",
            f"train.output_dir={run}",
        )
    )
    assert f"train.init_checkpoint={run / 'model_9999999.pth'} does not exist" in line
    assert _digests(run) == before and not (run / "eval").exists()

    line = _error_line(_train(tmp_path / "fresh", f"train.init_checkpoint={tmp_path / 'weights.pth'}"))
    assert "weights.pth does not exist" in line
    assert list((tmp_path / "fresh").iterdir()) == []  # created empty, nothing written

    (tmp_path / "a_file").write_text("")
    assert "is a file, not a directory" in _error_line(_train(tmp_path / "a_file"))


# ------------------------------------------------------- damaged checkpoints and changed models


def _damage_tag(run, text):
    (run / "last_checkpoint").write_bytes(text)


@onepass
@pytest.mark.parametrize(
    "damage, skipped",
    [
        (lambda run: _damage_tag(run, b""), "last_checkpoint is empty"),
        (lambda run: _damage_tag(run, b"\x80\x04\x95\xff\xfe garbage"), "last_checkpoint is not text"),
        (
            lambda run: _damage_tag(run, b"model_0000009.pth"),
            "last_checkpoint names model_0000009.pth, which does not exist",
        ),
        (
            lambda run: (run / "model_final.pth").write_bytes((run / "model_final.pth").read_bytes()[:100000]),
            "model_final.pth cannot be read",
        ),
    ],
    ids=["empty", "binary", "missing-file", "truncated-checkpoint"],
)
def test_resume_falls_back_over_a_damaged_last_checkpoint(trained_run, tmp_path, damage, skipped):
    run = _copy_run(trained_run, tmp_path)
    damage(run)
    proc = _train(run, "train.max_iter=5", resume=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    console = proc.stdout + proc.stderr
    expected_from = "model_0000003.pth" if "model_final.pth cannot be read" in skipped else "model_final.pth"
    assert f"Resuming from {run / expected_from}, the newest checkpoint in {run} that loads" in console
    assert skipped in console and "init_checkpoint" not in console
    assert "Starting training from iteration 4" in console  # both hold iteration 3


@onepass
def test_resume_after_changing_num_classes_reports_shapes_and_refuses(trained_run, tmp_path):
    run = _copy_run(trained_run, tmp_path)
    config_before = (run / "config.yaml").read_bytes()
    proc = _train(run, "train.max_iter=6", "model.num_classes=5", resume=True)
    console = proc.stdout + proc.stderr
    # One table: checkpoint shape vs model shape (9 anchors x 3 classes -> 9 x 5).
    assert "2 parameter(s) of the checkpoint have another shape than in the model" in console
    assert "| head.cls_score.weight | (27, 64, 3, 3) | (45, 64, 3, 3) |" in console
    assert "| head.cls_score.bias   | (27,)          | (45,)          |" in console
    line = _error_line(proc, fail_fast=False)  # found once the model exists
    assert "the saved optimizer state does not fit 2 parameter(s) of the model" in line
    assert f"train.init_checkpoint={run / 'model_final.pth'}" in line and "new train.output_dir" in line
    assert "must match the size" not in console  # no crash inside Adam
    assert (run / "config.yaml").read_bytes() == config_before


@onepass
def test_resume_records_its_command_and_config_changes(trained_run, tmp_path):
    run = _copy_run(trained_run, tmp_path)
    config_before = (run / "config.yaml").read_bytes()
    proc = _train(run, "train.max_iter=5", resume=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run / "config.yaml").read_bytes() == config_before
    manifest = json.loads((run / "manifest.json").read_text())
    assert [h["resume"] for h in manifest["history"]] == [False, True]
    changes = manifest["history"][1]["config_changes"]
    assert changes["train.max_iter"] == [4, 5] and changes["dataloader.evaluator"][1] is None
    assert changes["dataloader.evaluator"][0]["_target_"] == "d2lite.evaluation.COCOEvaluator"
    assert "--resume" in manifest["history"][1]["command_line"]


# ------------------------------------------------------------------------------ divergence


@pytest.mark.parametrize("lr", ["1e6", "1e2"])
def test_diverging_giou_run_names_iteration_and_loss_terms(tmp_path, lr):
    """The demo config (GIoU box loss) with a learning rate far too high: the run stops with
    FloatingPointError naming the iteration and each loss term, not with "bad box"; at 1e2
    the losses first grow a million-fold while finite, which is warned about once."""
    proc = _train(tmp_path / "diverge", f"optimizer.lr={lr}", "train.max_iter=20")
    assert proc.returncode != 0
    console = proc.stdout + proc.stderr
    assert "bad box" not in console
    lines = proc.stderr.strip().splitlines()
    error = max(i for i, line in enumerate(lines) if line.startswith("FloatingPointError: Loss became infinite or NaN"))
    assert "at iteration=" in lines[error]
    assert lines[error + 1].startswith("loss_dict = {'loss_cls': ") and "'loss_box_reg': " in lines[error + 1]
    assert "Non-finite:" in lines[error + 2] and "optimizer.lr" in lines[error + 2]
    warnings = console.count("the training may be diverging")
    if lr == "1e2":
        assert warnings == 1 and console.index("the training may be diverging") < console.index("FloatingPointError")
