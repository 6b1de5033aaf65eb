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
