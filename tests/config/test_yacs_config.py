"""get_cfg / CfgNode: detectron2's defaults and YAML files (_BASE_, scope, errors)."""

import logging

import pytest
from helpers import DETECTRON2_CONFIGS
from omegaconf import DictConfig

from d2lite.config import CfgNode, configurable, get_cfg

R50_1X = DETECTRON2_CONFIGS / "COCO-Detection" / "retinanet_R_50_FPN_1x.yaml"
R50_3X = DETECTRON2_CONFIGS / "COCO-Detection" / "retinanet_R_50_FPN_3x.yaml"
OCTAVES = [[x, x * 2 ** (1.0 / 3), x * 2 ** (2.0 / 3)] for x in [32, 64, 128, 256, 512]]


def _write(path, text):
    path.write_text(text)
    return str(path)


def test_defaults_are_detectron2s_for_the_keys_in_scope():
    cfg = get_cfg()
    assert isinstance(cfg, CfgNode)
    assert set(cfg.keys()) == {
        "VERSION", "MODEL", "INPUT", "DATASETS", "DATALOADER", "SOLVER", "TEST", "OUTPUT_DIR", "SEED", "VIS_PERIOD",
    }  # fmt: skip
    assert set(cfg.MODEL.keys()) == {
        "DEVICE", "META_ARCHITECTURE", "WEIGHTS", "PIXEL_MEAN", "PIXEL_STD",
        "BACKBONE", "FPN", "ANCHOR_GENERATOR", "RETINANET", "RESNETS",
    }  # fmt: skip
    # a sample of detectron2's values (detectron2/config/defaults.py)
    assert cfg.VERSION == 2 and cfg.SEED == -1 and cfg.OUTPUT_DIR == "./output"
    assert cfg.MODEL.META_ARCHITECTURE == "GeneralizedRCNN" and cfg.MODEL.DEVICE == "cuda"
    assert cfg.MODEL.PIXEL_MEAN == [103.530, 116.280, 123.675] and cfg.MODEL.PIXEL_STD == [1.0, 1.0, 1.0]
    assert cfg.MODEL.BACKBONE.FREEZE_AT == 2 and cfg.MODEL.RESNETS.OUT_FEATURES == ["res4"]
    assert cfg.MODEL.RESNETS.STRIDE_IN_1X1 is True and cfg.MODEL.RESNETS.NORM == "FrozenBN"
    assert cfg.MODEL.ANCHOR_GENERATOR.SIZES == [[32, 64, 128, 256, 512]] and cfg.MODEL.ANCHOR_GENERATOR.OFFSET == 0.0
    r = cfg.MODEL.RETINANET
    assert (r.NUM_CLASSES, r.NUM_CONVS, r.PRIOR_PROB, r.SMOOTH_L1_LOSS_BETA) == (80, 4, 0.01, 0.1)
    assert (r.SCORE_THRESH_TEST, r.TOPK_CANDIDATES_TEST, r.NMS_THRESH_TEST) == (0.05, 1000, 0.5)
    assert r.IN_FEATURES == ["p3", "p4", "p5", "p6", "p7"] and r.BBOX_REG_WEIGHTS == (1.0, 1.0, 1.0, 1.0)
    assert cfg.INPUT.MIN_SIZE_TRAIN == (800,) and cfg.INPUT.MAX_SIZE_TEST == 1333 and cfg.INPUT.FORMAT == "BGR"
    s = cfg.SOLVER
    assert (s.BASE_LR, s.MAX_ITER, s.STEPS, s.WARMUP_ITERS, s.WARMUP_FACTOR) == (0.001, 40000, (30000,), 1000, 0.001)
    assert (s.IMS_PER_BATCH, s.WEIGHT_DECAY, s.WEIGHT_DECAY_NORM, s.WEIGHT_DECAY_BIAS) == (16, 1e-4, 0.0, None)
    assert cfg.DATALOADER.NUM_WORKERS == 4 and cfg.TEST.DETECTIONS_PER_IMAGE == 100


def test_get_cfg_returns_a_fresh_copy():
    cfg = get_cfg()
    cfg.SOLVER.BASE_LR = 1.0
    cfg.MODEL.PIXEL_MEAN.append(0.0)
    assert get_cfg().SOLVER.BASE_LR == 0.001 and len(get_cfg().MODEL.PIXEL_MEAN) == 3


