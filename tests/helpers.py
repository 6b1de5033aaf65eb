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
# Evaluate on the first 50 images of shapes_val: a quarter of the evaluation time, which is
# most of a short run's.
EVAL_SMALL = "dataloader.test.dataset.names=shapes_val_50"

SHORT = [
    EVAL_SMALL,
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


# Test copies of detectron2's YAML configs (Base-RetinaNet.yaml, COCO-Detection/retinanet_R_50_FPN_{1x,3x}.yaml).
DETECTRON2_CONFIGS = REPO_ROOT / "tests" / "config" / "detectron2_configs"


def assert_same_detector(a, b, num_classes: int) -> None:
    """Two dense detectors built by different config paths are the same model: equal parameter
    and buffer names, shapes and trainability, equal hyperparameters, and, once ``b`` has ``a``'s
    weights, equal training losses and detections on the same inputs (CPU)."""
    import torch

    from d2lite.structures import Boxes, Instances
    from d2lite.utils.events import EventStorage

    params_a = {k: (tuple(v.shape), v.requires_grad) for k, v in a.named_parameters()}
    params_b = {k: (tuple(v.shape), v.requires_grad) for k, v in b.named_parameters()}
    assert list(params_a) == list(params_b) and params_a == params_b
    assert {k: tuple(v.shape) for k, v in a.state_dict().items()} == {
        k: tuple(v.shape) for k, v in b.state_dict().items()
    }
    assert str(a) == str(b)  # module types and their arguments (norms, strides, channels)
    for name in ("num_classes", "focal_loss_alpha", "focal_loss_gamma", "smooth_l1_beta", "box_reg_loss_type",
                 "test_score_thresh", "test_topk_candidates", "test_nms_thresh", "max_detections_per_image",
                 "head_in_features", "input_format", "vis_period"):  # fmt: skip
        assert getattr(a, name) == getattr(b, name), name
    assert torch.equal(a.pixel_mean, b.pixel_mean) and torch.equal(a.pixel_std, b.pixel_std)
    assert a.anchor_generator.strides == b.anchor_generator.strides
    assert a.anchor_generator.offset == b.anchor_generator.offset
    for x, y in zip(a.anchor_generator.cell_anchors, b.anchor_generator.cell_anchors):
        assert torch.equal(x, y)
    assert a.box2box_transform.weights == b.box2box_transform.weights
    assert vars(a.anchor_matcher) == vars(b.anchor_matcher)

    torch.manual_seed(0)
    b.load_state_dict(a.state_dict())
    inputs = []
    for h, w in ((96, 128), (80, 112)):
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(torch.tensor([[10.0, 12.0, 60.0, 70.0], [30.0, 5.0, 90.0, 40.0]]))
        inst.gt_classes = torch.tensor([0, num_classes - 1])
        image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8)
        inputs.append({"image": image, "instances": inst, "height": h, "width": w})
    a.train()
    b.train()
    with EventStorage(1):  # not a multiple of a vis_period: no training visualization
        losses_a, losses_b = a(inputs), b(inputs)
    assert losses_a.keys() == losses_b.keys() == {"loss_cls", "loss_box_reg"}
    for k in losses_a:
        assert torch.equal(losses_a[k], losses_b[k]), k
    a.eval()
    b.eval()
    a.test_score_thresh = b.test_score_thresh = 0.0  # an untrained model scores near the 0.01 prior
    with torch.no_grad():
        out_a, out_b = a(inputs), b(inputs)
    for x, y in zip(out_a, out_b):
        x, y = x["instances"], y["instances"]
        assert len(x) > 0
        assert torch.equal(x.pred_boxes.tensor, y.pred_boxes.tensor)
        assert torch.equal(x.scores, y.scores) and torch.equal(x.pred_classes, y.pred_classes)
