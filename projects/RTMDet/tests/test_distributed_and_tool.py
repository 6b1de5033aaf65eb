"""Loss normaliser averaged across processes, and the CPU demo config through the
training tool (both slow: they start processes)."""

import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rtmdet.rtmdet import reduce_mean

# onepass: the outcome does not depend on the float path (make test-1thread skips it).
pytestmark = pytest.mark.onepass

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def _worker(rank, world_size, init_file, out):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        value = reduce_mean(torch.tensor(float(rank * 4 + 1)))  # 1.0 and 5.0
        out[rank] = float(value)
    finally:
        dist.destroy_process_group()


def test_reduce_mean_single_process_is_identity():
    t = torch.tensor(3.5)
    r = reduce_mean(t)
    assert float(r) == 3.5 and r is not t


@pytest.mark.slow
def test_reduce_mean_averages_across_processes(tmp_path):
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), out), nprocs=2, join=True)
    assert dict(out) == {0: 3.0, 1: 3.0}


@pytest.mark.slow
def test_demo_config_runs_in_training_tool(tmp_path):
    cmd = [
        sys.executable,
        os.path.join(REPO, "tools", "lazyconfig_train_net.py"),
        "--config-file",
        os.path.join(REPO, "projects", "RTMDet", "configs", "rtmdet_tiny_shapes.py"),
        "train.max_iter=3",
        "train.eval_period=0",
        "train.log_period=1",
        "dataloader.train.total_batch_size=2",
        f"train.output_dir={tmp_path}",
    ]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert os.path.isfile(tmp_path / "model_final.pth")
    ckpt = torch.load(tmp_path / "model_final.pth", map_location="cpu", weights_only=False)
    assert "ema" in ckpt and "head.rtm_cls.0.bias" in ckpt["model"]
    # The saved config names `rtmdet.*` by import path: it loads and builds in a new process,
    # from another directory, with no PYTHONPATH (rtmdet is an installed package).
    check = (
        "from d2lite.config import LazyConfig, instantiate\n"
        f"cfg = LazyConfig.load({str(tmp_path / 'config.yaml')!r})\n"
        "print(type(instantiate(cfg.model)).__module__)\n"
    )
    clean_env = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-c", check], cwd=tmp_path, env=clean_env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "rtmdet.rtmdet"