def test_merge_retinanet_yaml_with_base():
    cfg = get_cfg()
    cfg.merge_from_file(str(R50_1X))
    m = cfg.MODEL
    assert m.META_ARCHITECTURE == "RetinaNet" and m.BACKBONE.NAME == "build_retinanet_resnet_fpn_backbone"
    assert m.WEIGHTS == "detectron2://ImageNetPretrained/MSRA/R-50.pkl" and m.RESNETS.DEPTH == 50
    assert m.ANCHOR_GENERATOR.SIZES == OCTAVES  # the !!python/object/apply:eval value, evaluated safely
    assert m.RETINANET.SMOOTH_L1_LOSS_BETA == 0.0 and m.RESNETS.OUT_FEATURES == ["res3", "res4", "res5"]
    # yacs reads "(640, ...)" strings as Python literals
    assert cfg.INPUT.MIN_SIZE_TRAIN == (640, 672, 704, 736, 768, 800) and cfg.DATASETS.TRAIN == ("coco_2017_train",)
    assert (cfg.SOLVER.BASE_LR, cfg.SOLVER.STEPS, cfg.SOLVER.MAX_ITER) == (0.01, (60000, 80000), 90000)
    cfg3 = get_cfg()
    cfg3.merge_from_file(str(R50_3X))  # the file's own values win over its base
    assert (cfg3.SOLVER.STEPS, cfg3.SOLVER.MAX_ITER) == ((210000, 250000), 270000)


def test_base_lists_relative_and_absolute_paths(tmp_path):
    (tmp_path / "sub").mkdir()
    a = _write(tmp_path / "a.yaml", "SOLVER:\n  BASE_LR: 0.1\n  MAX_ITER: 10\n")
    _write(tmp_path / "b.yaml", "SOLVER:\n  BASE_LR: 0.2\n  GAMMA: 0.5\n")
    child = _write(tmp_path / "sub" / "c.yaml", f'_BASE_: ["{a}", "../b.yaml"]\nSOLVER:\n  GAMMA: 0.25\n')
    cfg = get_cfg()
    cfg.merge_from_file(child)
    assert (cfg.SOLVER.BASE_LR, cfg.SOLVER.MAX_ITER, cfg.SOLVER.GAMMA) == (0.2, 10, 0.25)


def test_base_errors_name_the_files(tmp_path):
    missing = _write(tmp_path / "m.yaml", '_BASE_: "nope.yaml"\n')
    with pytest.raises(FileNotFoundError, match=r"nope.yaml'.*the _BASE_ of .*m.yaml"):
        get_cfg().merge_from_file(missing)
    _write(tmp_path / "x.yaml", '_BASE_: "y.yaml"\n')
    _write(tmp_path / "y.yaml", '_BASE_: "x.yaml"\n')
    with pytest.raises(ValueError, match="Circular _BASE_"):
        get_cfg().merge_from_file(str(tmp_path / "x.yaml"))
    with pytest.raises(FileNotFoundError, match="absent.yaml"):
        get_cfg().merge_from_file(str(tmp_path / "absent.yaml"))


def test_merge_from_list_and_freeze():
    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.RETINANET.NUM_CLASSES", "3", "DATASETS.TRAIN", "('shapes_train',)", "SEED", 7])
    assert cfg.MODEL.RETINANET.NUM_CLASSES == 3 and cfg.DATASETS.TRAIN == ("shapes_train",) and cfg.SEED == 7
    cfg.freeze()
    assert cfg.is_frozen()
    with pytest.raises(AttributeError):
        cfg.SEED = 1
    with pytest.raises(AttributeError):
        cfg.SOLVER.BASE_LR = 1.0
    cfg.defrost()
    cfg.SEED = 1
    assert cfg.SEED == 1


def test_bad_values_name_the_key(tmp_path):
    with pytest.raises(ValueError, match="MODEL.RETINANET.NUM_CLASSES"):
        get_cfg().merge_from_list(["MODEL.RETINANET.NUM_CLASSES", "'three'"])
    bad = _write(tmp_path / "bad.yaml", "SOLVER:\n  MAX_ITER: many\n")
    with pytest.raises(ValueError, match=r"bad.yaml.*SOLVER.MAX_ITER"):
        get_cfg().merge_from_file(bad)
    with pytest.raises(ValueError, match="odd number"):
        get_cfg().merge_from_list(["SEED"])


def test_unknown_keys_are_errors_with_a_suggestion(tmp_path):
    typo = _write(tmp_path / "typo.yaml", "MODEL:\n  RETINANET:\n    NUM_CLASES: 3\n")
    with pytest.raises(
        KeyError, match=r"typo.yaml.*'MODEL.RETINANET.NUM_CLASES'.*Did you mean 'MODEL.RETINANET.NUM_CLASSES'"
    ):
        get_cfg().merge_from_file(typo)
    with pytest.raises(KeyError, match=r"'SOLVER.BASE_RL'.*Did you mean 'SOLVER.BASE_LR'"):
        get_cfg().merge_from_list(["SOLVER.BASE_RL", "0.1"])
    with pytest.raises(KeyError, match="NOT_A_SECTION"):
        get_cfg().merge_from_list(["NOT_A_SECTION.X", "1"])


