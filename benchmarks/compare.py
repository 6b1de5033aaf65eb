"""d2lite side by side with detectron2 and mmdetection on this CPU: same models, weights and inputs.

Four measurements (fp32, ``--threads`` intra-op threads, default 2):

* ``retinanet_train``: RetinaNet R50-FPN (detectron2's ``configs/common/models/retinanet.py``,
  ``freeze_at=2``, 80 classes), one training step on 2 images of 512x512 with 3 boxes each:
  ``model(batch)`` (normalisation, padding, backbone, head, anchors, matching, focal + box
  losses) + backward + SGD step (lr 0.01, momentum 0.9, weight decay 1e-4).
* ``retinanet_infer``: the same model on one 800x1216 image; its output convs rescaled so
  every level sends ``test_topk_candidates=1000`` candidates to NMS (a trained model's worst case).
* ``rtmdet_train``: RTMDet-tiny (mmdetection's ``rtmdet_tiny_8xb32-300e_coco.py``), one training
  step on 2 images of 640x640 with 20 boxes each (preprocessing, assignment, QFL + GIoU,
  backward, AdamW lr 0.004 weight decay 0.05).
* ``rtmdet_infer``: RTMDet-tiny on one 640x640 image (score > 0.001, 30000 per level, NMS 0.65).

The driver (this process, d2lite from this checkout) writes the inputs and the weights into a
temporary folder: RetinaNet's FrozenBN statistics are set from the input (as a pretrained
backbone would have them) so losses stay finite; RTMDet's random initialisation is saved in
mmdetection's key names as well. Every measurement runs in a fresh process per implementation,
the implementations alternating (``--rounds`` rounds, order rotated each round); each process
times ``--runs`` repetitions after ``--warmup``. A row reports the median of all timed
repetitions and, as a check that the implementations computed the same thing, the first
step's losses (training) or the number of detections and the sum of the 10 best scores.

Usage::

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/compare.py                # d2lite only
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/compare.py --impls d2lite detectron2 mmdet \\
        --ref-python /path/to/venv/bin/python
    # d2lite before/after: another checkout of the repository as a further implementation
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/compare.py --baseline /tmp/d2lite-old

detectron2 and mmdetection are optional and never installed by d2lite: ``--ref-python`` is an
interpreter that can import them and torch (e.g. a venv with detectron2 built from source,
``pip install --no-build-isolation -e .``, and ``mmdet==3.3.0 mmengine==0.10.7 mmcv-lite==2.1.0``).
mmcv-lite has no compiled ops; the mmdet worker installs a stand-in ``mmcv.ops`` whose
``nms``/``batched_nms`` call torchvision (the only compiled ops RTMDet uses) and whose other
names raise if called. Results: benchmarks/compare.md.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Callable, Dict, List, Tuple  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# This folder holds rtmdet.py, which would shadow the RTMDet project's `rtmdet` package.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != os.path.join(ROOT, "benchmarks")]
TASKS = ["retinanet_train", "retinanet_infer", "rtmdet_train", "rtmdet_infer"]
RETINANET_TRAIN_SIZE = (512, 512)
RETINANET_INFER_SIZE = (800, 1216)
RTMDET_SIZE = (640, 640)


# ----------------------------------------------------------------------------- inputs


def make_images(n: int, size: Tuple[int, int], num_boxes: int, num_classes: int, seed: int) -> List[Dict]:
    """n random uint8 BGR images (3, H, W) with ``num_boxes`` random boxes (XYXY pixels) each."""
    import torch

    g = torch.Generator().manual_seed(seed)
    h, w = size
    out = []
    for _ in range(n):
        img = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
        wh = torch.exp(torch.empty(num_boxes, 2).uniform_(3.0, 5.3, generator=g))  # 20-200 px
        xy = torch.rand(num_boxes, 2, generator=g) * (torch.tensor([w, h]) - wh)
        boxes = torch.cat([xy, xy + wh], dim=1)
        classes = torch.randint(0, num_classes, (num_boxes,), generator=g)
        out.append({"image": img, "boxes": boxes, "classes": classes})
    return out


def prepare(workdir: str) -> None:
    """Write inputs and weights of every task into ``workdir`` (d2lite of this checkout)."""
    import torch

    sys.path[:0] = [ROOT, os.path.join(ROOT, "projects", "RTMDet")]
    from d2lite.config import instantiate
    from d2lite.layers import FrozenBatchNorm2d
    from d2lite.model_zoo import get_config

    torch.manual_seed(0)
    train_in = make_images(2, RETINANET_TRAIN_SIZE, 3, 80, seed=0)
    infer_in = make_images(1, RETINANET_INFER_SIZE, 0, 80, seed=1)
    rtm_train_in = make_images(2, RTMDET_SIZE, 20, 80, seed=2)
    rtm_infer_in = make_images(1, RTMDET_SIZE, 0, 80, seed=3)
    torch.save(
        {
            "retinanet_train": train_in,
            "retinanet_infer": infer_in,
            "rtmdet_train": rtm_train_in,
            "rtmdet_infer": rtm_infer_in,
        },
        os.path.join(workdir, "inputs.pt"),
    )

    cfg = get_config("common/models/retinanet.py")
    cfg.model.backbone.bottom_up.freeze_at = 2
    model = instantiate(cfg.model).eval()

    @torch.no_grad()
    def calibrate(images: List[Dict]) -> None:
        def set_stats(module, args):
            x = args[0]
            module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
            module.running_var.copy_(x.var(dim=(0, 2, 3)))

        frozen = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
        handles = [m.register_forward_pre_hook(set_stats) for m in frozen]
        try:
            model.backbone(model.preprocess_image([{"image": x["image"]} for x in images]).tensor)
        finally:
            for h in handles:
                h.remove()

    calibrate(train_in)
    torch.save(model.state_dict(), os.path.join(workdir, "retinanet_train.pth"))
    calibrate(infer_in)
    with torch.no_grad():
        images = model.preprocess_image([{"image": x["image"]} for x in infer_in])
        feats = model.backbone(images.tensor)
        logits, deltas = model.head([feats[f] for f in model.head_in_features])
        for conv, outs, std in [(model.head.cls_score, logits, 1.0), (model.head.bbox_pred, deltas, 0.1)]:
            conv.bias.zero_()
            conv.weight.mul_(std / torch.cat([x.flatten() for x in outs]).std().item())
    torch.save(model.state_dict(), os.path.join(workdir, "retinanet_infer.pth"))

    from d2lite.config import LazyConfig

    rcfg = LazyConfig.load(os.path.join(ROOT, "projects/RTMDet/configs/rtmdet_tiny_8xb32-300e_coco.py"))
    rtm = instantiate(rcfg.model)
    sd = rtm.state_dict()
    torch.save(sd, os.path.join(workdir, "rtmdet_d2lite.pth"))
    torch.save(_rtmdet_to_mmdet_keys(sd), os.path.join(workdir, "rtmdet_mmdet.pth"))


def _rtmdet_to_mmdet_keys(sd: Dict) -> Dict:
    """d2lite RTMDet keys -> mmdetection's (inverse of rtmdet.converter's prefix rename)."""
    out = {}
    for k, v in sd.items():
        if k.startswith("backbone.bottom_up."):
            k = "backbone." + k[len("backbone.bottom_up.") :]
        elif k.startswith("backbone."):
            k = "neck." + k[len("backbone.") :]
        elif k.startswith("head."):
            k = "bbox_head." + k[len("head.") :]
        out[k] = v
    return out


# ----------------------------------------------------------------------------- workers


def _timed(fn: Callable[[], object], warmup: int, runs: int) -> Tuple[List[Tuple[float, float]], object]:
    """(wall seconds, process CPU seconds) of each timed call, and the first call's output."""
    first = None
    for i in range(warmup):
        out = fn()
        first = out if i == 0 else first
    times = []
    for _ in range(runs):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        times.append((time.perf_counter() - t0, time.process_time() - c0))
        first = out if first is None else first
    return times, first


