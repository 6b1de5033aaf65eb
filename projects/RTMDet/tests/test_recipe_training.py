"""The full RTMDet recipe through tools/lazyconfig_train_net.py (slow: trains in a new process):
the tiny COCO config on a generated COCO-format dataset with a pretrained-backbone checkpoint,
the pipeline switch at its iteration, evaluation after it, and a resume after the switch."""

import json
import os

import pytest
import torch
from rtmdet_testing import REPO, run_train_tool, write_coco_fixture
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_pretrained import _imagenet_checkpoint

CONFIG = os.path.join(REPO, "projects", "RTMDet", "configs", "rtmdet_tiny_8xb32-300e_coco.py")


def _train(tmp_path, out, *overrides, resume=False):
    return run_train_tool(
        CONFIG,
        "train.device=cpu",
        "train.log_period=1",
        "train.eval_period=0",
        "train.checkpointer.period=3",
        "dataloader.train.total_batch_size=2",
        "dataloader.train.num_workers=0",
        "dataloader.test.num_workers=0",
        "train.hooks.0.switch_iter=2",
        "train.hooks.0.eval_period=1",
        "model.test_score_thresh=0.0",
        f"train.init_checkpoint=rtmdet-backbone://{tmp_path / 'cspnext-tiny_imagenet_600e.pth'}",
        f"train.output_dir={out}",
        *overrides,
        resume=resume,
        env={"D2LITE_DATASETS": str(tmp_path / "datasets"), "FVCORE_CACHE": str(tmp_path / "cache")},
    )


def _metrics(out):
    with open(os.path.join(out, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.mark.slow
def test_tiny_coco_recipe_switches_evaluates_and_resumes_in_stage_2(tmp_path):
    coco = tmp_path / "datasets" / "coco"
    write_coco_fixture(str(coco), "train2017", num_images=6, seed=0)
    write_coco_fixture(str(coco), "val2017", num_images=2, seed=1)
    backbone_sd = _imagenet_checkpoint(tmp_path / "cspnext-tiny_imagenet_600e.pth")

    out = tmp_path / "run"
    log = _train(tmp_path, out, "train.max_iter=3", "train.vis_period=1")
    assert "switching the training data pipeline to stage 2 (dataloader.train_stage2) at iteration 2" in log
    records = _metrics(out)
    assert [r["iteration"] for r in records if "total_loss" in r] == [0, 1, 2]
    assert all(r["total_loss"] == r["total_loss"] for r in records if "total_loss" in r)  # finite, not NaN
    # the last iteration (2) is evaluated by EvalHook after training (stored at iteration 3), not by the hook
    assert [r["iteration"] for r in records if "bbox/AP" in r] == [3]
    # TensorBoard shows the training images of both stages, as the model gets them (640x640)
    acc = EventAccumulator(str(out), size_guidance={"images": 0}).Reload()
    shown = acc.Images("train/gt_boxes_0")
    assert [e.step for e in shown] == [0, 1, 2] and all((e.width, e.height) == (640, 640) for e in shown)
    final = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    assert final["iteration"] == 2
    # the backbone started from the checkpoint: stem weights moved only by 3 AdamW steps
    stem = "backbone.bottom_up.stem.0.conv.weight"
    assert (final["model"][stem] - backbone_sd["stem.0.conv.weight"]).abs().max() < 0.05

    # resume after the switch: stage 2 from the first iteration; the hook evaluates after iteration 3
    # (eval_period 1), EvalHook after the last one
    log = _train(tmp_path, out, "train.max_iter=5", resume=True)
    assert "Starting training from iteration 3" in log
    assert "switching the training data pipeline to stage 2 (dataloader.train_stage2) at iteration 3" in log
    records = _metrics(out)
    assert [r["iteration"] for r in records if "total_loss" in r] == [0, 1, 2, 3, 4]
    assert [r["iteration"] for r in records if "bbox/AP" in r] == [3, 3, 5]
