"""The project's LazyConfig files: layout, recipe numbers, instantiation, YAML round trip."""

import os

import pytest

from d2lite.config import LazyConfig, instantiate

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
TRAIN_KEYS = {
    "output_dir",
    "init_checkpoint",
    "max_iter",
    "amp",
    "ddp",
    "checkpointer",
    "eval_period",
    "log_period",
    "device",
    "seed",
    "clip_grad",
    "ema",
}


@pytest.mark.parametrize(
    "name, depth, width, channels",
    [
        ("rtmdet_tiny_8xb32-300e_coco.py", 0.167, 0.375, 96),
        ("rtmdet_s_8xb32-300e_coco.py", 0.33, 0.5, 128),
        ("rtmdet_tiny_shapes.py", 0.167, 0.375, 96),
    ],
)
def test_config_layout_and_model(name, depth, width, channels, tmp_path):
    cfg = LazyConfig.load(os.path.join(CONFIG_DIR, name))
    assert {"model", "dataloader", "optimizer", "lr_multiplier", "train"} <= set(cfg.keys())
    assert {"train", "test", "evaluator"} <= set(cfg.dataloader.keys())
    assert TRAIN_KEYS <= set(cfg.train.keys())
    assert cfg.model.backbone.bottom_up.deepen_factor == depth
    assert cfg.model.backbone.bottom_up.widen_factor == width
    assert cfg.model.head.feat_channels == channels and cfg.model.head.exp_on_reg is False
    model = instantiate(cfg.model)
    assert model.head.strides == [8, 16, 32]
    bn = model.backbone.bottom_up.stem[0].bn
    assert (bn.eps, bn.momentum) == (1e-5, 0.1)
    # recipe: AdamW 0.004 / 0.05, no decay on norms and biases, EMA with ExpMomentum
    assert cfg.optimizer.lr == 0.004 and cfg.optimizer.weight_decay == 0.05
    assert cfg.optimizer.params.weight_decay_norm == 0.0 and cfg.optimizer.params.weight_decay_bias == 0.0
    assert cfg.train.ema.enabled and cfg.train.ema.update_buffers
    assert instantiate(cfg.train.ema.momentum_fn)(10**7) == pytest.approx(0.0002)
    path = str(tmp_path / "cfg.yaml")
    LazyConfig.save(cfg, path)
    again = LazyConfig.load(path)
    assert again.model.backbone.out_channels == channels
    assert instantiate(again.model).head.strides == [8, 16, 32]


def test_coco_schedule_warmup_flat_cosine():
    cfg = LazyConfig.load(os.path.join(CONFIG_DIR, "rtmdet_s_8xb32-300e_coco.py"))
    sched = instantiate(cfg.lr_multiplier)
    n = cfg.train.max_iter
    assert n == 300 * 459
    assert sched(0.0) == pytest.approx(1e-5)
    assert sched(500 / n) == pytest.approx(1e-5 + (1 - 1e-5) * 0.5, rel=1e-3)
    assert sched(1000 / n) == pytest.approx(1.0)
    assert sched(0.5) == pytest.approx(1.0)
    assert sched(0.75) == pytest.approx(0.05 + 0.95 * 0.5, rel=1e-6)
    assert sched(1.0 - 1e-9) == pytest.approx(0.05, rel=1e-4)
    assert cfg.model.num_classes == 80 and cfg.model.fixed_input_size == (640, 640)
    assert cfg.dataloader.train.dataset.names == "coco_2017_train"
    assert cfg.dataloader.test.dataset.names == "coco_2017_val"
