"""Loading a config's trained weights for export (EMA as --eval-only) and the checks that
run before exporting."""

import pytest
import torch
from helpers import QUICK_CONFIG, REPO_ROOT

from d2lite.checkpoint import DetectionCheckpointer
from d2lite.engine.lazy_train import ConfigError, build_model, load_config
from d2lite.export.lazy_export import export_model, load_trained_model
from d2lite.modeling.ema import ModelEMA

CONFIG = str(REPO_ROOT / QUICK_CONFIG)


def save_checkpoint(tmp_path, with_ema):
    torch.manual_seed(0)
    model = build_model(load_config(CONFIG, ["train.device=cpu"]))
    extra = {}
    if with_ema:
        ema = ModelEMA(model)
        with torch.no_grad():
            for p in ema.module.parameters():
                p.add_(1.0)  # EMA weights differ from the model's
        extra["ema"] = ema
    DetectionCheckpointer(model, str(tmp_path), **extra).save("model")
    return str(tmp_path / "model.pth"), model


def test_loads_ema_weights_when_the_checkpoint_has_them(tmp_path):
    path, trained = save_checkpoint(tmp_path, with_ema=True)
    cfg = load_config(CONFIG, [f"train.init_checkpoint={path}", "train.ema.enabled=True"])
    model, weights = load_trained_model(cfg)
    assert weights == "ema" and not model.training
    name, p = next(iter(model.named_parameters()))
    assert torch.equal(p, dict(trained.named_parameters())[name] + 1.0)


def test_loads_model_weights_without_ema(tmp_path):
    path, trained = save_checkpoint(tmp_path, with_ema=False)
    for opts in ([], ["train.ema.enabled=True"]):  # EMA enabled but not in the checkpoint: the model's
        model, weights = load_trained_model(load_config(CONFIG, [f"train.init_checkpoint={path}", *opts]))
        assert weights == "model"
        name, p = next(iter(model.named_parameters()))
        assert torch.equal(p, dict(trained.named_parameters())[name])


def test_missing_or_empty_checkpoint_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"train.init_checkpoint=.*nope.pth: no such checkpoint file"):
        load_trained_model(load_config(CONFIG, [f"train.init_checkpoint={tmp_path / 'nope.pth'}"]))
    with pytest.raises(ConfigError, match="train.init_checkpoint is empty"):
        load_trained_model(load_config(CONFIG, ['train.init_checkpoint=""']))


def test_test_images_outside_the_size_range_are_named_before_exporting(tmp_path):
    path, _ = save_checkpoint(tmp_path, with_ema=False)
    cfg = load_config(CONFIG, [f"train.init_checkpoint={path}", "dataloader.test.num_workers=0"])
    with pytest.raises(ConfigError, match=r"test image .*000000.jpg is \d+x\d+, outside .* \[33, 200\]; widen"):
        export_model(cfg, "torchscript", str(tmp_path / "out"), size_range=(33, 200), num_check_images=1)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="unknown export format 'tflite'"):
        export_model(cfg, "tflite", str(tmp_path / "out"))
