"""Converting detectron2 YAML configs into LazyConfig files: the files load, and build the same
model, optimizer, lr schedule and augmentations as the YAML does through from_config."""

import logging

import numpy as np
import pytest
import torch
from helpers import DETECTRON2_CONFIGS, REPO_ROOT, assert_same_detector

from d2lite.config import LazyConfig, get_cfg, instantiate
from d2lite.config.yacs_to_lazy import ConversionError, convert_yacs_config, lazy_config_source, yacs_to_lazy
from d2lite.data import DatasetMapper
from d2lite.data import transforms as T
from d2lite.data.samplers import RepeatFactorTrainingSampler
from d2lite.modeling import build_model
from d2lite.solver import LRMultiplier, build_lr_scheduler, build_optimizer

R50_1X = DETECTRON2_CONFIGS / "COCO-Detection" / "retinanet_R_50_FPN_1x.yaml"
R50_3X = DETECTRON2_CONFIGS / "COCO-Detection" / "retinanet_R_50_FPN_3x.yaml"


def _yaml_cfg(yaml, *opts):
    cfg = get_cfg()
    cfg.merge_from_file(str(yaml))
    cfg.merge_from_list(list(opts))
    return cfg


def _convert(tmp_path, yaml, *opts, name="converted.py"):
    """(converted LazyConfig loaded from a file, its text, the YAML cfg with the same opts)."""
    text = convert_yacs_config(str(yaml), opts)
    path = tmp_path / name
    path.write_text(text)
    return LazyConfig.load(str(path)), text, _yaml_cfg(yaml, *opts)


def _overrides(text):
    """The assignment lines after the configs/common sections."""
    body = text.split('train = get_config("common/train.py").train\n', 1)[1]
    return [line for line in body.splitlines() if line and not line.startswith((" ", ")", "]"))]


def _assert_same_solver(lazy, cfg, model, iterations):
    lazy.optimizer.params.model = model
    opt_lazy = instantiate(lazy.optimizer)
    opt_yaml = build_optimizer(cfg, model)
    names = {id(p): n for n, p in model.named_parameters()}

    def groups(opt):
        defaults = {k for k in opt.defaults if k not in ("lr", "weight_decay", "momentum", "nesterov")}
        return [
            ([names[id(p)] for p in g["params"]], {k: v for k, v in g.items() if k != "params" and k not in defaults})
            for g in opt.param_groups
        ]

    assert groups(opt_lazy) == groups(opt_yaml)
    sched_lazy = LRMultiplier(opt_lazy, instantiate(lazy.lr_multiplier), lazy.train.max_iter)
    sched_yaml = build_lr_scheduler(cfg, opt_yaml)
    for it in iterations:
        for sched in (sched_lazy, sched_yaml):
            sched.last_epoch = it - 1
            sched.optimizer.step()
            sched.step()
        assert [g["lr"] for g in opt_lazy.param_groups] == [g["lr"] for g in opt_yaml.param_groups], it


def test_retinanet_1x_yaml_converts_to_a_short_file(tmp_path):
    lazy, text, cfg = _convert(tmp_path, R50_1X)
    assert _overrides(text) == [
        "lr_multiplier = L(WarmupParamScheduler)(",
        "model.backbone.bottom_up.freeze_at = 2",
        "optimizer.lr = 0.01",
        "train.init_checkpoint = 'detectron2://ImageNetPretrained/MSRA/R-50.pkl'",
        "train.eval_period = 0",  # TEST.EVAL_PERIOD: evaluate after training only
        "train.seed = -1",  # detectron2's SEED: random
    ]
    assert 'model = get_config("common/models/retinanet.py").model' in text
    # the schedule: SOLVER.STEPS, MAX_ITER, WARMUP_*
    assert lazy.lr_multiplier.scheduler.milestones == [60000, 80000] and lazy.train.max_iter == 90000
    # the same data as the LazyConfig counterpart, configs/COCO-Detection/retinanet_R_50_FPN_1x.py
    reference = LazyConfig.load(str(REPO_ROOT / "configs" / "COCO-Detection" / "retinanet_R_50_FPN_1x.py"))
    assert LazyConfig.to_py(lazy.dataloader) == LazyConfig.to_py(reference.dataloader)
    assert lazy.train.init_checkpoint == reference.train.init_checkpoint
    # the same model and schedule as build_model / build_optimizer / build_lr_scheduler on the YAML
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(0)  # a fixed initialisation, whatever ran before (its detections are compared below)
    from_yaml = build_model(cfg)
    assert_same_detector(instantiate(lazy.model), from_yaml, num_classes=80)
    _assert_same_solver(lazy, cfg, from_yaml, (0, 1, 999, 1000, 59999, 60000, 80000, 89999))


