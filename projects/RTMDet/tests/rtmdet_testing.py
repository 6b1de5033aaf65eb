"""Shared helpers of the RTMDet tests (a tiny model builder, a synthetic batch, a run of the
training tool)."""

import os
import subprocess
import sys

import torch

from d2lite.layers import ShapeSpec
from d2lite.structures import Boxes, Instances
from rtmdet import CSPNeXt, CSPNeXtPAFPN, RTMDet, RTMDetSepBNHead

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
BGR_MEAN = [103.53, 116.28, 123.675]
BGR_STD = [57.375, 57.12, 58.395]


def tiny_rtmdet(num_classes=80, widen=0.375, deepen=0.167, out_channels=96, exp_on_reg=False, **kwargs):
    backbone = CSPNeXtPAFPN(
        CSPNeXt(deepen_factor=deepen, widen_factor=widen, norm="SyncBN"),
        ["stage2", "stage3", "stage4"],
        out_channels,
        num_csp_blocks=1,
        norm="SyncBN",
    )
    head = RTMDetSepBNHead(
        [ShapeSpec(channels=out_channels, stride=s) for s in (8, 16, 32)],
        num_classes,
        feat_channels=out_channels,
        exp_on_reg=exp_on_reg,
        norm="SyncBN",
    )
    return RTMDet(
        backbone=backbone,
        head=head,
        head_in_features=["p3", "p4", "p5"],
        num_classes=num_classes,
        pixel_mean=BGR_MEAN,
        pixel_std=BGR_STD,
        **kwargs,
    )


def synthetic_batch(n=2, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    batch = []
    for _ in range(n):
        img = torch.full((3, size, size), 40, dtype=torch.uint8)
        boxes, classes = [], []
        for k in range(2):
            x0, y0 = torch.randint(0, size // 2, (2,), generator=g).tolist()
            w, h = torch.randint(14, size // 2, (2,), generator=g).tolist()
            c = k % 2
            img[c * 2, y0 : y0 + h, x0 : x0 + w] = 230
            boxes.append([x0, y0, x0 + w, y0 + h])
            classes.append(c)
        inst = Instances(
            (size, size), gt_boxes=Boxes(torch.tensor(boxes, dtype=torch.float32)), gt_classes=torch.tensor(classes)
        )
        batch.append({"image": img, "instances": inst, "height": size, "width": size})
    return batch


class ScriptedRng:
    """A stand-in for ``np.random.Generator`` that returns scripted values, to test the
    arithmetic of an augmentation for chosen draws. ``calls`` records (method, args)."""

    def __init__(self, random=(), integers=(), uniform=()):
        self._values = {"random": list(random), "integers": list(integers), "uniform": list(uniform)}
        self.calls = []

    def _next(self, name, args):
        self.calls.append((name, args))
        if not self._values[name]:
            raise AssertionError(f"unexpected draw rng.{name}{args}")
        return self._values[name].pop(0)

    def random(self, *args):
        return self._next("random", args)

    def integers(self, *args):
        return self._next("integers", args)

    def uniform(self, *args):
        return self._next("uniform", args)


def write_coco_fixture(root, split="train2017", num_images=6, seed=0):
    """A small COCO-format dataset under ``root``: ``annotations/instances_<split>.json`` and
    ``<split>/*.jpg``; 160-320 px images with three solid rectangles each, of category ids
    1, 5 and 90 among COCO's 80 (so it can stand in for coco_2017_{train,val})."""
    import json
    import os

    import numpy as np
    from PIL import Image

    from d2lite.data.datasets.builtin_meta import COCO_CATEGORIES

    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, split), exist_ok=True)
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    categories = [{"id": c["id"], "name": c["name"]} for c in COCO_CATEGORIES if c.get("isthing", 1)]
    used = [1, 5, 90]
    images, annotations = [], []
    for i in range(num_images):
        h, w = int(rng.integers(160, 320)), int(rng.integers(160, 320))
        pixels = rng.integers(0, 60, size=(h, w, 3), dtype=np.uint8)
        for j in range(3):
            bw, bh = int(rng.integers(30, 80)), int(rng.integers(30, 80))
            x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            pixels[y0 : y0 + bh, x0 : x0 + bw] = (200, 60 * j, 250 - 60 * j)
            cat = used[(i + j) % 3]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": cat,
                    "bbox": [x0, y0, bw, bh],
                    "area": bw * bh,
                    "iscrowd": 0,
                }
            )
        name = f"{i:06d}.jpg"
        Image.fromarray(pixels).save(os.path.join(root, split, name), quality=95)
        images.append({"id": i + 1, "file_name": name, "height": h, "width": w})
    with open(os.path.join(root, "annotations", f"instances_{split}.json"), "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)


def run_train_tool(config, *args, resume=False, env=None, timeout=900):
    """Run tools/lazyconfig_train_net.py on ``config`` (``--resume`` first, then ``args``) from
    the repository root; assert it succeeds and return its stdout + stderr."""
    cmd = [sys.executable, os.path.join(REPO, "tools", "lazyconfig_train_net.py"), "--config-file", config]
    cmd += (["--resume"] if resume else []) + list(args)
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", **(env or {})}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout + proc.stderr
