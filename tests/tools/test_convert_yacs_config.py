"""tools/convert_yacs_config.py, and a detectron2 YAML trained through the LazyConfig tool."""

import json
import shutil
import sys

import pytest
from helpers import DETECTRON2_CONFIGS, REPO_ROOT, run_tool

sys.path.insert(0, str(REPO_ROOT / "tools"))

import convert_yacs_config  # noqa: E402

from d2lite.config import LazyConfig  # noqa: E402

# onepass: the outcome does not depend on the float path (make test-1thread skips it).
pytestmark = pytest.mark.onepass

R50_1X = DETECTRON2_CONFIGS / "COCO-Detection" / "retinanet_R_50_FPN_1x.yaml"


def test_writes_the_py_file_next_to_the_yaml(tmp_path, capsys):
    shutil.copytree(DETECTRON2_CONFIGS, tmp_path / "configs")
    yaml = tmp_path / "configs" / "COCO-Detection" / "retinanet_R_50_FPN_1x.yaml"
    assert convert_yacs_config.main([str(yaml)]) == 0
    out = yaml.with_suffix(".py")
    assert f"Wrote {out}" in capsys.readouterr().out
    cfg = LazyConfig.load(str(out))
    assert cfg.optimizer.lr == 0.01 and cfg.model.backbone.bottom_up.freeze_at == 2
    # an existing file is kept unless --force
    assert convert_yacs_config.main([str(yaml), "MODEL.RETINANET.NUM_CLASSES", "3"]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert convert_yacs_config.main([str(yaml), "--force", "MODEL.RETINANET.NUM_CLASSES", "3", "SEED", "-1"]) == 0
    assert LazyConfig.load(str(out)).model.num_classes == 3


def test_output_option_and_errors(tmp_path, capsys):
    out = tmp_path / "mine.py"
    assert convert_yacs_config.main([str(R50_1X), "-o", str(out), "SOLVER.MAX_ITER", "100"]) == 0
    assert LazyConfig.load(str(out)).train.max_iter == 100
    assert convert_yacs_config.main([str(R50_1X), "-o", str(tmp_path / "x.py"), "SOLVER.MAX_ITR", "100"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'SOLVER.MAX_ITR'" in err and "Did you mean 'SOLVER.MAX_ITER'" in err
    code = convert_yacs_config.main([str(R50_1X), "-o", str(tmp_path / "y.py"), "MODEL.META_ARCHITECTURE", "Foo"])
    assert code == 2 and "MODEL.META_ARCHITECTURE='Foo'" in capsys.readouterr().err
    evil = tmp_path / "evil.yaml"
    evil.write_text("SEED: !!python/object/apply:eval [\"__import__('os').getpid()\"]\n")
    assert convert_yacs_config.main([str(evil)]) == 2
    assert "evil.yaml, line 1, key SEED" in capsys.readouterr().err
    assert not (tmp_path / "x.py").exists() and not (tmp_path / "evil.py").exists()


@pytest.mark.slow
def test_detectron2_yaml_trains_on_shapes_after_conversion(tmp_path):
    """detectron2's retinanet_R_50_FPN_1x.yaml, made small (R18, 96 px images, 3 iterations) and
    pointed at the shapes data, converted and trained by tools/lazyconfig_train_net.py."""
    yaml = tmp_path / "retinanet_R_18_FPN_shapes.yaml"
    yaml.write_text(
        f'_BASE_: "{R50_1X}"\n'
        """MODEL:
  WEIGHTS: ""
  DEVICE: "cpu"
  RESNETS:
    DEPTH: 18
    RES2_OUT_CHANNELS: 64
    NORM: "BN"
  BACKBONE:
    FREEZE_AT: 0
  FPN:
    OUT_CHANNELS: 64
  RETINANET:
    NUM_CLASSES: 3
DATASETS:
  TRAIN: ("shapes_train",)
  TEST: ("shapes_val",)
DATALOADER:
  NUM_WORKERS: 0
SOLVER:
  IMS_PER_BATCH: 2
  MAX_ITER: 3
  STEPS: (2,)
  WARMUP_ITERS: 1
INPUT:
  MIN_SIZE_TRAIN: (96,)
  MAX_SIZE_TRAIN: 128
  MIN_SIZE_TEST: 96
  MAX_SIZE_TEST: 128
SEED: 0
"""
    )
    converted = tmp_path / "retinanet_R_18_FPN_shapes.py"
    proc = run_tool("convert_yacs_config.py", str(yaml), "-o", str(converted))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "out"
    proc = run_tool(
        "lazyconfig_train_net.py",
        "--config-file",
        str(converted),
        f"train.output_dir={out}",
        "train.log_period=1",
        "model.test_score_thresh=0.0",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    lines = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    train_lines = [line for line in lines if "total_loss" in line]
    assert [line["iteration"] for line in train_lines] == [0, 1, 2]
    # SOLVER.BASE_LR 0.01 with a 1-iteration warmup, times GAMMA from STEPS (2,) on
    assert [line["lr"] for line in train_lines] == pytest.approx([1e-5, 0.01, 0.001])
    assert all(line["total_loss"] > 0 for line in train_lines)
    assert [line["iteration"] for line in lines if "bbox/AP" in line] == [3]  # evaluated after training
    assert (out / "model_final.pth").is_file()
