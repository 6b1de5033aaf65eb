"""Time a RetinaNet R50-FPN training step and inference on CPU, with a per-phase split.

Model: built like detectron2's configs/common/models/retinanet.py (80 classes, FrozenBN,
freeze_at=2), random weights. Training: batch of 2 images at 512x512 with 3 gt boxes each,
SGD(lr=0.01, momentum=0.9, weight_decay=1e-4). Inference: 1 image at 512x512 and at
800x1216. Random weights give meaningless outputs (FrozenBN with identity statistics lets
activations grow by ~1000x, losses overflow, almost no score passes 0.05 and decoded boxes
are degenerate), so the FrozenBN statistics are first set from one pass over the benchmark
input (as a pretrained backbone would have them), and for inference the cls_score /
bbox_pred convs are rescaled to give logits ~ N(0, 1) and deltas ~ N(0, 0.1^2): every level
then yields test_topk_candidates=1000 candidates for NMS, the worst case of a trained model.

Usage:
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/retinanet_step.py [--runs 3]

Reports medians over --runs timed runs after one warm-up run.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from typing import Callable, Dict, List  # noqa: E402

import torch  # noqa: E402

from d2lite.layers import FrozenBatchNorm2d, ShapeSpec  # noqa: E402
from d2lite.modeling import (  # noqa: E402
    FPN,
    BasicStem,
    Box2BoxTransform,
    DefaultAnchorGenerator,
    Matcher,
    ResNet,
    RetinaNet,
    detector_postprocess,
)
from d2lite.modeling.backbone.fpn import LastLevelP6P7  # noqa: E402
from d2lite.modeling.meta_arch.retinanet import RetinaNetHead  # noqa: E402
from d2lite.structures import Boxes, Instances  # noqa: E402
from d2lite.utils.events import EventStorage  # noqa: E402


def build_model() -> RetinaNet:
    bottom_up = ResNet(
        stem=BasicStem(in_channels=3, out_channels=64, norm="FrozenBN"),
        stages=ResNet.make_default_stages(depth=50, stride_in_1x1=True, norm="FrozenBN"),
        out_features=["res3", "res4", "res5"],
        freeze_at=2,
    )
    backbone = FPN(
        bottom_up=bottom_up,
        in_features=["res3", "res4", "res5"],
        out_channels=256,
        top_block=LastLevelP6P7(in_channels=2048, out_channels=256),
    )
    head = RetinaNetHead(
        input_shape=[ShapeSpec(channels=256)] * 5, num_classes=80, conv_dims=[256] * 4, prior_prob=0.01, num_anchors=9
    )
    return RetinaNet(
        backbone=backbone,
        head=head,
        head_in_features=["p3", "p4", "p5", "p6", "p7"],
        anchor_generator=DefaultAnchorGenerator(
            sizes=[[x, x * 2 ** (1.0 / 3), x * 2 ** (2.0 / 3)] for x in [32, 64, 128, 256, 512]],
            aspect_ratios=[0.5, 1.0, 2.0],
            strides=[8, 16, 32, 64, 128],
            offset=0.0,
        ),
        box2box_transform=Box2BoxTransform(weights=[1.0, 1.0, 1.0, 1.0]),
        anchor_matcher=Matcher([0.4, 0.5], [0, -1, 1], allow_low_quality_matches=True),
        num_classes=80,
        pixel_mean=[103.530, 116.280, 123.675],
        pixel_std=[1.0, 1.0, 1.0],
    )


def make_inputs(n: int, h: int, w: int, with_gt: bool) -> List[Dict]:
    g = torch.Generator().manual_seed(0)
    inputs = []
    for _ in range(n):
        d = {"image": torch.randint(0, 256, (3, h, w), generator=g).float(), "height": h, "width": w}
        if with_gt:
            xy = torch.rand(3, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
            wh = 32 + torch.rand(3, 2, generator=g) * torch.tensor([w * 0.3, h * 0.3])
            d["instances"] = Instances(
                (h, w),
                gt_boxes=Boxes(torch.cat([xy, xy + wh], dim=1)),
                gt_classes=torch.randint(0, 80, (3,), generator=g),
            )
        inputs.append(d)
    return inputs


class PhaseTimer:
    def __init__(self):
        self.times: Dict[str, List[float]] = {}
        self._t = None

    def start(self):
        self._t = time.perf_counter()

    def lap(self, name: str):
        now = time.perf_counter()
        self.times.setdefault(name, []).append(now - self._t)
        self._t = now


def split_train_step(model: RetinaNet, opt, batch, timer: PhaseTimer) -> None:
    """One training step, executed phase by phase exactly as RetinaNet.forward does."""
    timer.start()
    images = model.preprocess_image(batch)
    feats = model.backbone(images.tensor)
    feats = [feats[f] for f in model.head_in_features]
    timer.lap("backbone+FPN (incl. preprocess)")
    predictions = model.head(feats)
    timer.lap("head")
    pred_logits, pred_deltas = model._transpose_dense_predictions(predictions, [model.num_classes, 4])
    anchors = model.anchor_generator(feats)
    timer.lap("anchors (+transpose)")
    gt_labels, gt_boxes = model.label_anchors(anchors, [x["instances"] for x in batch])
    timer.lap("matching (label_anchors)")
    losses = model.losses(anchors, pred_logits, gt_labels, pred_deltas, gt_boxes)
    loss = sum(losses.values())
    timer.lap("losses")
    opt.zero_grad()
    loss.backward()
    timer.lap("backward")
    opt.step()
    timer.lap("optimizer step")


def split_inference(model: RetinaNet, inputs, timer: PhaseTimer) -> int:
    timer.start()
    images = model.preprocess_image(inputs)
    feats = model.backbone(images.tensor)
    feats = [feats[f] for f in model.head_in_features]
    timer.lap("backbone+FPN (incl. preprocess)")
    predictions = model.head(feats)
    timer.lap("head")
    results = model.forward_inference(images, feats, predictions)
    out = [detector_postprocess(r, x["height"], x["width"]) for r, x in zip(results, inputs)]
    timer.lap("decode+NMS+postprocess")
    return len(out[0])


@torch.no_grad()
def calibrate_frozen_bn(model: RetinaNet, inputs: List[Dict]) -> None:
    """Set every FrozenBatchNorm2d's running mean/var to the statistics of its input on
    ``inputs`` (in forward order, so later layers see normalized activations)."""

    def set_stats(module, args):
        x = args[0]
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.copy_(x.var(dim=(0, 2, 3)))

    handles = [m.register_forward_pre_hook(set_stats) for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    try:
        model.backbone(model.preprocess_image(inputs).tensor)
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def calibrate_outputs(model: RetinaNet, inputs: List[Dict]) -> None:
    """Rescale the output convs so logits ~ N(0, 1) and deltas ~ N(0, 0.01) on ``inputs``."""
    images = model.preprocess_image(inputs)
    feats = model.backbone(images.tensor)
    logits, deltas = model.head([feats[f] for f in model.head_in_features])
    for conv, outs, target_std in [(model.head.cls_score, logits, 1.0), (model.head.bbox_pred, deltas, 0.1)]:
        conv.bias.zero_()
        std = torch.cat([x.flatten() for x in outs]).std().item()
        conv.weight.mul_(target_std / std)


def median_time(fn: Callable[[], None], runs: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="timed runs per measurement (median reported)")
    parser.add_argument("--train-size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, threads={torch.get_num_threads()}")
    model = build_model()
    s = args.train_size
    batch = make_inputs(2, s, s, with_gt=True)
    calibrate_frozen_bn(model, batch)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)

    rows = []
    with EventStorage(0):
        model.train()

        def full_step():
            losses = model(batch)
            if not all(torch.isfinite(v) for v in losses.values()):
                raise FloatingPointError(f"benchmark diverged: {losses}")
            opt.zero_grad()
            sum(losses.values()).backward()
            opt.step()

        t_full = median_time(full_step, args.runs)
        rows.append((f"train step, batch 2 @ {s}x{s} (model(batch)+backward+SGD)", t_full))

        timer = PhaseTimer()
        split_train_step(model, opt, batch, timer)  # warm-up
        timer.times.clear()
        for _ in range(args.runs):
            split_train_step(model, opt, batch, timer)
        split = {k: statistics.median(v) for k, v in timer.times.items()}

    model = build_model().eval()  # fresh weights, independent of the training steps
    with torch.no_grad():
        inf_rows = []
        for h, w in [(512, 512), (800, 1216)]:
            inputs = make_inputs(1, h, w, with_gt=False)
            calibrate_frozen_bn(model, inputs)
            calibrate_outputs(model, inputs)
            t = median_time(lambda inputs=inputs: model(inputs), args.runs)
            timer = PhaseTimer()
            split_inference(model, inputs, timer)
            timer.times.clear()
            for _ in range(args.runs):
                ndet = split_inference(model, inputs, timer)
            inf_rows.append(((h, w), t, {k: statistics.median(v) for k, v in timer.times.items()}, ndet))

    print(f"\nmedian of {args.runs} runs (after 1 warm-up), seconds")
    for name, t in rows:
        print(f"| {name} | {t:.3f} |")
    total = sum(split.values())
    print("\ntraining step split (phase-by-phase run):")
    for k, v in split.items():
        print(f"| {k} | {v:.3f} | {100 * v / total:.1f}% |")
    print(f"| sum of phases | {total:.3f} | 100% |")
    for (h, w), t, sp, ndet in inf_rows:
        print(f"\ninference 1 image @ {h}x{w}: {t:.3f} s  ({ndet} detections)")
        tot = sum(sp.values())
        for k, v in sp.items():
            print(f"| {k} | {v:.3f} | {100 * v / tot:.1f}% |")


if __name__ == "__main__":
    main()