def test_out_of_scope_keys_are_dropped_with_one_warning(tmp_path, caplog):
    """detectron2's Base-RCNN-FPN.yaml keys load unchanged; the R-CNN parts are listed once."""
    rcnn = _write(
        tmp_path / "Base-RCNN-FPN.yaml",
        """MODEL:
  META_ARCHITECTURE: "GeneralizedRCNN"
  MASK_ON: True
  BACKBONE:
    NAME: "build_resnet_fpn_backbone"
  RESNETS:
    OUT_FEATURES: ["res2", "res3", "res4", "res5"]
  FPN:
    IN_FEATURES: ["res2", "res3", "res4", "res5"]
  ANCHOR_GENERATOR:
    SIZES: [[32], [64], [128], [256], [512]]
    ASPECT_RATIOS: [[0.5, 1.0, 2.0]]
    ANGLES: [[-90, 0, 90]]
  RPN:
    IN_FEATURES: ["p2", "p3", "p4", "p5", "p6"]
    PRE_NMS_TOPK_TRAIN: 2000
  ROI_HEADS:
    NAME: "StandardROIHeads"
    IN_FEATURES: ["p2", "p3", "p4", "p5"]
  ROI_BOX_HEAD:
    NAME: "FastRCNNConvFCHead"
    NUM_FC: 2
INPUT:
  MASK_FORMAT: "bitmask"
TEST:
  AUG:
    ENABLED: True
VERSION: 2
""",
    )
    cfg = get_cfg()
    with caplog.at_level(logging.WARNING, logger="d2lite.config.config"):
        cfg.merge_from_file(rcnn)
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(messages) == 1
    for key in ("MODEL.MASK_ON", "MODEL.ANCHOR_GENERATOR.ANGLES", "MODEL.RPN", "MODEL.ROI_HEADS"):
        assert key in messages[0]
    assert "Base-RCNN-FPN.yaml" in messages[0] and "INPUT.MASK_FORMAT" in messages[0] and "TEST.AUG" in messages[0]
    assert cfg.MODEL.ANCHOR_GENERATOR.SIZES == [[32], [64], [128], [256], [512]]  # in-scope values are kept
    assert "RPN" not in cfg.MODEL and "MASK_FORMAT" not in cfg.INPUT
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="d2lite.config.config"):
        cfg.merge_from_list(["MODEL.KEYPOINT_ON", "True", "MODEL.ROI_HEADS.NUM_CLASSES", "3", "SEED", "1"])
    assert [r.getMessage().count("MODEL.") for r in caplog.records] == [2] and cfg.SEED == 1


def test_keys_added_by_a_project_are_kept():
    """A project that adds keys (as detectron2 projects' add_*_config do) keeps them even if
    detectron2 core calls them out of scope."""
    cfg = get_cfg()
    cfg.MODEL.ROI_HEADS = CfgNode({"NUM_CLASSES": 80})
    cfg.merge_from_list(["MODEL.ROI_HEADS.NUM_CLASSES", "3"])
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 3


def test_config_versions(tmp_path, caplog):
    old = _write(tmp_path / "v1.yaml", "VERSION: 1\nSEED: 3\n")
    with pytest.raises(ValueError, match=r"v1.yaml: VERSION 1 is not supported"):
        get_cfg().merge_from_file(old)
    unversioned = _write(tmp_path / "none.yaml", "SEED: 3\n")
    cfg = get_cfg()
    with caplog.at_level(logging.WARNING, logger="d2lite.config.config"):
        cfg.merge_from_file(unversioned)
    assert cfg.SEED == 3 and "has no VERSION" in caplog.text


def test_configurable_accepts_a_cfgnode():
    class Head:
        @configurable
        def __init__(self, *, num_classes: int, prior_prob: float = 0.01):
            self.num_classes, self.prior_prob = num_classes, prior_prob

        @classmethod
        def from_config(cls, cfg):
            return {"num_classes": cfg.MODEL.RETINANET.NUM_CLASSES, "prior_prob": cfg.MODEL.RETINANET.PRIOR_PROB}

    cfg = get_cfg()
    head = Head(cfg, prior_prob=0.5)
    assert (head.num_classes, head.prior_prob) == (80, 0.5)
    assert Head(DictConfig({"MODEL": {"RETINANET": {"NUM_CLASSES": 3, "PRIOR_PROB": 0.1}}})).num_classes == 3
    assert Head(num_classes=5).num_classes == 5
