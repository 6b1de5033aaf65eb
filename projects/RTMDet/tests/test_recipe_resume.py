"""The shapes RTMDet recipe (CachedMosaic, CachedMixUp, ...) resumes bit-exactly through
tools/lazyconfig_train_net.py: a run with 2 data-loader workers, cut after its checkpoint
at iteration 2 (as a SIGKILL before the next one leaves it) and resumed with 0 workers,
ends with the uninterrupted run's losses per iteration and its final weights."""

import json
import os
import shutil

import pytest
import torch
from rtmdet_testing import REPO, run_train_tool

CONFIG = os.path.join(REPO, "projects", "RTMDet", "configs", "rtmdet_tiny_shapes_recipe.py")

pytestmark = [pytest.mark.slow, pytest.mark.onepass]


def _train(out, workers, resume=False):
    return run_train_tool(
        CONFIG,
        "train.max_iter=6",
        "train.checkpointer.period=3",
        "train.log_period=1",
        "train.vis_period=0",
        "dataloader.evaluator=None",
        "dataloader.train.total_batch_size=4",
        f"dataloader.train.num_workers={workers}",
        f"train.output_dir={out}",
        resume=resume,
        timeout=600,
    )


def _losses(out):
    losses = {}
    for line in (out / "metrics.json").read_text().splitlines():
        record = json.loads(line)
        if "total_loss" in record:
            losses[record["iteration"]] = {k: v for k, v in record.items() if k.startswith("loss")}
    return losses


def test_recipe_run_resumes_bit_exactly_with_another_number_of_workers(tmp_path):
    full = tmp_path / "full"
    _train(full, workers=2)

    # What a kill after the checkpoint of iteration 2 leaves: checkpoint, metrics up to it.
    cut = tmp_path / "cut"
    shutil.copytree(full, cut)
    for name in ("model_0000005.pth", "model_final.pth", "run.lock"):
        (cut / name).unlink(missing_ok=True)
    (cut / "last_checkpoint").write_text("model_0000002.pth")
    kept = [line for line in (cut / "metrics.json").read_text().splitlines() if json.loads(line)["iteration"] <= 2]
    (cut / "metrics.json").write_text("\n".join(kept) + "\n")
    shutil.rmtree(cut / "eval", ignore_errors=True)

    log = _train(cut, workers=0, resume=True)
    assert "Starting training from iteration 3" in log
    full_losses, resumed_losses = _losses(full), _losses(cut)
    assert sorted(full_losses) == list(range(6))
    assert resumed_losses == full_losses
    a = torch.load(full / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    b = torch.load(cut / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
