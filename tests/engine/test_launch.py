import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from helpers import retry_once

from d2lite.engine import launch
from d2lite.engine.launch import slurm_env, slurm_first_host, torchrun_env

# onepass: the outcome does not depend on the float path (make test-1thread skips it).
pytestmark = pytest.mark.onepass

_SCRIPT = textwrap.dedent(
    """
    import json
    import sys

    import torch
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel

    from d2lite.engine import SimpleTrainer, create_ddp_model, launch
    from d2lite.utils import comm

    X = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    Y = torch.tensor([[1.0], [0.0]])


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 1)
            with torch.no_grad():
                self.fc.weight.copy_(torch.tensor([[0.5, -0.25]]))
                self.fc.bias.fill_(0.1)

        def forward(self, batch):
            x, y = batch
            return {"loss": ((self.fc(x) - y) ** 2).mean()}


    def loader(rank, world):
        while True:  # world 1: both samples; world 2: one sample per rank
            yield X[rank::world], Y[rank::world]


    def main(out, num_iter):
        # one intra-op thread in the child processes comes from OMP_NUM_THREADS (_env());
        # main() also runs inside the test process (world size 1), where it must not change it
        rank, world = comm.get_rank(), comm.get_world_size()
        net = Net()
        model = create_ddp_model(net)
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        trainer = SimpleTrainer(model, loader(rank, world), opt)
        trainer.train(0, num_iter)
        info = {
            "world_size": world,
            "rank": rank,
            "local_rank": comm.get_local_rank(),
            "local_size": comm.get_local_size(),
            "is_ddp": isinstance(model, DistributedDataParallel),
            "all_gather": comm.all_gather(rank * 10),
            "gather": comm.gather({"r": rank}),
            "reduce_avg": float(comm.reduce_dict({"a": torch.tensor(float(rank + 1))})["a"]),
            "shared_seed_same": len(set(comm.all_gather(comm.shared_random_seed()))) == 1,
            "weight": net.fc.weight.tolist(),
            "bias": net.fc.bias.tolist(),
            "total_loss": [v for v, _ in trainer.storage.history("total_loss").values()]
            if "total_loss" in trainer.storage.histories()
            else [],
        }
        comm.synchronize()
        infos = comm.gather(info)
        if comm.is_main_process():
            with open(out, "w") as f:
                json.dump(infos, f)


    if __name__ == "__main__":
        out, mode = sys.argv[1], sys.argv[2]
        if mode == "spawn":
            launch(main, 2, dist_url="auto", args=(out, 3))
        elif mode == "srun":  # one process per task: launch() joins the group, does not spawn
            launch(main, 1, args=(out, 3))
        else:  # started by torchrun: launch() must join the env:// group, not spawn
            launch(main, 2, args=(out, 3))
    """
)


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "ddp_script.py"
    path.write_text(_SCRIPT)
    return path


