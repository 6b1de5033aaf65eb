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


def test_resume_keeps_config_and_appends_to_manifest_history(tmp_path, restore_loggers, caplog):
    out = tmp_path / "out"
    parser = default_argument_parser()
    default_setup(_cfg(out), parser.parse_args(["train.max_iter=10"]))
    config_before = (out / "config.yaml").read_text()
    first = json.loads((out / "manifest.json").read_text())
    assert [h["resume"] for h in first["history"]] == [False]

    changed = _cfg(out)
    changed.train.max_iter = 20
    changed.model.out_features = 3
    logging.getLogger("d2lite").propagate = True  # so that caplog sees the warning
    with caplog.at_level(logging.WARNING, logger="d2lite"):
        default_setup(changed, parser.parse_args(["--resume", "train.max_iter=20"]))
    assert (out / "config.yaml").read_text() == config_before  # the run's config stays
    assert "train.max_iter: 10 -> 20" in caplog.text and "model.out_features: 1 -> 3" in caplog.text
    manifest = json.loads((out / "manifest.json").read_text())
    assert {k: manifest[k] for k in first if k != "history"} == {k: first[k] for k in first if k != "history"}
    assert [h["resume"] for h in manifest["history"]] == [False, True]
    assert manifest["history"][1]["args"]["opts"] == ["train.max_iter=20"]
    assert manifest["history"][1]["config_changes"] == {"model.out_features": [1, 3], "train.max_iter": [10, 20]}
    assert manifest["history"][0] == first["history"][0]


def test_fresh_run_replaces_config_and_manifest(tmp_path, restore_loggers):
    out = tmp_path / "out"
    default_setup(_cfg(out), default_argument_parser().parse_args([]))
    changed = _cfg(out)
    changed.train.max_iter = 30
    default_setup(changed, default_argument_parser().parse_args([]))
    assert "max_iter: 30" in (out / "config.yaml").read_text()
    assert len(json.loads((out / "manifest.json").read_text())["history"]) == 1


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
