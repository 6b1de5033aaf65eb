"""One run per output directory: the lock, stale locks, previous runs, temporary files,
and prepare_output_dir's fail-fast checks."""

import json
import os
import signal
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from d2lite.engine.lazy_train import ConfigError, prepare_output_dir
from d2lite.engine.output_dir import (
    LOCK_FILE,
    OutputDirError,
    OutputDirLock,
    clear_previous_run,
    eval_output_dir,
    previous_run_files,
    remove_temporary_files,
)


def _touch(path, text="x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_lock_is_exclusive_names_owner_and_is_removed_on_release(tmp_path):
    out = tmp_path / "run"
    first = OutputDirLock(str(out)).acquire()
    owner = json.loads((out / LOCK_FILE).read_text())
    assert owner["pid"] == os.getpid() and owner["command_line"]
    with pytest.raises(OutputDirError) as e:
        OutputDirLock(str(out)).acquire()  # a second open file: flock refuses it
    message = str(e.value)
    assert str(out) in message and f"process {os.getpid()}" in message
    first.release()
    assert not (out / LOCK_FILE).exists()
    with OutputDirLock(str(out)) as again:  # free again
        assert again.locked and again.stale_owner is None
    assert not (out / LOCK_FILE).exists()


_HOLD_LOCK = """
import sys, time
from d2lite.engine.output_dir import OutputDirLock
OutputDirLock(sys.argv[1]).acquire()
print("LOCKED", flush=True)
time.sleep(120)
"""


def test_lock_of_a_live_process_refused_and_of_a_killed_one_reported_stale(tmp_path, caplog):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "LOCKED"
        with pytest.raises(OutputDirError, match=f"in use by process {proc.pid} "):
            OutputDirLock(str(out)).acquire()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (out / LOCK_FILE).exists()  # a killed run cannot clean up
    lock = OutputDirLock(str(out))
    with caplog.at_level("WARNING"):
        lock.acquire()
    try:
        assert lock.stale_owner["pid"] == proc.pid
        assert f"process {proc.pid}" in caplog.text and "no longer running" in caplog.text
        assert json.loads((out / LOCK_FILE).read_text())["pid"] == os.getpid()
    finally:
        lock.release()


def test_previous_run_files_clear_and_temporary_files(tmp_path):
    out = tmp_path
    for name in ("model_0000009.pth", "model_final.pth", "last_checkpoint", "metrics.json", "log.txt", "config.yaml"):
        _touch(out / name)
    _touch(out / "events.out.tfevents.1.host.1.0")
    _touch(out / "inference" / "coco_instances_results.json")
    _touch(out / "my_notes.txt")
    _touch(out / ".model_0000011.pth.k2j4x9ab.tmp")
    _touch(out / ".last_checkpoint.a1b2c3d4.tmp")
    assert previous_run_files(str(out)) == [
        "events.out.tfevents.1.host.1.0",
        "last_checkpoint",
        "metrics.json",
        "model_0000009.pth",
        "model_final.pth",
    ]
    assert remove_temporary_files(str(out)) == [".last_checkpoint.a1b2c3d4.tmp", ".model_0000011.pth.k2j4x9ab.tmp"]
    removed = clear_previous_run(str(out))
    assert "inference/" in removed and "config.yaml" in removed and "log.txt" in removed
    assert sorted(os.listdir(out)) == ["my_notes.txt"]  # the user's own file stays
    assert previous_run_files(str(tmp_path / "missing")) == []


def test_eval_output_dir(tmp_path):
    run = tmp_path / "run"
    assert eval_output_dir(str(run), str(run / "model_final.pth")) == str(run)  # no training run there: itself
    _touch(run / "config.yaml")
    _touch(run / "inference" / "coco_instances_results.json")  # an earlier evaluation: still itself
    assert eval_output_dir(str(run), str(run / "model_final.pth")) == str(run)
    _touch(run / "model_final.pth")  # a training run: a subdirectory named after the checkpoint
    assert eval_output_dir(str(run), str(run / "model_final.pth")) == str(run / "eval" / "model_final")
    assert eval_output_dir(str(run), "detectron2://R-50.pkl") == str(run / "eval" / "R-50")
    assert eval_output_dir(str(run), "w/model.pth?matching_heuristics=True") == str(run / "eval" / "model")


def _cfg(output_dir, init=""):
    return OmegaConf.create({"train": {"output_dir": str(output_dir), "init_checkpoint": str(init)}})


def test_prepare_refuses_a_fresh_run_over_a_previous_one(tmp_path):
    _touch(tmp_path / "model_final.pth")
    _touch(tmp_path / "metrics.json")
    with pytest.raises(ConfigError) as e:
        prepare_output_dir(_cfg(tmp_path))
    message = str(e.value)
    assert str(tmp_path) in message and "--resume" in message and "--overwrite" in message
    assert "train.output_dir" in message and "\n" not in message
    assert not (tmp_path / LOCK_FILE).exists()  # released on the error
    with prepare_output_dir(_cfg(tmp_path), resume=True):  # continuing it is fine
        assert (tmp_path / "metrics.json").exists()
    with prepare_output_dir(_cfg(tmp_path), overwrite=True):  # so is starting over
        assert sorted(os.listdir(tmp_path)) == [LOCK_FILE]


def test_prepare_resume_without_checkpoint_over_metrics_is_refused(tmp_path):
    _touch(tmp_path / "metrics.json")
    with pytest.raises(ConfigError, match="holds no checkpoint to resume from"):
        prepare_output_dir(_cfg(tmp_path), resume=True)


def test_prepare_fail_fast_checks(tmp_path):
    with pytest.raises(ConfigError, match=r"train.init_checkpoint=.*nope.pth does not exist"):
        prepare_output_dir(_cfg(tmp_path / "a", tmp_path / "nope.pth"))
    with pytest.raises(ConfigError, match="--eval-only evaluates train.init_checkpoint"):
        prepare_output_dir(_cfg(tmp_path / "b"), eval_only=True)
    with pytest.raises(ConfigError, match=r"train.init_checkpoint=.*nope.pth does not exist"):
        prepare_output_dir(_cfg(tmp_path / "c", tmp_path / "nope.pth"), eval_only=True)
    _touch(tmp_path / "file")
    with pytest.raises(ConfigError, match="is a file, not a directory"):
        prepare_output_dir(_cfg(tmp_path / "file"))
    if os.geteuid() != 0:  # root may write anywhere
        (tmp_path / "ro").mkdir(mode=0o500)
        with pytest.raises(ConfigError, match="not writable"):
            prepare_output_dir(_cfg(tmp_path / "ro"))
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()  # nothing written


def test_prepare_eval_only_uses_its_own_subdirectory_and_removes_temp_files(tmp_path):
    run = tmp_path / "run"
    for name in ("model_final.pth", "config.yaml", "manifest.json", "metrics.json"):
        _touch(run / name, name)
    _touch(run / ".model_0000005.pth.abcdefgh.tmp")
    cfg = _cfg(run, run / "model_final.pth")
    with prepare_output_dir(cfg, eval_only=True):
        assert cfg.train.output_dir == str(run / "eval" / "model_final")
        assert (run / "eval" / "model_final" / LOCK_FILE).exists()
    assert (run / ".model_0000005.pth.abcdefgh.tmp").exists()  # the training dir is not touched
    with prepare_output_dir(_cfg(run), resume=True):  # the training run's own start cleans it up
        assert not (run / ".model_0000005.pth.abcdefgh.tmp").exists()
    assert (run / "config.yaml").read_text() == "config.yaml"


def test_prepare_eval_only_into_another_directory_writes_there_and_replaces_an_earlier_evaluation(tmp_path, caplog):
    _touch(tmp_path / "run" / "model_final.pth")
    cfg = _cfg(tmp_path / "evaluation", tmp_path / "run" / "model_final.pth")
    with prepare_output_dir(cfg, eval_only=True):
        assert cfg.train.output_dir == str(tmp_path / "evaluation")
    _touch(tmp_path / "evaluation" / "config.yaml")
    _touch(tmp_path / "evaluation" / "inference" / "coco_instances_results.json")
    _touch(tmp_path / "evaluation" / "notes.txt")
    with caplog.at_level("WARNING"), prepare_output_dir(cfg, eval_only=True):
        assert sorted(os.listdir(tmp_path / "evaluation")) == ["notes.txt", LOCK_FILE]
    assert "Replacing the previous evaluation" in caplog.text


def test_prepare_on_other_processes_takes_no_lock(tmp_path):
    _touch(tmp_path / "model_final.pth")
    with prepare_output_dir(_cfg(tmp_path), main_process=False):  # only the main process checks and locks
        assert not (tmp_path / LOCK_FILE).exists()
