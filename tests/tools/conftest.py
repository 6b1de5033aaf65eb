"""Runs of the real tools as subprocesses, shared by the tool tests."""

import pytest
from helpers import QUICK_CONFIG, SHORT, run_tool


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """Output dir of a 4-iteration training run of the CPU demo config, with its console output."""
    out = tmp_path_factory.mktemp("quick_run")
    proc = run_tool("lazyconfig_train_net.py", "--config-file", QUICK_CONFIG, *SHORT, f"train.output_dir={out}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return out, proc.stdout + proc.stderr
