"""Runs of the real tools as subprocesses, shared by the tool tests."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
QUICK_CONFIG = "configs/quick/retinanet_R_18_FPN_shapes.py"
# A schedule short enough for tests: 4 iterations on small images, checkpoint every 2.
SHORT = [
    "train.max_iter=4",
    "train.eval_period=4",
    "train.checkpointer.period=2",
    "train.log_period=1",
    "train.vis_period=2",
    "dataloader.train.total_batch_size=2",
    "dataloader.train.num_workers=0",
    "dataloader.test.num_workers=0",
]


def run_tool(script: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.setdefault("D2LITE_DATASETS", str(REPO_ROOT / "datasets"))
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools" / script), *args],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """Output dir of a 4-iteration training run of the CPU demo config, with its console output."""
    out = tmp_path_factory.mktemp("quick_run")
    proc = run_tool("lazyconfig_train_net.py", "--config-file", QUICK_CONFIG, *SHORT, f"train.output_dir={out}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return out, proc.stdout + proc.stderr
