"""RTMDet benchmarks: DynamicSoftLabelAssigner time/memory vs number of gts, and an
RTMDet-tiny 640x640 training step and inference.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/rtmdet.py [--quick]

The assigner is compared with a dense mmdetection-style implementation written
below (priors x gts x classes classification cost, Python loop over gts in dynamic-k
matching), measured in the same run. Peak memory: analytic size of the largest
simultaneously-live intermediates, plus the measured peak RSS increase of a fresh
subprocess running one assignment. Results: benchmarks/rtmdet.md.
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "projects", "RTMDet"))
sys.path.insert(0, os.path.join(ROOT, "projects", "RTMDet", "tests"))

from rtmdet import DynamicSoftLabelAssigner, MlvlPointGenerator, bbox_overlaps  # noqa: E402

NUM_CLASSES = 80


def dense_mmdet_assign(scores, boxes, priors, gt_bboxes, gt_labels, radius=3.0, topk=13, iou_weight=3.0):
    """mmdetection 3.x DynamicSoftLabelAssigner.assign (dense cost, loop over gts); returns gt_inds."""
    num_gt, n = gt_bboxes.shape[0], boxes.shape[0]
    gt_inds = torch.zeros(n, dtype=torch.long)
    lt = priors[:, None, :2] - gt_bboxes[:, :2]
    rb = gt_bboxes[:, 2:] - priors[:, None, :2]
    valid = torch.cat([lt, rb], -1).min(-1).values.gt(0).sum(1) > 0
    vb, vs, vp = boxes[valid], scores[valid], priors[valid]
    num_valid = vb.shape[0]
    center = (gt_bboxes[:, :2] + gt_bboxes[:, 2:]) / 2
    dist = (vp[:, None, :2] - center[None]).pow(2).sum(-1).sqrt() / vp[:, 2:3]
    prior_cost = torch.pow(10, dist - radius)
    ious = bbox_overlaps(vb, gt_bboxes)
    iou_cost = -torch.log(ious + 1e-7) * iou_weight
    onehot = F.one_hot(gt_labels, vs.shape[-1]).float()[None].repeat(num_valid, 1, 1)
    vs3 = vs[:, None].repeat(1, num_gt, 1)
    soft = onehot * ious[..., None]
    scale = soft - vs3.sigmoid()
    cls_cost = (F.binary_cross_entropy_with_logits(vs3, soft, reduction="none") * scale.abs().pow(2)).sum(-1)
    cost = cls_cost + iou_cost + prior_cost
    matching = torch.zeros_like(cost, dtype=torch.uint8)
    k = min(topk, num_valid)
    dyn = torch.clamp(torch.topk(ious, k, dim=0)[0].sum(0).int(), min=1)
    for g in range(num_gt):
        _, pos = torch.topk(cost[:, g], k=int(dyn[g]), largest=False)
        matching[:, g][pos] = 1
    multi = matching.sum(1) > 1
    if multi.sum() > 0:
        argmin = cost[multi].argmin(1)
        matching[multi] *= 0
        matching[multi, argmin] = 1
    fg = matching.sum(1) > 0
    vidx = valid.nonzero()[:, 0]
    gt_inds[vidx[fg]] = matching[fg].argmax(1) + 1
    return gt_inds


def make_case(num_gt, seed=0):
    """8400 priors of a 640x640 image, 80 classes, num_gt COCO-like boxes (8-200 px)."""
    g = torch.Generator().manual_seed(seed)
    gen = MlvlPointGenerator([8, 16, 32], offset=0.0)
    priors = torch.cat(gen.grid_priors([(80, 80), (40, 40), (20, 20)], with_stride=True))
    wh = torch.exp(torch.empty(num_gt, 2).uniform_(math.log(8), math.log(200), generator=g))
    xy = torch.rand(num_gt, 2, generator=g) * (640 - wh)
    gts = torch.cat([xy, xy + wh], 1)
    labels = torch.randint(0, NUM_CLASSES, (num_gt,), generator=g)
    dist = torch.rand(len(priors), 4, generator=g) * priors[:, 2:3] * 4
    boxes = torch.cat([priors[:, :2] - dist[:, :2], priors[:, :2] + dist[:, 2:]], 1)
    scores = torch.randn(len(priors), NUM_CLASSES, generator=g) - 4
    return scores, boxes, priors, gts, labels


def median_time(fn, reps, warmup=1):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def num_valid(priors, gts):
    px, py = priors[:, 0:1], priors[:, 1:2]
    inside = (px > gts[:, 0]) & (py > gts[:, 1]) & (gts[:, 2] > px) & (gts[:, 3] > py)
    return int(inside.any(1).sum())


def _peak_rss_kib():
    """VmHWM of this process (per address space, so not inherited from the parent like ru_maxrss)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def _rss_child(impl, num_gt):
    """Peak RSS increase (MiB) of one assignment in this (fresh) process."""
    case = make_case(num_gt)
    before = _peak_rss_kib()
    if impl == "ours":
        DynamicSoftLabelAssigner().assign(*case)
    else:
        dense_mmdet_assign(*case)
    after = _peak_rss_kib()
    print(json.dumps({"rss_mib": (after - before) / 1024}))


