"""The user-facing tools run on the demo config and write what they promise."""

import json
import shutil
import sys

import numpy as np
import torch
from helpers import QUICK_CONFIG, REPO_ROOT
from PIL import Image

sys.path.insert(0, str(REPO_ROOT / "tools"))

import analyze_model  # noqa: E402
import benchmark  # noqa: E402
import dump_config  # noqa: E402
import predict  # noqa: E402
import visualize_data  # noqa: E402

from d2lite.checkpoint import DetectionCheckpointer  # noqa: E402
from d2lite.config import LazyConfig, instantiate  # noqa: E402
from d2lite.data import DatasetCatalog  # noqa: E402

CONFIG = str(REPO_ROOT / QUICK_CONFIG)


def test_dump_config_yaml_round_trips_with_overrides(tmp_path):
    out = tmp_path / "cfg.yaml"
    assert (
        dump_config.main(["--config-file", CONFIG, "--format", "yaml", "--output", str(out), "train.max_iter=7"]) == 0
    )
    cfg = LazyConfig.load(str(out))
    assert cfg.train.max_iter == 7
    original = LazyConfig.apply_overrides(LazyConfig.load(CONFIG), ["train.max_iter=7"])
    assert cfg.model.num_classes == original.model.num_classes == 3
    assert cfg.model.anchor_generator.sizes == original.model.anchor_generator.sizes


def test_dump_config_python_source_loads_back(tmp_path, capsys):
    assert dump_config.main(["--config-file", CONFIG, "train.max_iter=9"]) == 0
    dumped = tmp_path / "dumped.py"
    dumped.write_text(capsys.readouterr().out)
    cfg = LazyConfig.load(str(dumped))
    original = LazyConfig.apply_overrides(LazyConfig.load(CONFIG), ["train.max_iter=9"])
    assert LazyConfig.to_py(cfg) == LazyConfig.to_py(original)
    assert cfg.train.max_iter == 9
    instantiate(cfg.model)  # builds


def test_dump_config_yaml_to_stdout(tmp_path, capsys):
    assert dump_config.main(["--config-file", CONFIG, "--format", "yaml", "train.max_iter=8"]) == 0
    (tmp_path / "cfg.yaml").write_text(capsys.readouterr().out)
    assert LazyConfig.load(str(tmp_path / "cfg.yaml")).train.max_iter == 8


def test_dump_config_unknown_key_is_an_error(capsys):
    assert dump_config.main(["--config-file", CONFIG, "train.max_itr=9"]) == 2
    assert "train.max_itr" in capsys.readouterr().err


def test_analyze_model_defaults_to_the_test_input_size_without_warnings():
    """A fresh process (the warnings of fvcore's import only show there): nothing on stderr,
    and the input is shapes_val's median image after the config's ResizeShortestEdge."""
    from helpers import run_tool

    from d2lite.data.transforms import ResizeShortestEdge

    proc = run_tool("analyze_model.py", "--config-file", QUICK_CONFIG, "--tasks", "flop", timeout=300)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    dicts = DatasetCatalog.get("shapes_val")
    h, w = int(np.median([d["height"] for d in dicts])), int(np.median([d["width"] for d in dicts]))
    (resize,) = LazyConfig.load(CONFIG).dataloader.test.mapper.augmentations
    short = resize.short_edge_length  # a single size at test time
    expected = "{}x{}".format(*ResizeShortestEdge.get_output_shape(h, w, short, resize.max_size))
    assert (
        f"Input size {expected}: the median test image, {h}x{w}, after the config's test augmentations" in proc.stdout
    )


def test_analyze_model_counts_parameters_and_flops(capsys):
    assert analyze_model.main(["--config-file", CONFIG, "--input-size", "128", "160"]) == 0
    out = capsys.readouterr().out
    model = instantiate(LazyConfig.load(CONFIG).model)
    total = sum(p.numel() for p in model.parameters())
    assert f"Total parameters: {total:,}" in out
    gflops = float(out.split("FLOPs (backbone + head, fused multiply-adds):")[1].split("G")[0])
    # ResNet-18 alone is ~1.8 GFLOPs at 224x224; at 128x160 the whole detector is a fraction of that.
    assert 0.2 < gflops < 3.0


def test_predict_writes_images_and_json(tmp_path, capsys):
    cfg = LazyConfig.load(CONFIG)
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("weights")
    images = tmp_path / "images"
    images.mkdir()
    for d in DatasetCatalog.get("shapes_val")[:2]:
        shutil.copy(d["file_name"], images)
    out = tmp_path / "pred"
    assert (
        predict.main(
            [
                "--config-file",
                CONFIG,
                "--input",
                str(images),
                "--output",
                str(out),
                "--confidence-threshold",
                "0.0",
                f"train.init_checkpoint={tmp_path / 'weights.pth'}",
                # An untrained model scores ~0.01 (the prior): keep every candidate.
                "model.test_score_thresh=0.0",
            ]
        )
        == 0
    )
    drawn = sorted(out.glob("*.png"))
    assert len(drawn) == 2
    source = np.asarray(Image.open(sorted(images.iterdir())[0]))
    assert np.asarray(Image.open(drawn[0])).shape == source.shape
    records = json.loads((out / "predictions.json").read_text())
    assert records and {"file_name", "box_xyxy", "score", "category"} <= set(records[0])
    assert records[0]["category"] in ("circle", "square", "triangle")


def test_predict_missing_input_is_an_error(tmp_path, capsys):
    code = predict.main(["--config-file", CONFIG, "--input", str(tmp_path / "nope.png"), "--output", str(tmp_path)])
    assert code == 2 and "nope.png" in capsys.readouterr().err


def test_visualize_data_writes_augmented_images(tmp_path):
    assert visualize_data.main(["--config-file", CONFIG, "--output-dir", str(tmp_path), "--num-images", "3"]) == 0
    assert len(list(tmp_path.glob("*.png"))) == 3
    assert (
        visualize_data.main(
            [
                "--config-file",
                CONFIG,
                "--source",
                "annotation",
                "--output-dir",
                str(tmp_path / "raw"),
                "--num-images",
                "2",
            ]
        )
        == 0
    )
    assert len(list((tmp_path / "raw").glob("*.png"))) == 2


def test_visualize_data_unknown_loader_is_a_clear_error(tmp_path, capsys):
    code = visualize_data.main(["--config-file", CONFIG, "--loader", "train_stage9", "--output-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "dataloader.train_stage9" in err and "'train'" in err


def test_benchmark_reports_each_task(capsys):
    assert (
        benchmark.main(
            [
                "--config-file",
                CONFIG,
                "--task",
                "data",
                "train",
                "eval",
                "--num-iter",
                "2",
                "--warmup",
                "1",
                "dataloader.train.total_batch_size=2",
                "dataloader.train.num_workers=0",
                "dataloader.test.num_workers=0",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "data:" in out and "images/s" in out
    assert "train:" in out and "s/iter" in out
    assert "eval:" in out and "s/image" in out