def _infer_check(boxes_scores) -> Dict:
    scores = boxes_scores.sort(descending=True).values
    return {"detections": int(scores.numel()), "top10_score_sum": round(float(scores[:10].sum()), 4)}


def worker_d2lite(task: str, workdir: str, warmup: int, runs: int) -> Tuple[List, Dict]:
    import torch

    from d2lite.config import LazyConfig, instantiate
    from d2lite.model_zoo import get_config
    from d2lite.structures import Boxes, Instances
    from d2lite.utils.events import EventStorage

    inputs = torch.load(os.path.join(workdir, "inputs.pt"))[task]
    if task.startswith("retinanet"):
        cfg = get_config("common/models/retinanet.py")
        cfg.model.backbone.bottom_up.freeze_at = 2
        weights = "retinanet_train.pth" if task.endswith("train") else "retinanet_infer.pth"
    else:
        import d2lite

        src = os.path.dirname(os.path.dirname(os.path.abspath(d2lite.__file__)))  # the checkout measured
        cfg = LazyConfig.load(os.path.join(src, "projects/RTMDet/configs/rtmdet_tiny_8xb32-300e_coco.py"))
        weights = "rtmdet_d2lite.pth"
    model = instantiate(cfg.model)
    model.load_state_dict(torch.load(os.path.join(workdir, weights)), strict=True)
    batch = []
    for x in inputs:
        h, w = x["image"].shape[-2:]
        d = {"image": x["image"], "height": h, "width": w}
        if task.endswith("train"):
            d["instances"] = Instances((h, w), gt_boxes=Boxes(x["boxes"]), gt_classes=x["classes"])
        batch.append(d)

    if task.endswith("infer"):
        model.eval()

        def infer():
            with torch.no_grad():
                return model(batch)[0]["instances"].scores

        times, scores = _timed(infer, warmup, runs)
        return times, _infer_check(scores)

    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    if task == "retinanet_train":
        opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)
    else:
        opt = torch.optim.AdamW(params, lr=0.004, weight_decay=0.05)

    def step():
        losses = model(batch)
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        return {k: round(float(v), 5) for k, v in losses.items()}

    with EventStorage(0):
        times, losses = _timed(step, warmup, runs)
    return times, losses


