"""CPU latency per image of the eager model vs its exports (torch.export .pt2, TorchScript
.ts, ONNX in onnxruntime): RetinaNet R50-FPN at 512x512 and 800x1216, RTMDet-tiny at 640x640.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/export_latency.py [--reps 9] [--cases r50_512 ...]

Each case builds the COCO config's model (random weights: no pretrained weights are
downloaded), exports it to every format with d2lite.export (no check), loads each file
with d2lite.export.runtime (as a deployment would), then times one image per call,
the runners alternating in every repetition so that machine load hits all alike; medians
after 2 warm-up calls each. Eager is ``model([{"image", "height", "width"}])`` in
``torch.no_grad()``. Results: benchmarks/export_latency.md.

Random weights give RetinaNet no detections at its 0.05 score threshold, so the
classification layer is re-drawn with a larger spread (std 0.05 for R50) to give a
trained model's order of candidates; the table reports them. RTMDet keeps its
initialisation (scores near 0.01, above its 0.001 threshold: the worst case, every
prior is a candidate, as in benchmarks/rtmdet.md).
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "projects", "RTMDet"))  # before benchmarks/, whose rtmdet.py would shadow it

from d2lite.engine.lazy_train import build_model, load_config  # noqa: E402
from d2lite.export import build_export_adapter  # noqa: E402
from d2lite.export.formats import export_adapter  # noqa: E402
from d2lite.export.runtime import load_detector  # noqa: E402

CASES = {
    "r50_512": ("configs/COCO-Detection/retinanet_R_50_FPN_1x.py", (512, 512)),
    "r50_800x1216": ("configs/COCO-Detection/retinanet_R_50_FPN_1x.py", (800, 1216)),
    "rtmdet_tiny_640": ("projects/RTMDet/configs/rtmdet_tiny_8xb32-300e_coco.py", (640, 640)),
}
FORMATS = ("exported_program", "torchscript", "onnx")


def build(config: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(load_config(os.path.join(ROOT, config), ["train.device=cpu"])).eval()
    if hasattr(model.head, "cls_score"):  # RetinaNet: spread the scores of random weights
        with torch.no_grad():
            model.head.cls_score.weight.normal_(0, 0.05)
    return model


def run_case(name: str, reps: int) -> dict:
    config, (h, w) = CASES[name]
    model = build(config)
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    size = torch.tensor([h, w])

    def eager():
        with torch.no_grad():
            return model([{"image": image, "height": h, "width": w}])[0]["instances"]

    runners = {"eager": eager}
    info = {"case": name, "size": f"{h}x{w}", "detections": len(eager())}
    with tempfile.TemporaryDirectory() as tmp:
        adapter = build_export_adapter(model)
        for fmt in FORMATS:
            start = time.perf_counter()
            path = export_adapter(adapter, fmt, tmp)
            info[f"export_s_{fmt}"] = time.perf_counter() - start
            start = time.perf_counter()
            detector = load_detector(path)
            info[f"load_s_{fmt}"] = time.perf_counter() - start
            info[f"MB_{fmt}"] = os.path.getsize(path) / 2**20
            runners[fmt] = lambda detector=detector: detector(image, size)
        times = {k: [] for k in runners}
        for run in runners.values():  # warm-up (TorchScript optimises on its first calls)
            run()
            run()
        for _ in range(reps):
            for k, run in runners.items():
                start = time.perf_counter()
                run()
                times[k].append(time.perf_counter() - start)
    for k, t in times.items():
        info[f"ms_{k}"] = 1000 * statistics.median(t)
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}"
    )
    rows = []
    for name in args.cases:
        info = run_case(name, args.reps)
        print(info, flush=True)
        rows.append(info)
    print("\n| model | image | detections | eager (ms) | .pt2 (ms) | .ts (ms) | ONNX (ms) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        cells = [f"{r['ms_' + k]:.0f} ({r['ms_' + k] / r['ms_eager']:.2f}x)" for k in FORMATS]
        print(f"| {r['case']} | {r['size']} | {r['detections']} | {r['ms_eager']:.0f} | " + " | ".join(cells) + " |")
    print("\n| model | export s (.pt2 / .ts / ONNX) | load s (.pt2 / .ts / ONNX) | MB (.pt2 / .ts / ONNX) |")
    print("|---|---|---|---|")
    for r in rows:
        cols = [" / ".join(f"{r[f'{p}_{k}']:.1f}" for k in FORMATS) for p in ("export_s", "load_s", "MB")]
        print(f"| {r['case']} | " + " | ".join(cols) + " |")


if __name__ == "__main__":
    sys.exit(main())
