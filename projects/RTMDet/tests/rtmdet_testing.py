"""Shared helpers of the RTMDet tests (a tiny model builder and a synthetic batch)."""

import torch

from d2lite.layers import ShapeSpec
from d2lite.structures import Boxes, Instances
from rtmdet import CSPNeXt, CSPNeXtPAFPN, RTMDet, RTMDetSepBNHead

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