def worker_detectron2(task: str, workdir: str, warmup: int, runs: int) -> Tuple[List, Dict]:
    import torch
    from detectron2.config import instantiate
    from detectron2.model_zoo import get_config
    from detectron2.structures import Boxes, Instances
    from detectron2.utils.events import EventStorage

    if not task.startswith("retinanet"):
        raise ValueError(f"detectron2 has no {task}")
    inputs = torch.load(os.path.join(workdir, "inputs.pt"))[task]
    cfg = get_config("common/models/retinanet.py")
    cfg.model.backbone.bottom_up.freeze_at = 2
    model = instantiate(cfg.model)
    weights = "retinanet_train.pth" if task.endswith("train") else "retinanet_infer.pth"
    model.load_state_dict(torch.load(os.path.join(workdir, weights)), strict=True)
    batch = []
    for x in inputs:
        h, w = x["image"].shape[-2:]
        d = {"image": x["image"], "height": h, "width": w}
        if task.endswith("train"):
            d["instances"] = Instances((h, w), gt_boxes=Boxes(x["boxes"]), gt_classes=x["classes"])
        batch.append(d)
    if task.endswith("infer"):
        model.eval()

        def infer():
            with torch.no_grad():
                return model(batch)[0]["instances"].scores

        times, scores = _timed(infer, warmup, runs)
        return times, _infer_check(scores)
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9, weight_decay=1e-4)

    def step():
        losses = model(batch)
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        return {k: round(float(v), 5) for k, v in losses.items()}

    with EventStorage(0):
        times, losses = _timed(step, warmup, runs)
    return times, losses


