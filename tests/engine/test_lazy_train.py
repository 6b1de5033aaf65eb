"""d2lite.engine.lazy_train: config loading errors, the default hook list and config-declared hooks."""

import pytest
import torch
from helpers import QUICK_CONFIG, REPO_ROOT

from d2lite.checkpoint import DetectionCheckpointer
from d2lite.config import LazyCall as L
from d2lite.config import instantiate
from d2lite.engine import HookBase, SimpleTrainer, hooks
from d2lite.engine.lazy_train import ConfigError, build_config_hooks, build_model, default_hooks, load_config
from d2lite.engine.priority import Priority, get_priority
from d2lite.engine.validation_loss import ValidationLoss


class RecorderHook(HookBase):
    def __init__(self, tag: str = "x"):
        self.tag = tag


class PrioritisedHook(HookBase):
    priority = "VERY_LOW"

    def __init__(self, priority: str = "VERY_LOW"):
        self.priority = priority


def _cfg(*overrides):
    return load_config(str(REPO_ROOT / QUICK_CONFIG), ["train.device=cpu", *overrides])


def _trainer(cfg, tmp_path):
    model = build_model(cfg)
    cfg.optimizer.params.model = model
    trainer = SimpleTrainer(model, iter([]), instantiate(cfg.optimizer))
    return trainer, DetectionCheckpointer(model, str(tmp_path), trainer=trainer)


def test_get_priority_names_ints_and_errors():
    assert get_priority("normal") == 50 == Priority.NORMAL
    assert get_priority(Priority.LOW) == 70 and get_priority(0) == 0 and get_priority(100) == 100
    with pytest.raises(ValueError, match="Unknown hook priority 'MEDIUM'"):
        get_priority("MEDIUM")
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        get_priority(101)
    with pytest.raises(TypeError):
        get_priority(1.5)


def test_default_hooks_order_and_config_hooks_by_priority(tmp_path):
    cfg = _cfg(
        f"train.output_dir={tmp_path}",
        "train.clip_grad.enabled=True",
        "train.val_loss.period=5",
        "dataloader.test.num_workers=0",
    )
    cfg.train.hooks = [
        L(RecorderHook)(tag="a"),  # NORMAL by default
        L(RecorderHook)(tag="b", priority="HIGHEST"),  # priority popped: RecorderHook takes none
        L(PrioritisedHook)(priority="LOWEST"),  # priority is its own argument
    ]
    trainer, checkpointer = _trainer(cfg, tmp_path)
    ordered = default_hooks(cfg, trainer, checkpointer)
    names = [type(h).__name__ + (f":{h.tag}" if isinstance(h, RecorderHook) else "") for h in ordered]
    assert names == [
        "RecorderHook:b",
        "IterationTimer",
        "GradientClipping",
        "LRScheduler",
        "RecorderHook:a",
        "ExactResume",  # before the checkpointer: every rank's data-stream position is current when it saves
        "PeriodicCheckpointer",
        "ValidationLoss",
        "EvalHook",
        "LossExplosionCheck",  # train.loss_explosion (on by default)
        "PeriodicWriter",
        "PrioritisedHook",  # LOWEST after PeriodicWriter (LOWEST): list order breaks the tie
    ]
    assert isinstance(ordered[7], ValidationLoss) and isinstance(ordered[-2], hooks.PeriodicWriter)
    # the user's config is not modified by popping the priority
    assert cfg.train.hooks[1].priority == "HIGHEST"


def test_loss_explosion_check_from_the_train_section(tmp_path):
    cfg = _cfg("train.loss_explosion.factor=50", "train.loss_explosion.window=7")
    trainer, checkpointer = _trainer(cfg, tmp_path)
    (check,) = [h for h in default_hooks(cfg, trainer, checkpointer) if isinstance(h, hooks.LossExplosionCheck)]
    assert (check.factor, check.window) == (50.0, 7)
    off = default_hooks(_cfg("train.loss_explosion.factor=0"), trainer, checkpointer)
    assert not any(isinstance(h, hooks.LossExplosionCheck) for h in off)


def test_config_hook_errors_name_the_key():
    cfg = _cfg()
    cfg.train.hooks = [L(RecorderHook)(), {"not": "a lazy call"}]
    with pytest.raises(ConfigError, match=r"train\.hooks\.1 must be a LazyCall hook"):
        build_config_hooks(cfg)
    cfg.train.hooks = [L(torch.nn.Identity)()]
    with pytest.raises(ConfigError, match=r"train\.hooks\.0 built a Identity, not a d2lite.engine.HookBase"):
        build_config_hooks(cfg)
    cfg.train.hooks = [L(RecorderHook)(tga="typo")]
    with pytest.raises(ConfigError, match=r"train\.hooks\.0: cannot build the hook.*tga"):
        build_config_hooks(cfg)
    cfg.train.hooks = [L(RecorderHook)(priority="SOON")]
    with pytest.raises(ConfigError, match=r"train\.hooks\.0: Unknown hook priority 'SOON'"):
        build_config_hooks(cfg)


def test_load_config_errors_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="--config-file is required"):
        load_config("")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "missing.py"))
    with pytest.raises(ConfigError, match="train.max_itre"):
        _cfg("train.max_itre=3")
    bad = tmp_path / "no_model.py"
    bad.write_text("train = dict(max_iter=1)\n")
    with pytest.raises(ConfigError, match="defines no `model`"):
        load_config(str(bad))