def test_retinanet_3x_yaml(tmp_path):
    lazy, text, _ = _convert(tmp_path, R50_3X)
    assert "milestones=[210000, 250000]" in text and "num_updates=270000" in text
    assert lazy.train.max_iter == 270000 and lazy.lr_multiplier.warmup_length == pytest.approx(1000 / 270000)


def test_yaml_with_overrides(tmp_path):
    """Many settings at once: every section of the converted file follows the YAML."""
    yaml = tmp_path / "retinanet_R_18_shapes.yaml"
    yaml.write_text(
        f'_BASE_: "{R50_1X}"\n'
        """MODEL:
  WEIGHTS: ""
  DEVICE: "cpu"
  PIXEL_STD: [57.375, 57.12, 58.395]
  BACKBONE:
    FREEZE_AT: 0
  RESNETS:
    DEPTH: 18
    RES2_OUT_CHANNELS: 64
    NORM: "BN"
  FPN:
    OUT_CHANNELS: 64
    NORM: "GN"
  ANCHOR_GENERATOR:
    SIZES: !!python/object/apply:eval ["[[x, x * 1.5] for x in [16, 32, 64]]"]
    ASPECT_RATIOS: [[1.0, 2.0]]
    OFFSET: 0.5
  RETINANET:
    NUM_CLASSES: 3
    IN_FEATURES: ["p3", "p4", "p5"]
    NUM_CONVS: 2
    NORM: "GN"
    BBOX_REG_LOSS_TYPE: "giou"
    SCORE_THRESH_TEST: 0.1
    FOCAL_LOSS_GAMMA: 1.5
DATASETS:
  TRAIN: ("shapes_train",)
  TEST: ("shapes_val",)
DATALOADER:
  NUM_WORKERS: 1
  SAMPLER_TRAIN: "RepeatFactorTrainingSampler"
  REPEAT_THRESHOLD: 0.5
INPUT:
  FORMAT: "RGB"
  MIN_SIZE_TRAIN: (96, 128)
  MIN_SIZE_TRAIN_SAMPLING: "range"
  MAX_SIZE_TRAIN: 256
  MIN_SIZE_TEST: 112
  RANDOM_FLIP: "vertical"
  CROP:
    ENABLED: True
    TYPE: "absolute"
    SIZE: [100, 120]
SOLVER:
  LR_SCHEDULER_NAME: "WarmupCosineLR"
  BASE_LR: 0.02
  BASE_LR_END: 0.002
  MAX_ITER: 500
  WARMUP_ITERS: 50
  WARMUP_METHOD: "constant"
  BIAS_LR_FACTOR: 2.0
  WEIGHT_DECAY_BIAS: 0.0
  WEIGHT_DECAY: 0.0005
  IMS_PER_BATCH: 4
  CHECKPOINT_PERIOD: 100
  AMP:
    ENABLED: True
  CLIP_GRADIENTS:
    ENABLED: True
    CLIP_VALUE: 5.0
TEST:
  EVAL_PERIOD: 250
  DETECTIONS_PER_IMAGE: 50
OUTPUT_DIR: "./output/r18_shapes"
SEED: 5
VIS_PERIOD: 20
"""
    )
    lazy, text, cfg = _convert(tmp_path, yaml)
    compile(text, "converted.py", "exec")
    assert_same_detector(instantiate(lazy.model), build_model(cfg), num_classes=3)
    _assert_same_solver(lazy, cfg, build_model(cfg), (0, 10, 49, 50, 51, 250, 499))

    # training augmentations: same objects as DatasetMapper(cfg, True) builds, same results
    from_lazy, from_yaml = instantiate(lazy.dataloader.train.mapper), DatasetMapper(cfg, True)
    assert from_lazy.image_format == from_yaml.image_format == "RGB"
    augs_lazy, augs_yaml = from_lazy.augmentations.augs, from_yaml.augmentations.augs
    assert (
        [type(a) for a in augs_lazy]
        == [type(a) for a in augs_yaml]
        == [T.RandomCrop, T.ResizeShortestEdge, T.RandomFlip]
    )
    for a, b in zip(augs_lazy, augs_yaml):
        assert {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in vars(a).items()} == {
            k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in vars(b).items()
        }
    image = np.random.default_rng(0).integers(0, 256, size=(150, 200, 3), dtype=np.uint8)
    state = np.random.get_state()
    try:
        outs = []
        for mapper in (from_lazy, from_yaml):
            np.random.seed(1)
            aug_input = T.AugInput(image.copy())
            mapper.augmentations(aug_input)
            outs.append(aug_input.image)
        assert np.array_equal(*outs)
    finally:
        np.random.set_state(state)
    assert instantiate(lazy.dataloader.test.mapper).augmentations.augs[0].short_edge_length == (112, 112)

    # data, sampler and training settings
    train = lazy.dataloader.train
    assert (train.dataset.names, train.total_batch_size, train.num_workers) == ("shapes_train", 4, 1)
    assert train.sampler._target_ is RepeatFactorTrainingSampler and train.sampler.repeat_factors.repeat_thresh == 0.5
    assert lazy.dataloader.test.dataset.names == "shapes_val" and lazy.dataloader.evaluator.dataset_name == "shapes_val"
    assert lazy.dataloader.test.num_workers == 1 and lazy.dataloader.test.mapper.image_format == "RGB"
    t = lazy.train
    assert (t.max_iter, t.eval_period, t.seed, t.device, t.output_dir) == (500, 250, 5, "cpu", "./output/r18_shapes")
    assert t.init_checkpoint == "" and t.amp.enabled and t.checkpointer.period == 100
    assert t.clip_grad == {"enabled": True, "clip_type": "value", "clip_value": 5.0, "norm_type": 2.0}
    assert lazy.model.vis_period == 20 and lazy.model.input_format == "RGB"


