"""Helpers shared by tests of several packages (importable: tests/ is put on sys.path by conftest.py)."""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
QUICK_CONFIG = "configs/quick/retinanet_R_18_FPN_shapes.py"
# A schedule short enough for tests: 4 iterations on small batches, checkpoint every 2.
SHORT = [
    "train.max_iter=4",
    "train.eval_period=4",
    "train.checkpointer.period=2",
    "train.log_period=1",
    "train.vis_period=2",
    "dataloader.train.total_batch_size=2",
    "dataloader.train.num_workers=0",
    "dataloader.test.num_workers=0",
    # Barely trained models score near the 0.01 prior: keep them so AP is a real number.
    "model.test_score_thresh=0.0",
]


def run_tool(script: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``tools/<script>`` in a fresh Python process from the repository root."""
    env = dict(os.environ)
    env.setdefault("D2LITE_DATASETS", str(REPO_ROOT / "datasets"))
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools" / script), *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def retry_once(run: Callable[[], subprocess.CompletedProcess]) -> subprocess.CompletedProcess:
    """Run a command that starts several processes; if it fails, warn with its output and run it again.

    On the loaded 2-core machine a gloo child process has (rarely) died at exit with
    "terminate called without an active exception" after doing all its work; a second
    failure is a real one and is returned to the test.
    """
    proc = run()
    if proc.returncode != 0:
        warnings.warn(
            f"multi-process run failed once (rc={proc.returncode}), retrying; stderr tail:\n"
            f"{(proc.stderr or '')[-2000:]}",
            stacklevel=2,
        )
        proc = run()
    return proc


def write_coco_fixture(root: Path, split: str = "train2017", num_images: int = 4, seed: int = 0) -> Path:
    """Write a tiny COCO-format dataset under ``root``: ``annotations/instances_<split>.json``
    and ``<split>/*.jpg``, with non-contiguous category ids (1, 5, 90). Returns the json path."""
    rng = np.random.default_rng(seed)
    image_dir = root / split
    image_dir.mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    categories = [{"id": 1, "name": "person"}, {"id": 5, "name": "airplane"}, {"id": 90, "name": "toothbrush"}]
    images, annotations = [], []
    for i in range(num_images):
        h, w = int(rng.integers(80, 120)), int(rng.integers(100, 160))
        pixels = rng.integers(0, 60, size=(h, w, 3), dtype=np.uint8)
        for j in range(2):
            x0, y0 = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 40))
            bw, bh = int(rng.integers(15, 40)), int(rng.integers(15, 40))
            pixels[y0 : y0 + bh, x0 : x0 + bw] = 200 + 20 * j
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": categories[(i + j) % 3]["id"],
                    "bbox": [x0, y0, bw, bh],
                    "area": bw * bh,
                    "iscrowd": 0,
                }
            )
        name = f"{i:06d}.jpg"
        Image.fromarray(pixels).save(image_dir / name, quality=95)
        images.append({"id": i + 1, "file_name": name, "height": h, "width": w})
    json_file = root / "annotations" / f"instances_{split}.json"
    json_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return json_file


def export_check_images(test_images):
    """Images of several sizes for export tests, from the test loader's first three images
    (``d2lite.export.check.Sample``): one of them as is, a crop, a 1.5x enlargement, a crop
    of 33 x 48 pixels and a uniform gray image; original sizes differ from the image sizes."""
    import torch
    import torch.nn.functional as F

    from d2lite.export.check import Sample

    a, b, c = test_images[:3]
    big = F.interpolate(c.image[None].float(), scale_factor=1.5, mode="bilinear")[0].round().clamp(0, 255)
    return [
        Sample(a.image, a.height, a.width, "test image 0"),
        Sample(b.image[:, :150, :100].contiguous(), 300, 200, "crop 150x100"),
        Sample(big.to(torch.uint8), c.height, c.width, f"upscaled {tuple(big.shape[1:])}"),
        Sample(a.image[:, 40:73, 20:68].contiguous(), 33, 48, "crop 33x48"),
        Sample(torch.full((3, 160, 224), 114, dtype=torch.uint8), 480, 672, "uniform gray 160x224"),
    ]


def threshold_leaving_one_image_empty(model, samples, min_gap=1e-5):
    """A ``test_score_thresh`` for ``model`` under which exactly one of ``samples`` (the one
    whose best score is lowest) has no detections and every other has some, as far as
    possible from all detection scores in between (computed with threshold 0), so that float
    differences between runtimes cannot move a detection across it.

    Returns:
        (threshold, index of the image without detections).
    """
    from d2lite.export.check import eager_detections

    model.test_score_thresh = 0.0
    scores = [eager_detections(model, s)[1] for s in samples]
    best = sorted((float(s.max()), i) for i, s in enumerate(scores))
    (low, empty), (high, _) = best[0], best[1]
    values = sorted({low, high, *(float(v) for s in scores for v in s if low <= float(v) <= high)})
    gap, threshold = max((b - a, (a + b) / 2) for a, b in zip(values, values[1:]))
    assert gap >= 2 * min_gap, f"scores too close to choose a threshold between {low} and {high}"
    return threshold, empty


def assert_exports_match_eager(model, paths, samples):
    """Run each exported file (fresh process, no d2lite) on ``samples``: .pt2 and .ts give the
    eager ``model``'s detections bit for bit, .onnx within the check's tolerances."""
    import torch

    from d2lite.export.check import compare_detections, eager_detections, run_exported

    expected = [eager_detections(model, s) for s in samples]
    for path in paths:
        for sample, exp, act in zip(samples, expected, run_exported(str(path), samples)):
            where = f"{path.name} on {sample.name}"
            if path.suffix == ".onnx":
                assert compare_detections(exp, act) is None, f"{where}: {compare_detections(exp, act)}"
            else:
                for e, a in zip(exp, act):
                    assert e.dtype == a.dtype and torch.equal(e, a), where
    return expected
