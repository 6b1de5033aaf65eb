"""A new idea is one project folder and one config file: a throwaway project, written
into a temporary directory, trains, evaluates and resumes through the unchanged
tools/lazyconfig_train_net.py, with a detector subclassing DenseDetector through its
public extension points and a stateful hook declared in the config's ``train.hooks``."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from helpers import REPO_ROOT

# onepass: the outcome does not depend on the float path (make test-1thread skips it).
pytestmark = [pytest.mark.slow, pytest.mark.onepass]

_DETECTOR = '''
"""A tiny anchor-free detector: one point per feature-map location, FCOS-style targets."""
import torch
from torch import nn

from d2lite.layers import batched_nms, giou_loss, sigmoid_focal_loss
from d2lite.modeling.meta_arch.dense_detector import DenseDetector
from d2lite.structures import Boxes, Instances


class PointHead(nn.Module):
    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.cls = nn.Conv2d(in_channels, num_classes, 3, padding=1)
        self.reg = nn.Conv2d(in_channels, 4, 3, padding=1)
        nn.init.constant_(self.cls.bias, -4.6)

    def forward(self, features):
        return [self.cls(f) for f in features], [self.reg(f) for f in features]


class PointDetector(DenseDetector):
    def __init__(self, *, backbone, head, head_in_features, num_classes, pixel_mean, pixel_std, score_thresh=0.05):
        super().__init__(backbone, head, head_in_features, pixel_mean=pixel_mean, pixel_std=pixel_std, vis_period=2)
        self.num_classes, self.score_thresh = num_classes, score_thresh
        self.strides = [backbone.output_shape()[f].stride for f in self.head_in_features]

    def _points(self, features):
        pts, strides = [], []
        for f, s in zip(features, self.strides):
            h, w = f.shape[-2:]
            ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
            pts.append(torch.stack([xs, ys], -1).reshape(-1, 2).float() * s + s // 2)
            strides.append(torch.full((h * w,), float(s)))
        return torch.cat(pts).to(self.device), torch.cat(strides).to(self.device)

    def _decode(self, points, strides, reg):
        d = reg.clamp(max=6).exp() * strides[:, None]
        return torch.cat([points - d[:, :2], points + d[:, 2:]], dim=1)

    def forward_training(self, images, features, predictions, gt_instances):
        cls, reg = (torch.cat(x, dim=1) for x in self.transpose_dense_predictions(predictions, [self.num_classes, 4]))
        points, strides = self._points(features)
        loss_cls, loss_box, num_pos = 0.0, 0.0, 0
        for i, gt in enumerate(gt_instances):
            labels = torch.full((len(points),), self.num_classes, device=self.device)
            boxes = gt.gt_boxes.tensor
            if len(boxes):
                inside = (points[:, None, 0] > boxes[None, :, 0]) & (points[:, None, 0] < boxes[None, :, 2])
                inside &= (points[:, None, 1] > boxes[None, :, 1]) & (points[:, None, 1] < boxes[None, :, 3])
                area = gt.gt_boxes.area()[None].expand_as(inside).masked_fill(~inside, float("inf"))
                best_area, best = area.min(dim=1)
                pos = torch.isfinite(best_area)
                labels[pos] = gt.gt_classes[best[pos]]
                if pos.any():
                    pred = self._decode(points[pos], strides[pos], reg[i][pos])
                    loss_box = loss_box + giou_loss(pred, boxes[best[pos]], reduction="sum")
                num_pos += int(pos.sum())
            target = nn.functional.one_hot(labels, self.num_classes + 1)[:, :-1].float()
            loss_cls = loss_cls + sigmoid_focal_loss(cls[i], target, reduction="sum")
        self.visualize_training_if_due(images, features, predictions)
        norm = max(num_pos, 1)
        return {"loss_cls": loss_cls / norm, "loss_box": loss_box / norm + 0 * reg.sum()}

    def forward_inference(self, images, features, predictions):
        cls, reg = (torch.cat(x, dim=1) for x in self.transpose_dense_predictions(predictions, [self.num_classes, 4]))
        points, strides = self._points(features)
        results = []
        for i, size in enumerate(images.image_sizes):
            scores = cls[i].sigmoid()
            keep = torch.nonzero(scores > self.score_thresh)[:1000]
            s = scores[keep[:, 0], keep[:, 1]]
            boxes = self._decode(points[keep[:, 0]], strides[keep[:, 0]], reg[i][keep[:, 0]])
            k = batched_nms(boxes, s, keep[:, 1], 0.5)[:100]
            results.append(Instances(size, pred_boxes=Boxes(boxes[k]), scores=s[k], pred_classes=keep[k, 1]))
        return results
'''

_HOOK = '''
from d2lite.engine import HookBase


class CountingHook(HookBase):
    """Counts steps; every `period` steps puts the count into the storage. Stateful."""

    def __init__(self, period: int):
        self.period, self.count = period, 0

    def after_step(self):
        self.count += 1
        if (self.trainer.iter + 1) % self.period == 0:
            self.trainer.storage.put_scalar("project/count", float(self.count), smoothing_hint=False)

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state):
        self.count = state["count"]
'''

_CONFIG = """
from d2lite.config import LazyCall as L
from d2lite.layers import ShapeSpec
from d2lite.model_zoo import get_config
from tinyproj import CountingHook, PointDetector, PointHead