def assigner_bench(gt_counts, reps):
    rows = []
    assigner = DynamicSoftLabelAssigner()
    for num_gt in gt_counts:
        case = make_case(num_gt)
        ours = assigner.assign(*case).gt_inds
        ref = dense_mmdet_assign(*case)
        same = bool(torch.equal(ours, ref))
        t_ours = median_time(lambda case=case: assigner.assign(*case), reps)
        t_dense = median_time(lambda case=case: dense_mmdet_assign(*case), max(3, reps // 3))
        v = num_valid(case[2], case[3])
        # analytic peak of live intermediates, float32
        dense_bytes = 5 * v * num_gt * NUM_CLASSES * 4  # onehot, scores repeat, soft label, scale, BCE
        ours_bytes = (3 * v * NUM_CLASSES + 10 * v * num_gt) * 4
        rss = {}
        for impl in ("ours", "dense"):
            out = (
                subprocess.run(
                    [sys.executable, __file__, "--rss-child", impl, str(num_gt)],
                    capture_output=True,
                    text=True,
                    check=True,
                    env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"},
                )
                .stdout.strip()
                .splitlines()[-1]
            )
            rss[impl] = json.loads(out)["rss_mib"]
        rows.append(
            dict(
                gts=num_gt,
                valid=v,
                ours_ms=t_ours * 1e3,
                dense_ms=t_dense * 1e3,
                speedup=t_dense / t_ours,
                same=same,
                ours_mib=ours_bytes / 2**20,
                dense_mib=dense_bytes / 2**20,
                ours_rss=rss["ours"],
                dense_rss=rss["dense"],
            )
        )
        print(rows[-1], flush=True)
    return rows


def model_bench(reps, batch):
    from rtmdet_testing import tiny_rtmdet

    from d2lite.solver import get_default_optimizer_params
    from d2lite.structures import Boxes, Instances

    torch.manual_seed(0)
    model = tiny_rtmdet(num_classes=80)
    opt = torch.optim.AdamW(
        get_default_optimizer_params(model, weight_decay_norm=0.0, weight_decay_bias=0.0), lr=0.004, weight_decay=0.05
    )
    g = torch.Generator().manual_seed(0)
    inputs = []
    for i in range(batch):
        _, _, _, gts, labels = make_case(20, seed=i)
        img = torch.randint(0, 256, (3, 640, 640), dtype=torch.uint8, generator=g)
        inputs.append({"image": img, "instances": Instances((640, 640), gt_boxes=Boxes(gts), gt_classes=labels)})

    def step():
        loss = sum(model(inputs).values())
        opt.zero_grad()
        loss.backward()
        opt.step()

    model.train()
    t_train = median_time(step, reps, warmup=2)
    model.eval()
    one = [{"image": inputs[0]["image"]}]
    with torch.no_grad():
        t_inf = median_time(lambda: model(one), reps, warmup=2)
    return {"train_step_s": t_train, "batch": batch, "inference_s": t_inf}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--rss-child", nargs=2, metavar=("IMPL", "NUM_GT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        _rss_child(args.rss_child[0], int(args.rss_child[1]))
        return
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}"
    )
    reps = 5 if args.quick else 15
    rows = assigner_bench([10, 50, 200], reps)
    print(
        "| gts | valid priors | ours (ms) | dense mmdet-style (ms) | speed-up | same assignment | "
        "est. peak ours / dense (MiB) | measured RSS increase ours / dense (MiB) |"
    )
    print("|---:|---:|---:|---:|---:|:---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['gts']} | {r['valid']} | {r['ours_ms']:.1f} | {r['dense_ms']:.1f} | {r['speedup']:.1f}x | "
            f"{'yes' if r['same'] else 'NO'} | {r['ours_mib']:.1f} / {r['dense_mib']:.0f} | "
            f"{r['ours_rss']:.0f} / {r['dense_rss']:.0f} |"
        )
    m = model_bench(3 if args.quick else 5, batch=2)
    print(
        f"RTMDet-tiny 640x640: train step (batch {m['batch']}, fwd+bwd+AdamW) median {m['train_step_s']:.2f} s; "
        f"inference (batch 1) median {m['inference_s']:.3f} s"
    )


if __name__ == "__main__":
    main()
