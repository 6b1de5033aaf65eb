"""RTMDet through d2lite's export extension point: the adapter equals the eager model bit for
bit, and the shapes demo (a few training iterations) exports and self-checks in all three
formats with tools/deploy/export_model.py."""

import json
import os
import sys

import pytest
import torch
from rtmdet_testing import tiny_rtmdet

from d2lite.export import build_export_adapter
from rtmdet import RTMDetExportAdapter

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
CONFIG = os.path.join(REPO, "projects", "RTMDet", "configs", "rtmdet_tiny_shapes.py")
sys.path.insert(0, os.path.join(REPO, "tests"))  # tests/helpers.py
sys.path.insert(0, os.path.join(REPO, "tools", "deploy"))

from helpers import assert_exports_match_eager, export_check_images, threshold_leaving_one_image_empty  # noqa: E402

# onepass: the outcome does not depend on the float path (make test-1thread skips it).
pytestmark = pytest.mark.onepass


def eager(model, image, height, width):
    with torch.no_grad():
        inst = model([{"image": image, "height": height, "width": width}])[0]["instances"]
    return inst.pred_boxes.tensor, inst.scores, inst.pred_classes


@pytest.mark.parametrize(
    "fixed_input_size, topk",
    [(None, 30000), ((256, 256), 30000), (None, 50)],  # 50: more kept than k per level (top-k, not sort)
)
def test_adapter_equals_eager_rtmdet(fixed_input_size, topk):
    torch.manual_seed(0)
    model = tiny_rtmdet(
        num_classes=3, fixed_input_size=fixed_input_size, test_score_thresh=0.0, test_topk_candidates=topk
    ).eval()
    with torch.no_grad():  # spread the scores and distances of the freshly initialised head
        for conv in list(model.head.rtm_cls) + list(model.head.rtm_reg):
            conv.weight.normal_(0, 0.3)
    adapter = build_export_adapter(model)
    assert isinstance(adapter, RTMDetExportAdapter)
    if fixed_input_size is None:
        assert (adapter.min_size, adapter.max_size) == (33, 2048)
    else:
        assert (adapter.min_size, adapter.max_size) == (32, 256)
    g = torch.Generator().manual_seed(0)
    for (h, w), (oh, ow) in [((224, 160), (448, 320)), ((97, 131), (50, 70)), ((256, 256), (256, 256))]:
        image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
        expected = eager(model, image, oh, ow)
        assert len(expected[1]) > 0
        with torch.no_grad():
            actual = adapter(image, torch.tensor([oh, ow]))
        for e, a in zip(expected, actual):
            assert e.dtype == a.dtype and torch.equal(e, a)


@pytest.fixture(scope="module")
def rtmdet_export(tmp_path_factory):
    """The RTMDet shapes demo trained 10 iterations by the tool, its prediction convs then
    redrawn from a seeded N(0, 0.3) (a model this young gives nearly all boxes the same score,
    on some float paths all within 1e-5, too close to put a threshold between images, and
    boxes that clipping empties; redrawn, the best scores per image are 0.82-0.95 and apart
    by 0.1 on 1 and 2 threads), saved as a checkpoint and exported to all formats by the tool with a score threshold under
    which one check image has no detections."""
    pytest.importorskip("onnxruntime", reason="the ONNX export needs the export extra: pip install -e '.[export]'")
    import export_model
    from helpers import run_tool

    from d2lite.engine.lazy_train import load_config
    from d2lite.export.lazy_export import load_trained_model, sample_images

    run_dir = tmp_path_factory.mktemp("rtmdet_train")
    train = run_tool(
        "lazyconfig_train_net.py",
        "--config-file",
        CONFIG,
        "train.max_iter=10",
        "train.eval_period=0",
        "train.log_period=10",
        "lr_multiplier.warmup_length=0.0",
        "train.ema.enabled=False",
        "dataloader.train.total_batch_size=2",
        "dataloader.train.num_workers=0",
        "dataloader.test.num_workers=0",
        f"train.output_dir={run_dir}",
    )
    assert train.returncode == 0, train.stderr[-3000:]
    opts = [f"train.init_checkpoint={run_dir / 'model_final.pth'}", "dataloader.test.num_workers=0"]
    opts.append("train.ema.enabled=False")
    model, _ = load_trained_model(load_config(CONFIG, opts))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for conv in list(model.head.rtm_cls) + list(model.head.rtm_reg):
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.3)
    torch.save({"model": model.state_dict()}, run_dir / "spread.pth")
    opts[0] = f"train.init_checkpoint={run_dir / 'spread.pth'}"
    cfg = load_config(CONFIG, opts)
    model, _ = load_trained_model(cfg)
    samples = export_check_images(sample_images(cfg, 3))
    threshold, empty = threshold_leaving_one_image_empty(model, samples)
    opts.append(f"model.test_score_thresh={threshold}")
    out = tmp_path_factory.mktemp("rtmdet_export")
    results = {}
    for fmt in ("exported_program", "torchscript", "onnx"):
        results[fmt] = export_model.main(
            ["--config-file", CONFIG, "--format", fmt, "--output", str(out), "--check-images", "1", *opts]
        )
    model.test_score_thresh = threshold
    return out, results, model, samples, empty


@pytest.mark.slow
def test_shapes_demo_exports_and_checks_every_format(rtmdet_export):
    out, results, *_ = rtmdet_export
    assert results == {"exported_program": 0, "torchscript": 0, "onnx": 0}
    meta = json.loads((out / "export.json").read_text())
    assert meta["model"] == "rtmdet.rtmdet.RTMDet"
    assert {k: v["check"]["num_images"] for k, v in meta["exports"].items()} == {
        "exported_program": 1,
        "torchscript": 1,
        "onnx": 1,
    }


@pytest.mark.slow
def test_shapes_demo_exports_equal_eager_on_several_sizes_and_an_image_without_detections(rtmdet_export):
    out, _, model, samples, empty = rtmdet_export
    expected = assert_exports_match_eager(model, [out / "model.pt2", out / "model.ts", out / "model.onnx"], samples)
    counts = [len(scores) for _, scores, _ in expected]
    assert counts[empty] == 0 and all(n > 0 for i, n in enumerate(counts) if i != empty), counts
