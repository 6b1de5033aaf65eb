import json
import logging
import os
import re

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from d2lite.engine import (
    create_ddp_model,
    default_argument_parser,
    default_setup,
    default_writers,
)
from d2lite.utils import logger as logger_module
from d2lite.utils.events import CommonMetricPrinter, JSONWriter, TensorboardXWriter


@pytest.fixture
def restore_loggers():
    """default_setup configures the "d2lite"/"fvcore" loggers (propagate=False, handlers);
    undo it so other tests (e.g. caplog) are not affected."""
    saved = {}
    for name in ("d2lite", "fvcore"):
        lg = logging.getLogger(name)
        saved[name] = (list(lg.handlers), lg.level, lg.propagate)
    yield
    for name, (handlers, level, propagate) in saved.items():
        lg = logging.getLogger(name)
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate = propagate
    logger_module.setup_logger.cache_clear()


def test_argument_parser_overrides():
    parser = default_argument_parser()
    args = parser.parse_args(
        ["--config-file", "cfg.py", "--num-gpus", "2", "--resume", "train.max_iter=100", "model.num_classes=3"]
    )
    assert args.config_file == "cfg.py"
    assert args.num_gpus == 2 and args.num_machines == 1 and args.machine_rank == 0
    assert args.resume and not args.eval_only
    assert args.opts == ["train.max_iter=100", "model.num_classes=3"]
    assert args.dist_url.startswith("tcp://127.0.0.1:")
    args = parser.parse_args(["--eval-only", "--dist-url", "auto"])
    assert args.eval_only and args.dist_url == "auto" and args.opts == [] and args.config_file == ""
    with pytest.raises(SystemExit):
        parser.parse_args(["--num-gpus", "two"])


def _cfg(output_dir, seed=0):
    return OmegaConf.create(
        {
            "model": {"_target_": "torch.nn.Linear", "in_features": 2, "out_features": 1},
            "train": {"output_dir": str(output_dir), "seed": seed, "max_iter": 10},
        }
    )


def test_default_setup_writes_config_manifest_and_seeds(tmp_path, restore_loggers):
    from d2lite.config import LazyConfig

    out = tmp_path / "out"
    cfg = _cfg(out, seed=5)
    args = default_argument_parser().parse_args(["train.max_iter=10"])
    default_setup(cfg, args)
    a = torch.rand(3)
    torch.manual_seed(5)  # seed + rank 0
    assert torch.equal(a, torch.rand(3))

    assert sorted(os.listdir(out)) == ["config.yaml", "log.txt", "manifest.json"]
    loaded = LazyConfig.load(str(out / "config.yaml"))
    assert OmegaConf.to_container(loaded) == OmegaConf.to_container(cfg)

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 5 and manifest["train.seed"] == 5
    assert manifest["world_size"] == 1
    assert manifest["args"]["opts"] == ["train.max_iter=10"]
    assert manifest["environment"]["PyTorch"].startswith(torch.__version__)
    assert isinstance(manifest["command_line"], list)
    assert re.fullmatch(r"[0-9a-f]{40}", manifest["git"]["commit"])  # tests run inside the repo
    assert isinstance(manifest["git"]["dirty"], bool)
    log = (out / "log.txt").read_text()
    assert "Environment info" in log and "Full config saved to" in log


def test_default_setup_negative_seed_is_random_and_recorded(tmp_path, restore_loggers):
    out = tmp_path / "out"
    default_setup(_cfg(out, seed=-1), default_argument_parser().parse_args([]))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["train.seed"] == -1 and manifest["seed"] >= 0
    a = torch.rand(2)
    torch.manual_seed(manifest["seed"])
    assert torch.equal(a, torch.rand(2))


def test_default_setup_default_seed_is_deterministic(tmp_path, restore_loggers):
    cfg = OmegaConf.create({"train": {"output_dir": str(tmp_path / "o")}})
    default_setup(cfg, default_argument_parser().parse_args([]))
    a = torch.rand(2)
    torch.manual_seed(0)
    assert torch.equal(a, torch.rand(2))


def test_default_writers(tmp_path):
    writers = default_writers(str(tmp_path / "w"), max_iter=100)
    assert [type(w) for w in writers] == [CommonMetricPrinter, JSONWriter, TensorboardXWriter]
    for w in writers:
        w.close()
    assert os.path.exists(tmp_path / "w" / "metrics.json")


def test_create_ddp_model_single_process_returns_model():
    m = nn.Linear(2, 2)
    assert create_ddp_model(m, fp16_compression=True, find_unused_parameters=True) is m
