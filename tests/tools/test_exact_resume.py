"""Exact, preemption-safe resume through tools/lazyconfig_train_net.py on the shapes data:
a run killed (SIGKILL) between checkpoints or stopped (SIGTERM) mid-way and resumed ends
bit-identical to an uninterrupted run (metrics.json per iteration, final weights), with
0 and 2 data-loader workers and aspect-ratio grouping; 2 processes (spawned, or started
like srun with SLURM variables) stop together when one of them gets SIGTERM."""

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from helpers import QUICK_CONFIG, REPO_ROOT

# onepass: the outcome does not depend on the float path (make test-1thread skips it).
pytestmark = [pytest.mark.slow, pytest.mark.onepass]

N = 10  # iterations; checkpoints after iterations 3 and 7, model_final after 9
SMALL = [
    f"train.max_iter={N}",
    "train.eval_period=0",  # evaluate once, after training
    "train.checkpointer.period=4",
    "train.log_period=1",
    "train.vis_period=0",
    "dataloader.train.total_batch_size=4",
    "dataloader.train.aspect_ratio_grouping=True",
    "dataloader.train.mapper.augmentations.0.short_edge_length=[96,112,128]",
    "dataloader.train.mapper.augmentations.0.max_size=160",
    "dataloader.test.mapper.augmentations.0.short_edge_length=32",
    "dataloader.test.num_workers=0",
    "model.test_score_thresh=0.0",
]
TOOL = str(REPO_ROOT / "tools" / "lazyconfig_train_net.py")
NOT_COMPARED = ("time", "eta")  # timings differ from run to run


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    env.setdefault("D2LITE_DATASETS", str(REPO_ROOT / "datasets"))
    env.update(OMP_WAIT_POLICY="PASSIVE", **extra)
    return env


def _args(out, workers=0, *extra):
    return [
        "--config-file",
        QUICK_CONFIG,
        *extra,
        *SMALL,
        f"dataloader.train.num_workers={workers}",
        f"train.output_dir={out}",
    ]