def test_resnext_backbone_with_explicit_stages(tmp_path):
    """A ResNet layout make_default_stages cannot express (ResNeXt widths, dilated res5, P6 by
    max pooling) is written stage by stage."""
    opts = [
        "MODEL.DEVICE", "cpu",
        "MODEL.BACKBONE.NAME", "build_resnet_fpn_backbone",
        "MODEL.RESNETS.NUM_GROUPS", "32",
        "MODEL.RESNETS.WIDTH_PER_GROUP", "4",
        "MODEL.RESNETS.STRIDE_IN_1X1", "False",
        "MODEL.RETINANET.IN_FEATURES", '["p3", "p4", "p5", "p6"]',
        "MODEL.ANCHOR_GENERATOR.SIZES", "[[32], [64], [128], [256]]",
        "MODEL.FPN.FUSE_TYPE", "avg",
    ]  # fmt: skip
    lazy, text, cfg = _convert(tmp_path, R50_1X, *opts)
    assert "model.backbone.bottom_up.stages = [" in text and "L(ResNet.make_stage)(" in text
    assert "model.backbone.top_block = L(LastLevelMaxPool)()" in text
    assert_same_detector(instantiate(lazy.model), build_model(cfg), num_classes=80)


def test_converted_model_matches_for_a_plain_resnet_backbone():
    cfg = _yaml_cfg(
        R50_1X,
        "MODEL.DEVICE", "cpu",
        "MODEL.BACKBONE.NAME", "build_resnet_backbone",
        "MODEL.RESNETS.DEPTH", "18",
        "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
        "MODEL.RESNETS.OUT_FEATURES", '["res5"]',
        "MODEL.RETINANET.IN_FEATURES", '["res5"]',
        "MODEL.ANCHOR_GENERATOR.SIZES", "[[64, 128]]",
    )  # fmt: skip
    lazy = yacs_to_lazy(cfg)
    assert_same_detector(instantiate(lazy.model), build_model(cfg), num_classes=80)
    assert "model.backbone = L(ResNet)(" in lazy_config_source(cfg)