def _install_mmcv_ops_standin() -> None:
    """Make ``import mmcv.ops`` work with mmcv-lite: nms / batched_nms through torchvision
    (mmcv's semantics: returns (dets (n, 5), keep)); any other name is a class that raises."""
    import importlib.abc
    import importlib.machinery
    import types

    import torch
    import torchvision

    class _Unavailable:
        def __init__(self, *args, **kwargs):
            raise RuntimeError(f"{type(self).__name__}: compiled mmcv op, not available with mmcv-lite")

    def nms(boxes, scores, iou_threshold, offset=0, score_threshold=0, max_num=-1):
        keep = torchvision.ops.nms(boxes, scores, float(iou_threshold))
        keep = keep[:max_num] if max_num > 0 else keep
        return torch.cat([boxes[keep], scores[keep, None]], -1), keep

    def batched_nms(boxes, scores, idxs, nms_cfg, class_agnostic=False):
        cfg = dict(nms_cfg)
        thr = float(cfg["iou_threshold"])
        if class_agnostic:
            keep = torchvision.ops.nms(boxes, scores, thr)
        else:
            keep = torchvision.ops.batched_nms(boxes, scores, idxs, thr)
        max_num = cfg.get("max_num", -1)
        keep = keep[:max_num] if max_num > 0 else keep
        return torch.cat([boxes[keep], scores[keep, None]], -1), keep

    class _Ops(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return type(name, (_Unavailable,), {})

    class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, fullname, path, target=None):
            if fullname == "mmcv.ops" or fullname.startswith("mmcv.ops."):
                return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
            return None

        def create_module(self, spec):
            module = _Ops(spec.name)
            module.__path__ = []
            module.nms, module.batched_nms = nms, batched_nms
            return module

        def exec_module(self, module):
            pass

    sys.meta_path.insert(0, _Finder())


def worker_mmdet(task: str, workdir: str, warmup: int, runs: int) -> Tuple[List, Dict]:
    _install_mmcv_ops_standin()
    import mmdet
    import torch
    from mmdet.registry import MODELS
    from mmdet.structures import DetDataSample
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    from mmengine.structures import InstanceData

    if not task.startswith("rtmdet"):
        raise ValueError(f"the mmdet worker runs RTMDet only, not {task}")
    register_all_modules()
    cfg = Config.fromfile(
        os.path.join(os.path.dirname(mmdet.__file__), ".mim/configs/rtmdet/rtmdet_tiny_8xb32-300e_coco.py")
    )
    cfg.model.backbone.init_cfg = None
    for part in (cfg.model.backbone, cfg.model.neck, cfg.model.bbox_head):
        part.norm_cfg = dict(type="BN")  # SyncBN on one CPU process = BN (same numbers)
    model = MODELS.build(cfg.model)
    model.load_state_dict(torch.load(os.path.join(workdir, "rtmdet_mmdet.pth")), strict=True)
    inputs = torch.load(os.path.join(workdir, "inputs.pt"))[task]
    samples = []
    for x in inputs:
        h, w = x["image"].shape[-2:]
        s = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), scale_factor=(1.0, 1.0), pad_shape=(h, w)))
        s.gt_instances = InstanceData(bboxes=x["boxes"], labels=x["classes"])
        samples.append(s)
    data = {"inputs": [x["image"] for x in inputs], "data_samples": samples}
    if task.endswith("infer"):
        model.eval()

        def infer():
            with torch.no_grad():
                return model.test_step(data)[0].pred_instances.scores

        times, scores = _timed(infer, warmup, runs)
        return times, _infer_check(scores)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=0.004, weight_decay=0.05)

    def step():
        d = model.data_preprocessor(data, True)
        losses = model(**d, mode="loss")
        loss, log_vars = model.parse_losses(losses)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return {k: round(float(v), 5) for k, v in log_vars.items() if k != "loss"}

    times, losses = _timed(step, warmup, runs)
    return times, losses


WORKERS = {"d2lite": worker_d2lite, "detectron2": worker_detectron2, "mmdet": worker_mmdet}
SUPPORTS = {"d2lite": TASKS, "detectron2": TASKS[:2], "mmdet": TASKS[2:]}


# ----------------------------------------------------------------------------- driver