quick = get_config("quick/retinanet_R_18_FPN_shapes.py")
dataloader, optimizer, lr_multiplier, train = quick.dataloader, quick.optimizer, quick.lr_multiplier, quick.train
model = L(PointDetector)(
    backbone=quick.model.backbone,
    head=L(PointHead)(in_channels=64, num_classes=3),
    head_in_features=["p3", "p4", "p5"],
    num_classes=3,
    pixel_mean=quick.model.pixel_mean,
    pixel_std=quick.model.pixel_std,
)
train.hooks = [L(CountingHook)(period=2, priority="ABOVE_NORMAL")]
train.max_iter = 6
"""


def _write_project(root):
    pkg = root / "tinyproj"
    pkg.mkdir(parents=True)
    (pkg / "detector.py").write_text(textwrap.dedent(_DETECTOR))
    (pkg / "hooks.py").write_text(textwrap.dedent(_HOOK))
    (pkg / "__init__.py").write_text(
        "from .detector import PointDetector, PointHead\nfrom .hooks import CountingHook\n"
    )
    (root / "configs").mkdir()
    (root / "configs" / "tinyproj_shapes.py").write_text(textwrap.dedent(_CONFIG))
    return root / "configs" / "tinyproj_shapes.py"


def _run(args, env, cwd):
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_throwaway_project_trains_evaluates_resumes_and_reloads(tmp_path):
    project = tmp_path / "project"
    config = _write_project(project)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(project), OMP_WAIT_POLICY="PASSIVE")
    env.setdefault("D2LITE_DATASETS", str(REPO_ROOT / "datasets"))
    tool = str(REPO_ROOT / "tools" / "lazyconfig_train_net.py")
    common = [
        "--config-file",
        str(config),
        f"train.output_dir={out}",
        "train.checkpointer.period=3",
        "train.log_period=1",
        "train.eval_period=100",
        "train.device=cpu",
        "dataloader.train.total_batch_size=2",
        "dataloader.train.num_workers=0",
        "dataloader.test.num_workers=0",
        "dataloader.test.dataset.names=shapes_val_50",  # a quick evaluation
        "model.score_thresh=0.0",
    ]
    proc = _run([tool, *common], env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-5000:]
    records = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    count = {r["iteration"]: r["project/count"] for r in records if "project/count" in r}
    assert count == {1: 2.0, 3: 4.0, 5: 6.0}  # every 2nd iteration, written in that iteration
    assert any("loss_box" in r for r in records)
    evals = [r for r in records if "bbox/AP" in r]
    assert len(evals) == 1 and evals[0]["iteration"] == 6 and 0.0 <= evals[0]["bbox/AP"] <= 100.0
    import torch

    ckpt = torch.load(out / "model_0000002.pth", map_location="cpu", weights_only=False)
    assert ckpt["trainer"]["hooks"]["CountingHook"] == {"count": 3}

    # Resume from model_0000005 (max_iter 6 -> 8): the hook's count continues from its saved state.
    proc = _run([tool, "--resume", *common, "train.max_iter=8"], env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-5000:]
    records = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    resumed = [r["project/count"] for r in records if r.get("iteration") == 7 and "project/count" in r]
    assert resumed == [8.0]

    # The saved config.yaml names the project's classes by import path and builds in a new process.
    check = (
        "from d2lite.config import LazyConfig, instantiate\n"
        "from d2lite.engine.lazy_train import build_config_hooks\n"
        f"cfg = LazyConfig.load({str(out / 'config.yaml')!r})\n"
        "model = instantiate(cfg.model)\n"
        "(hook,) = build_config_hooks(cfg)\n"
        "assert hook.priority == 'ABOVE_NORMAL' and hook.period == 2\n"
        "print(type(model).__module__, type(model).__name__, type(hook).__name__)\n"
    )
    proc = _run(["-c", check], env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["tinyproj.detector", "PointDetector", "CountingHook"]
