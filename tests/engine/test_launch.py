import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import retry_once

from d2lite.engine import launch
from d2lite.engine.launch import torchrun_env

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
    return env


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


def test_launch_single_process_calls_main_directly(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
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


def test_launch_bad_dist_url(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(ValueError, match="dist_url is required"):
        launch(print, 2)
    with pytest.raises(ValueError, match="not supported in multi-machine"):
        launch(print, 2, num_machines=2, dist_url="auto")