def _run_worker(impl: str, python: str, src: str, task: str, workdir: str, args) -> Dict:
    env = dict(os.environ)
    kind = impl.split("@")[0]
    if kind == "d2lite":
        env["PYTHONPATH"] = os.pathsep.join([src, os.path.join(src, "projects", "RTMDet")])
    else:
        env.pop("PYTHONPATH", None)
    cmd = [python, os.path.abspath(__file__), "--worker", kind, "--task", task, "--workdir", workdir]
    cmd += ["--warmup", str(args.warmup), "--runs", str(args.runs), "--threads", str(args.threads)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=src if kind == "d2lite" else workdir)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{impl} {task} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impls", nargs="+", default=["d2lite"], choices=["d2lite", "detectron2", "mmdet"])
    parser.add_argument("--ref-python", default=sys.executable, help="interpreter with detectron2 / mmdet")
    parser.add_argument("--baseline", default=None, help="another d2lite checkout, measured as 'd2lite@base'")
    parser.add_argument("--tasks", nargs="+", default=TASKS, choices=TASKS)
    parser.add_argument("--rounds", type=int, default=3, help="processes per implementation and task")
    parser.add_argument("--runs", type=int, default=3, help="timed repetitions per process")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--workdir", default=None, help="keep inputs and weights here, reused by later runs (default: a temp dir)"
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--task", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        torch.manual_seed(0)
        times, check = WORKERS[args.worker](args.task, args.workdir, args.warmup, args.runs)
        print("RESULT " + json.dumps({"times": times, "check": check}))
        return

    impls: List[Tuple[str, str, str]] = []  # (label, python, source dir)
    for impl in args.impls:
        impls.append((impl, sys.executable if impl == "d2lite" else args.ref_python, ROOT))
    if args.baseline:
        impls.append(("d2lite@base", sys.executable, os.path.abspath(args.baseline)))

    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or tmp
        os.makedirs(workdir, exist_ok=True)
        files = ["inputs.pt", "retinanet_train.pth", "retinanet_infer.pth", "rtmdet_d2lite.pth", "rtmdet_mmdet.pth"]
        if args.workdir and all(os.path.isfile(os.path.join(workdir, f)) for f in files):
            print(f"reusing the inputs and weights in {workdir}")
        else:
            prepare(workdir)
        results: Dict[Tuple[str, str], Dict] = {}
        for task in args.tasks:
            todo = [i for i in impls if task in SUPPORTS[i[0].split("@")[0]]]
            for r in range(args.rounds):
                order = todo[r % len(todo) :] + todo[: r % len(todo)]
                for label, python, src in order:
                    res = _run_worker(label, python, src, task, workdir, args)
                    entry = results.setdefault((task, label), {"times": [], "check": res["check"]})
                    entry["times"] += res["times"]
                    wall = statistics.median(t[0] for t in res["times"])
                    cpu = statistics.median(t[1] for t in res["times"])
                    print(f"  {task} {label} round {r}: {wall:.3f} s wall, {cpu:.3f} CPU-s", flush=True)

    load = os.getloadavg()
    print(
        f"\ntorch threads={args.threads}, {platform.machine()}, rounds={args.rounds} x runs={args.runs}, "
        f"load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    print(
        "\nmedians over all timed runs; ratio = d2lite / implementation (CPU-s: process CPU time, "
        "the steadier measure on a shared machine)"
    )
    print("\n| task | implementation | wall (s) | CPU (s) | ratio wall | ratio CPU | check |")
    print("|---|---|---:|---:|---:|---:|---|")
    for task in args.tasks:
        ours = results.get((task, "d2lite"))
        for label, _, _ in impls:
            if (task, label) not in results:
                continue
            r = results[(task, label)]
            wall = statistics.median(t[0] for t in r["times"])
            cpu = statistics.median(t[1] for t in r["times"])
            ratios = ["", ""]
            if ours and label != "d2lite":
                ratios = [
                    f"{statistics.median(t[0] for t in ours['times']) / wall:.3f}",
                    f"{statistics.median(t[1] for t in ours['times']) / cpu:.3f}",
                ]
            print(
                f"| {task} | {label} | {wall:.3f} | {cpu:.3f} | {ratios[0]} | {ratios[1]} | {json.dumps(r['check'])} |"
            )


if __name__ == "__main__":
    main()