def test_notes_and_test_sets(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="d2lite.config.yacs_to_lazy"):
        lazy, text, _ = _convert(
            tmp_path,
            R50_1X,
            "SOLVER.CLIP_GRADIENTS.ENABLED", "True",
            "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "norm",
            "DATASETS.TEST", "('coco_2017_val', 'coco_2017_test')",
            "SOLVER.REFERENCE_WORLD_SIZE", "8",
        )  # fmt: skip
    docstring = text.split('"""')[1]
    assert "Notes:" in docstring and "per-parameter" in docstring and "REFERENCE_WORLD_SIZE=8" in docstring
    assert "evaluates the first (coco_2017_val)" in docstring and caplog.text.count("retinanet_R_50_FPN_1x.yaml") == 3
    assert lazy.dataloader.test.dataset.names == "coco_2017_val" and lazy.train.clip_grad.clip_type == "norm"
    lazy, text, _ = _convert(tmp_path, R50_1X, "DATASETS.TEST", "()", name="no_test.py")
    assert "del dataloader.test\ndel dataloader.evaluator\n" in text
    assert set(lazy.dataloader.keys()) == {"train"}


@pytest.mark.parametrize(
    "opts, key",
    [
        (["MODEL.META_ARCHITECTURE", "GeneralizedRCNN"], "MODEL.META_ARCHITECTURE='GeneralizedRCNN'"),
        (["MODEL.BACKBONE.NAME", "build_mobilenet_backbone"], "MODEL.BACKBONE.NAME='build_mobilenet_backbone'"),
        (["SOLVER.LR_SCHEDULER_NAME", "WarmupPolyLR"], "SOLVER.LR_SCHEDULER_NAME='WarmupPolyLR'"),
        (["DATALOADER.SAMPLER_TRAIN", "WeightedTrainingSampler"], "DATALOADER.SAMPLER_TRAIN"),
        (["DATASETS.TRAIN", "()"], "DATASETS.TRAIN is empty"),
        (["MODEL.RETINANET.IN_FEATURES", '["p2"]'], "MODEL.RETINANET.IN_FEATURES"),
    ],
)
def test_settings_without_a_lazyconfig_form_are_errors(opts, key):
    with pytest.raises(ConversionError, match=key.replace("(", r"\(").replace(")", r"\)")):
        convert_yacs_config(str(R50_1X), opts)


def test_backbone_errors_come_from_the_builders():
    with pytest.raises(ValueError, match="DEFORM_ON_PER_STAGE"):
        convert_yacs_config(str(R50_1X), ["MODEL.RESNETS.DEFORM_ON_PER_STAGE", "[True, True, True, True]"])


def test_conversion_does_not_touch_torch_state():
    before = torch.get_default_device() if hasattr(torch, "get_default_device") else None
    yacs_to_lazy(_yaml_cfg(R50_1X))
    after = torch.get_default_device() if hasattr(torch, "get_default_device") else None
    assert before == after and torch.zeros(1).device.type == "cpu"
