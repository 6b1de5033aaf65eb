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


# mmdetection's rtmdet_{tiny,s,l}_8xb32-300e_coco.py pipelines, number for number
_COMMON = {
    "CachedMosaic": {"img_scale": (640, 640), "center_ratio_range": (0.5, 1.5), "pad_val": 114.0, "prob": 1.0},
    "RandomCrop": {"crop_size": (640, 640), "allow_negative_crop": False, "bbox_clip_border": True},
    "YOLOXHSVRandomAug": {"hue_delta": 5, "saturation_delta": 30, "value_delta": 30},
    "RandomFlip": {"prob": 0.5, "direction": "horizontal"},
    "Pad": {"size": (640, 640), "pad_val": 114},
    "CachedMixUp": {"img_scale": (640, 640), "ratio_range": (1.0, 1.0), "flip_ratio": 0.5, "pad_val": 114.0},
}
MMDET_RECIPES = {
    "rtmdet_tiny_8xb32-300e_coco.py": {
        "ratio_range": (0.5, 2.0),
        "mosaic": {"max_cached_images": 20, "random_pop": False},
        "mixup": {"max_cached_images": 10, "random_pop": False, "prob": 0.5, "max_iters": 15},
        "checkpoint": "cspnext_rsb_pretrain/cspnext-tiny_imagenet_600e.pth",
    },
    "rtmdet_s_8xb32-300e_coco.py": {
        "ratio_range": (0.5, 2.0),
        "mosaic": {"max_cached_images": 40, "random_pop": True},
        "mixup": {"max_cached_images": 20, "random_pop": True, "prob": 1.0, "max_iters": 15},
        "checkpoint": "cspnext_rsb_pretrain/cspnext-s_imagenet_600e.pth",
    },
    "common/coco_300e.py": {  # RTMDet-l
        "ratio_range": (0.1, 2.0),
        "mosaic": {"max_cached_images": 40, "random_pop": True},
        "mixup": {"max_cached_images": 20, "random_pop": True, "prob": 1.0, "max_iters": 15},
        "checkpoint": None,
    },
}


def _check(aug, expected):
    for key, value in expected.items():
        got = getattr(aug, key)
        assert (tuple(got) if isinstance(got, (list, tuple)) else got) == value, (type(aug).__name__, key, got)


@pytest.mark.parametrize("name", sorted(MMDET_RECIPES))
def test_coco_recipes_equal_mmdetection_configs(name):
    want = MMDET_RECIPES[name]
    cfg = LazyConfig.load(os.path.join(CONFIG_DIR, name))
    stage1 = instantiate(cfg.dataloader.train.mapper)
    names = [type(a).__name__ for a in stage1.augmentations.augs]
    assert names == [
        "CachedMosaic",
        "RandomResize",
        "RandomCrop",
        "YOLOXHSVRandomAug",
        "RandomFlip",
        "Pad",
        "CachedMixUp",
    ]
    for aug in stage1.augmentations.augs:
        _check(aug, _COMMON.get(type(aug).__name__, {}))
    mosaic, resize, *_, mixup = stage1.augmentations.augs
    _check(mosaic, want["mosaic"])
    _check(mixup, want["mixup"])
    _check(resize, {"scale": (1280, 1280), "ratio_range": want["ratio_range"], "keep_ratio": True})
    assert stage1.image_format == "BGR" and cfg.dataloader.train.aspect_ratio_grouping is False

    stage2 = instantiate(cfg.dataloader.train_stage2.mapper)
    names = [type(a).__name__ for a in stage2.augmentations.augs]
    assert names == ["RandomResize", "RandomCrop", "YOLOXHSVRandomAug", "RandomFlip", "Pad"]
    for aug in stage2.augmentations.augs[1:]:
        _check(aug, _COMMON[type(aug).__name__])
    _check(stage2.augmentations.augs[0], {"scale": (640, 640), "ratio_range": want["ratio_range"], "keep_ratio": True})
    # stage 2 shares dataset, batch and workers with stage 1 (also after overrides)
    cfg.dataloader.train.total_batch_size = 16
    assert cfg.dataloader.train_stage2.total_batch_size == 16
    assert cfg.dataloader.train_stage2.dataset.names == "coco_2017_train"

    # switch after 280 of 300 epochs of 459 iterations, then evaluate every epoch
    (hook,) = cfg.train.hooks
    assert (hook.switch_iter, hook.loader, hook.eval_period) == (280 * 459, "dataloader.train_stage2", 459)
    assert cfg.train.max_iter == 300 * 459 and cfg.train.eval_period == 10 * 459
    if want["checkpoint"]:
        assert cfg.train.init_checkpoint == (
            "rtmdet-backbone://https://download.openmmlab.com/mmdetection/v3.0/rtmdet/" + want["checkpoint"]
        )


def test_shapes_demo_configs_state_their_pipelines():
    plain = LazyConfig.load(os.path.join(CONFIG_DIR, "rtmdet_tiny_shapes.py"))
    assert plain.train.hooks == [] and "train_stage2" not in plain.dataloader
    recipe = LazyConfig.load(os.path.join(CONFIG_DIR, "rtmdet_tiny_shapes_recipe.py"))
    stage1 = instantiate(recipe.dataloader.train.mapper).augmentations.augs
    assert [type(a).__name__ for a in stage1][0] == "CachedMosaic" and stage1[0].img_scale == (224, 224)
    assert recipe.train.hooks[0].switch_iter == 560 and recipe.train.max_iter == 600