def _start(args, env=None):
    """Start the tool in its own session (process group), output in ``<out>.console``."""
    out = [a.split("=", 1)[1] for a in args if a.startswith("train.output_dir=")][0]
    console = open(f"{out}.console", "w")
    return subprocess.Popen(
        [sys.executable, TOOL, *args],
        cwd=REPO_ROOT,
        env=env or _env(),
        stdout=console,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _finish(proc, timeout=300):
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise


def _console(out):
    return open(f"{out}.console").read()


def _run(args, env=None):
    out = [a.split("=", 1)[1] for a in args if a.startswith("train.output_dir=")][0]
    rc = _finish(_start(args, env))
    assert rc == 0, _console(out)[-5000:]


def _records(out):
    """iteration -> every metrics.json record of it (a killed-and-resumed run writes some twice)."""
    records = {}
    for line in (out / "metrics.json").read_text().splitlines():
        record = json.loads(line)
        kept = {k: v for k, v in record.items() if not any(t in k for t in NOT_COMPARED)}
        records.setdefault(record["iteration"], []).append(kept)
    return records


def _wait_for_iteration(out, proc, iteration, timeout=240):
    """Wait until metrics.json has ``iteration`` (training is past it)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, f"the run ended early:\n{_console(out)[-3000:]}"
        path = out / "metrics.json"
        if path.exists() and any(
            json.loads(line).get("iteration", -1) >= iteration and "total_loss" in line
            for line in path.read_text().splitlines()
            if line.strip()
        ):
            return
        time.sleep(0.05)
    raise AssertionError(f"iteration {iteration} not reached:\n{_console(out)[-3000:]}")


def _assert_equal_to_reference(out, reference, resumed_after):
    got, ref = _records(out), _records(reference)
    assert sorted(got) == sorted(ref) == list(range(N + 1)), sorted(got)  # N: the evaluation
    for it in range(resumed_after + 1, N + 1):
        for record in got[it]:
            assert record == ref[it][0], (it, record, ref[it][0])
    final = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    expected = torch.load(reference / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    assert final.keys() == expected.keys()
    for k in final:
        assert torch.equal(final[k], expected[k]), k


def _last_checkpoint_iteration(out):
    name = (out / "last_checkpoint").read_text().strip()
    return torch.load(out / name, map_location="cpu", weights_only=False)["iteration"]


def _group_is_gone(pgid, timeout=20.0):
    """True once no process of the process group ``pgid`` is left (no orphaned workers)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run (no data-loader worker)."""
    out = tmp_path_factory.mktemp("exact") / "reference"
    _run(_args(out))
    return out


@pytest.mark.parametrize("workers", [0, 2])
def test_sigkill_between_checkpoints_then_resume_is_exact(reference, tmp_path, workers):
    out = tmp_path / "killed"
    proc = _start(_args(out, workers))
    _wait_for_iteration(out, proc, 4)  # past the checkpoint of iteration 3
    os.kill(proc.pid, signal.SIGKILL)  # the main process only: its workers must go by themselves
    assert _finish(proc) == -signal.SIGKILL
    assert _group_is_gone(proc.pid), "data-loader workers outlived their killed parent"
    resumed_after = _last_checkpoint_iteration(out)
    assert resumed_after in (3, 7)
    _run(_args(out, workers, "--resume"))
    assert f"model_{resumed_after:07d}.pth" in _console(out)
    _assert_equal_to_reference(out, reference, resumed_after)


@pytest.mark.parametrize("workers", [0, 2])
def test_sigterm_saves_then_the_logged_command_resumes_exactly(reference, tmp_path, workers):
    out = tmp_path / "stopped"
    proc = _start(_args(out, workers))
    _wait_for_iteration(out, proc, 4)
    os.killpg(proc.pid, signal.SIGTERM)  # as a scheduler does: main process and workers
    assert _finish(proc) == 128 + signal.SIGTERM
    assert _group_is_gone(proc.pid), "a process of the run is still alive"
    log = (out / "log.txt").read_text()
    stopped = re.search(r"Training stopped by SIGTERM after iteration (\d+) of 10; checkpoint: (\S+)\. Resume", log)
    assert stopped, log[-3000:]
    iteration = int(stopped.group(1))
    assert 4 <= iteration < N - 1
    assert stopped.group(2) == str(out / f"model_{iteration:07d}.pth")
    assert (out / "last_checkpoint").read_text() == f"model_{iteration:07d}.pth"
    assert max(_records(out)) == iteration  # the writers flushed the last iteration
    checkpoint = torch.load(stopped.group(2), map_location="cpu", weights_only=False)
    state = checkpoint["trainer"]["hooks"]["ExactResume"]["data_stream"]
    assert state["world_size"] == 1 and state["aspect_ratio_grouping"] and len(state["pending"][0]) <= 6
    command = re.search(r"Resume with:\n\s+(.+)", log).group(1)
    assert "--resume" in command and f"train.output_dir={out}" in command
    proc = subprocess.run(["bash", "-c", command], env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _assert_equal_to_reference(out, reference, iteration)


def _free_port_from_job_id():
    """A SLURM_JOB_ID whose derived port (10000 + id % 20000) is free here."""
    for _ in range(100):
        job_id = random.randrange(10**6)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", 10000 + job_id % 20000))
            except OSError:
                continue
        return job_id
    raise RuntimeError("no free port")


def _srun_like(args):
    """Start 2 tasks as srun would: SLURM variables only, no torchrun, no --num-gpus."""
    job_id = str(_free_port_from_job_id())
    procs = []
    for rank in range(2):
        env = _env(
            SLURM_JOB_ID=job_id,
            SLURM_PROCID=str(rank),
            SLURM_LOCALID=str(rank),
            SLURM_NTASKS="2",
            SLURM_NODEID="0",
            SLURM_TASKS_PER_NODE="2",
            SLURM_JOB_NODELIST="localhost",
            OMP_NUM_THREADS="1",
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, TOOL, *args],
                cwd=REPO_ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=400)[0] for p in procs]
    return [p.returncode for p in procs], outputs


def _spawned_children(pid):
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
                cmdline = open(f"/proc/{entry}/cmdline").read()
            except OSError:
                continue
            if int(stat[1]) == pid and "spawn_main" in cmdline:
                children.append(int(entry))
    return sorted(children)


@pytest.fixture(scope="module")
def srun_reference(tmp_path_factory):
    """An uninterrupted 2-process run, its 2 tasks started as srun starts them."""
    if torch.cuda.is_available():
        pytest.skip("runs the CPU (gloo) path")
    out = tmp_path_factory.mktemp("exact2") / "srun"
    returncodes, outputs = _srun_like(_args(out))
    return out, returncodes, outputs


def test_tool_under_srun_without_torchrun(srun_reference):
    out, returncodes, outputs = srun_reference
    assert returncodes == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert "SLURM task 0 of 2: waiting for the other tasks at tcp://localhost:" in outputs[0]
    assert "World size: 2" in outputs[0]
    assert (out / "log.txt.rank1").is_file() and (out / "model_final.pth").is_file()
    results = json.loads((out / "inference" / "coco_instances_results.json").read_text())
    assert len({r["image_id"] for r in results}) == 200  # both ranks evaluated their half


def test_two_processes_stop_together_on_sigterm_to_one_and_resume_exactly(srun_reference, tmp_path):
    reference, returncodes, _ = srun_reference
    assert returncodes == [0, 0]
    # The same run with --num-gpus 2 (spawned gloo processes); SIGTERM to one of them.
    out = tmp_path / "spawned"
    proc = _start(_args(out, 0, "--num-gpus", "2", "--dist-url", "auto"), env=_env(OMP_NUM_THREADS="1"))
    _wait_for_iteration(out, proc, 4)
    children = _spawned_children(proc.pid)
    assert len(children) == 2, children
    os.kill(children[-1], signal.SIGTERM)
    assert _finish(proc) == 128 + signal.SIGTERM, _console(out)[-5000:]
    stops = [
        re.search(
            r"Training stopped by SIGTERM \(received by rank (\d)\) after iteration (\d+) of 10", (out / f).read_text()
        )
        for f in ("log.txt", "log.txt.rank1")
    ]
    assert all(stops), _console(out)[-3000:]
    assert stops[0].groups() == stops[1].groups()  # both ranks stopped after the same iteration
    iteration = int(stops[0].group(2))
    state = torch.load(out / f"model_{iteration:07d}.pth", map_location="cpu", weights_only=False)
    stream = state["trainer"]["hooks"]["ExactResume"]["data_stream"]
    assert stream["world_size"] == 2 and len(stream["positions"]) == len(stream["pending"]) == 2
    assert stream["positions"][0] > 0 and stream["positions"][1] > 0

    _run(_args(out, 0, "--num-gpus", "2", "--dist-url", "auto", "--resume"), env=_env(OMP_NUM_THREADS="1"))
    _assert_equal_to_reference(out, reference, iteration)


def test_bad_stop_signal_is_a_one_line_error():
    proc = subprocess.run(
        [sys.executable, TOOL, "--config-file", QUICK_CONFIG, "train.stop_signals=['SIGTERM','SIGKILL']"],
        cwd=REPO_ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "error: train.stop_signals: SIGKILL cannot be caught" in proc.stderr