def _single_process_reference(script, tmp_path):
    spec = importlib.util.spec_from_file_location("_d2lite_ddp_script", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "single.json"
    launch(mod.main, 1, args=(str(out), 3))
    (info,) = json.loads(out.read_text())
    assert info["world_size"] == 1 and not info["is_ddp"]
    return info


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    for k in [k for k in env if k.startswith("SLURM_")]:
        env.pop(k)
    return env


@pytest.fixture
def no_launcher_env(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    for k in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(k)


def _check_two_process_result(infos, ref):
    assert [i["rank"] for i in infos] == [0, 1]
    for i in infos:
        assert i["world_size"] == 2 and i["is_ddp"]
        assert i["local_size"] == 2
        assert i["all_gather"] == [0, 10]
        assert i["shared_seed_same"]
        # DDP averages gradients: batch 1 on each of 2 processes == batch 2 on 1 process
        assert i["weight"][0] == pytest.approx(ref["weight"][0], abs=1e-6)
        assert i["bias"] == pytest.approx(ref["bias"], abs=1e-6)
    assert [i["local_rank"] for i in infos] == [0, 1]
    assert infos[0]["gather"] == [{"r": 0}, {"r": 1}] and infos[1]["gather"] == []
    assert infos[0]["reduce_avg"] == pytest.approx(1.5)  # (1 + 2) / 2 on rank 0
    # rank 0 logs the mean of both ranks' losses == the single-process batch loss
    assert infos[0]["total_loss"] == pytest.approx(ref["total_loss"], abs=1e-6)
    assert infos[1]["total_loss"] == []


@pytest.mark.slow
def test_two_cpu_processes_match_one_process_with_double_batch(script, tmp_path):
    ref = _single_process_reference(script, tmp_path)
    out = tmp_path / "spawn.json"
    proc = retry_once(
        lambda: subprocess.run(
            [sys.executable, str(script), str(out), "spawn"],
            env=_env(),
            timeout=240,
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    _check_two_process_result(json.loads(out.read_text()), ref)


@pytest.mark.slow
def test_torchrun_two_processes(script, tmp_path):
    ref = _single_process_reference(script, tmp_path)
    out = tmp_path / "torchrun.json"
    proc = retry_once(
        lambda: subprocess.run(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc_per_node",
                "2",
                str(script),
                str(out),
                "torchrun",
            ],
            env=_env(),
            timeout=240,
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    _check_two_process_result(json.loads(out.read_text()), ref)


@pytest.mark.slow
def test_srun_two_processes(script, tmp_path):
    """Two tasks started the way srun starts them (SLURM variables only): launch() joins
    them into one group, with the master port derived from the job id."""
    ref = _single_process_reference(script, tmp_path)
    out = tmp_path / "srun.json"

    def run():
        job_id = _job_id_with_free_port()
        procs = [
            subprocess.Popen(
                [sys.executable, str(script), str(out), "srun"],
                env=dict(
                    _env(),
                    SLURM_JOB_ID=str(job_id),
                    SLURM_PROCID=str(rank),
                    SLURM_LOCALID=str(rank),
                    SLURM_NTASKS="2",
                    SLURM_NODEID="0",
                    SLURM_TASKS_PER_NODE="2",
                    SLURM_JOB_NODELIST="localhost",
                ),
                cwd=tmp_path,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for rank in range(2)
        ]
        outputs = [p.communicate(timeout=240)[0] for p in procs]
        rc = max(abs(p.returncode) for p in procs)
        return subprocess.CompletedProcess(procs[0].args, rc, stdout=outputs[0], stderr=outputs[1])

    proc = retry_once(run)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "waiting for the other tasks at tcp://localhost:" in proc.stdout
    _check_two_process_result(json.loads(out.read_text()), ref)


_STOP_SCRIPT = textwrap.dedent(
    """
    import os
    import sys
    import time

    from d2lite.engine import launch
    from d2lite.engine.preemption import StopSignals, TrainingInterrupted
    from d2lite.utils import comm


    def main(out):
        stop = StopSignals()
        stop.install()
        open(os.path.join(out, f"ready{comm.get_rank()}"), "w").close()
        deadline = time.time() + 120
        while stop.received is None and time.time() < deadline:
            time.sleep(0.05)
        open(os.path.join(out, f"stopped{comm.get_rank()}"), "w").write(stop.received.name)
        raise TrainingInterrupted(stop.received)


    if __name__ == "__main__":
        try:
            launch(main, 2, dist_url="auto", args=(sys.argv[1],))
        except TrainingInterrupted as e:
            sys.exit(e.exit_code)
    """
)


@pytest.mark.slow
def test_spawn_parent_forwards_stop_signals_and_exits_with_the_signal(tmp_path):
    script = tmp_path / "stop_script.py"
    script.write_text(_STOP_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path)], env=_env(), cwd=tmp_path)
    deadline = time.time() + 120
    while not all((tmp_path / f"ready{r}").exists() for r in range(2)) and time.time() < deadline:
        assert proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)  # to the parent only, as `kill -USR1 <pid>` does
    assert proc.wait(timeout=120) == 128 + signal.SIGUSR1
    assert [(tmp_path / f"stopped{r}").read_text() for r in range(2)] == ["SIGUSR1", "SIGUSR1"]


def _job_id_with_free_port():
    import random
    import socket

    for _ in range(100):
        job_id = random.randrange(10**6)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", 10000 + job_id % 20000))
            except OSError:
                continue
        return job_id
    raise RuntimeError("no free port")


def test_slurm_env_parsing():
    base = {"SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_NTASKS": "4", "SLURM_JOB_ID": "123456"}
    assert slurm_env({}) is None
    assert slurm_env(dict(base, SLURM_NTASKS="1", SLURM_PROCID="0", SLURM_LOCALID="0")) is None  # one task: no group
    env = slurm_env(dict(base, SLURM_NODEID="1", SLURM_TASKS_PER_NODE="2(x2)", SLURM_JOB_NODELIST="gpu[07-08]"))
    assert env == {
        "rank": 3,
        "local_rank": 1,
        "world_size": 4,
        "local_world_size": 2,
        "master_addr": "gpu07",
        "master_port": 10000 + 123456 % 20000,
    }
    # MASTER_ADDR / MASTER_PORT win; SLURM_STEP_* describe the step srun started
    env = slurm_env(
        dict(
            base,
            SLURM_STEP_NUM_TASKS="4",
            SLURM_NTASKS_PER_NODE="4",
            SLURM_NODELIST="a1",
            MASTER_ADDR="10.0.0.1",
            MASTER_PORT="29400",
        )
    )
    assert (env["local_world_size"], env["master_addr"], env["master_port"]) == (4, "10.0.0.1", 29400)
    with pytest.raises(ValueError, match="SLURM_JOB_NODELIST"):
        slurm_env(base)
    with pytest.raises(ValueError, match="Malformed SLURM environment.*SLURM_PROCID='x'"):
        slurm_env(dict(base, SLURM_PROCID="x", SLURM_NODELIST="a"))
    with pytest.raises(ValueError, match="Inconsistent SLURM variables"):
        slurm_env(dict(base, SLURM_PROCID="4", SLURM_NODELIST="a"))
    with pytest.raises(ValueError, match="SLURM_NODEID=2 is not in"):
        slurm_env(dict(base, SLURM_NODEID="2", SLURM_TASKS_PER_NODE="2,2", SLURM_NODELIST="a"))


@pytest.mark.parametrize(
    "nodelist, host",
    [
        ("node1", "node1"),
        ("node[1-4]", "node1"),
        ("gpu[003-005,9],cpu1", "gpu003"),
        ("rack[2,4]-n[01-02]", "rack2-n01"),
        ("a,b[1-2]", "a"),
        ("10.1.2.3", "10.1.2.3"),
    ],
)
def test_slurm_first_host(nodelist, host):
    assert slurm_first_host(nodelist) == host


def test_slurm_first_host_errors():
    with pytest.raises(ValueError, match="Cannot parse"):
        slurm_first_host("node[1-2")
    with pytest.raises(ValueError, match="Empty"):
        slurm_first_host(",a")


def test_torchrun_env_parsing():
    assert torchrun_env({}) is None
    assert torchrun_env({"RANK": "0", "WORLD_SIZE": "2"}) is None  # LOCAL_RANK missing
    assert torchrun_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}) == {
        "rank": 3,
        "world_size": 4,
        "local_rank": 1,
        "local_world_size": 2,
    }
    assert torchrun_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})["local_world_size"] == 2
    with pytest.raises(ValueError, match="Malformed torchrun"):
        torchrun_env({"RANK": "a", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    with pytest.raises(ValueError, match="Inconsistent"):
        torchrun_env({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})


def test_launch_single_process_calls_main_directly(no_launcher_env):
    calls = []
    launch(lambda a, b: calls.append((a, b)), 1, args=(1, 2))
    assert calls == [(1, 2)]


def test_launch_torchrun_world_size_one_runs_without_process_group(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    calls = []
    launch(lambda: calls.append(torch.distributed.is_initialized()), 4)  # does not spawn 4
    assert calls == [False]


def test_launch_bad_dist_url(no_launcher_env):
    with pytest.raises(ValueError, match="dist_url is required"):
        launch(print, 2)
    with pytest.raises(ValueError, match="not supported in multi-machine"):
        launch(print, 2, num_machines=2, dist_url="auto")


def test_spawned_cpu_processes_share_the_cores(monkeypatch):
    """n CPU processes started by launch() get cores // n intra-op threads each (at least 1),
    unless OMP_NUM_THREADS is set (the user's choice wins)."""
    launch = sys.modules["d2lite.engine.launch"]  # the module (d2lite.engine.launch is also the function)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    threads = torch.get_num_threads()
    try:
        launch._share_cpu_cores(2)
        assert torch.get_num_threads() == 4
        launch._share_cpu_cores(16)
        assert torch.get_num_threads() == 1
        torch.set_num_threads(3)
        launch._share_cpu_cores(1)  # one process: untouched
        assert torch.get_num_threads() == 3
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        launch._share_cpu_cores(2)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(threads)
