"""Export adapters: the same detections as the eager model, bit for bit (eager and
TorchScript), the registry, the size range and the rescaling to the original image."""

import pytest
import torch
from helpers import QUICK_CONFIG, REPO_ROOT

from d2lite.engine.lazy_train import build_model, load_config
from d2lite.export import (
    DetectorExportAdapter,
    RetinaNetExportAdapter,
    build_export_adapter,
    register_export_adapter,
    registered_model_types,
)
from d2lite.export.adapter import DEFAULT_SIZE_RANGE
from d2lite.modeling import RetinaNet
from d2lite.modeling.postprocessing import detector_postprocess
from d2lite.structures import Boxes, Instances

R50_CONFIG = str(REPO_ROOT / "configs/COCO-Detection/retinanet_R_50_FPN_1x.py")


def quick_model(*overrides):
    torch.manual_seed(0)
    cfg = load_config(str(REPO_ROOT / QUICK_CONFIG), ["train.device=cpu", *overrides])
    return build_model(cfg).eval()


def eager(model, image, height, width):
    with torch.no_grad():
        inst = model([{"image": image, "height": height, "width": width}])[0]["instances"]
    return inst.pred_boxes.tensor, inst.scores, inst.pred_classes


def assert_same(expected, actual):
    for e, a in zip(expected, actual):
        assert e.dtype == a.dtype and torch.equal(e, a)


# (image size, original size): upscaled, downscaled, odd sizes, the smallest accepted size
CASES = [((192, 256), (384, 512)), ((97, 131), (60, 100)), ((384, 192), (768, 384)), ((33, 40), (33, 40))]


@pytest.mark.parametrize(
    "threshold, topk",
    [
        # (random weights: most scores are near 0.01; counts are for a 192x256 image)
        ("0.0", 1000),  # every pair kept, top 1000 of all per level; ~3000 boxes: per-class NMS
        ("0.0102", 1000),  # P3, P4: more kept than k, top k of all; P5: the ~470 kept; per-class NMS
        ("0.014", 1000),  # fewer kept than k on every level (~330 in all): coordinate-trick NMS
        ("0.014", 20),  # k=20 of ~275 / ~40 kept on P3 / P4, the ~12 kept on P5
        ("1.0", 1000),  # nothing kept
    ],
)
def test_retinanet_adapter_equals_eager_model(threshold, topk):
    model = quick_model(f"model.test_score_thresh={threshold}", f"model.test_topk_candidates={topk}")
    adapter = build_export_adapter(model)
    assert isinstance(adapter, RetinaNetExportAdapter)
    g = torch.Generator().manual_seed(0)
    counts = []
    for (h, w), (oh, ow) in CASES:
        image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
        expected = eager(model, image, oh, ow)
        with torch.no_grad():
            assert_same(expected, adapter(image, torch.tensor([oh, ow])))
        counts.append(len(expected[1]))
    if threshold == "1.0":
        assert counts == [0, 0, 0, 0]
    else:
        assert min(counts) > 0


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", r"ignore:`torch\.jit\.\w+` is deprecated:FutureWarning")
@pytest.mark.parametrize("threshold", ["0.0", "0.014"])
def test_scripted_retinanet_adapter_equals_eager_model(threshold):
    model = quick_model(f"model.test_score_thresh={threshold}")
    adapter = build_export_adapter(model)
    image = torch.randint(0, 256, (3, 160, 224), dtype=torch.uint8)
    with torch.no_grad():
        adapter.network = torch.jit.trace(adapter.network, (adapter.preprocess(image),), strict=False)
    scripted = torch.jit.script(adapter)
    g = torch.Generator().manual_seed(1)
    for (h, w), (oh, ow) in CASES:
        image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
        assert_same(eager(model, image, oh, ow), scripted(image, torch.tensor([oh, ow])))
    with pytest.raises(Exception, match="uint8"):
        scripted(torch.zeros(3, 64, 64), torch.tensor([64, 64]))
    with pytest.raises(Exception, match="size range"):
        scripted(torch.zeros(3, 32, 64, dtype=torch.uint8), torch.tensor([64, 64]))


def test_postprocess_rescales_clips_and_drops_empty_boxes_like_detector_postprocess():
    model = quick_model()
    adapter = build_export_adapter(model)
    boxes = torch.tensor([[10.0, 20.0, 30.0, 40.0], [-5.0, 90.0, 120.0, 130.0], [50.0, 100.0, 60.0, 140.0]])
    scores, classes = torch.tensor([0.9, 0.8, 0.7]), torch.tensor([0, 1, 2])
    # image 100x100 -> original 50 (height) x 200 (width): x * 2, y * 0.5, clipped to 200 x 50
    out = adapter.postprocess(boxes, scores, classes, 100, 100, torch.tensor([50, 200]))
    assert out[0].tolist() == [[20.0, 10.0, 60.0, 20.0], [0.0, 45.0, 200.0, 50.0]]  # the third: y1 = y2 = 50
    assert out[1].tolist() == pytest.approx([0.9, 0.8]) and out[2].tolist() == [0, 1]
    inst = detector_postprocess(
        Instances((100, 100), pred_boxes=Boxes(boxes.clone()), scores=scores, pred_classes=classes), 50, 200
    )
    assert torch.equal(inst.pred_boxes.tensor, out[0])


def test_default_size_ranges():
    assert (build_export_adapter(quick_model()).min_size, build_export_adapter(quick_model()).max_size) == (33, 2048)
    r50 = build_model(load_config(R50_CONFIG, ["train.device=cpu"])).eval()
    assert build_export_adapter(r50).default_size_range() == (129, 2048)  # P7: stride 128
    square = build_export_adapter(quick_model("model.backbone.square_pad=512"))
    assert (square.min_size, square.max_size) == (32, 512)


def test_set_size_range_checks():
    adapter = build_export_adapter(quick_model("model.backbone.square_pad=512"))
    adapter.set_size_range(64, 256)
    assert (adapter.min_size, adapter.max_size) == (64, 256)
    with pytest.raises(ValueError, match="exceeds 512"):
        adapter.set_size_range(64, 640)
    with pytest.raises(ValueError, match="empty"):
        adapter.set_size_range(300, 200)
    adapter.set_size_range(2, 64)  # a fixed padded size takes any small image
    dynamic = build_export_adapter(quick_model())
    with pytest.raises(ValueError, match="min image size 32 is below 33"):
        dynamic.set_size_range(32, 640)


def test_registry_finds_adapter_by_class_hierarchy_and_names_unknown_types():
    class MyRetinaNet(RetinaNet):
        pass

    model = quick_model()
    model.__class__ = MyRetinaNet  # a subclass without an adapter of its own
    assert isinstance(build_export_adapter(model), RetinaNetExportAdapter)
    assert "d2lite.modeling.meta_arch.retinanet.RetinaNet" in registered_model_types()
    with pytest.raises(TypeError, match=r"no export adapter is registered for .*Linear.*register_export_adapter"):
        build_export_adapter(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="not a DetectorExportAdapter"):
        register_export_adapter(MyRetinaNet)(object)


def test_base_adapter_needs_a_decode_and_a_dense_detector():
    with pytest.raises(TypeError, match="DenseDetector"):
        DetectorExportAdapter(torch.nn.Linear(2, 2))
    adapter = DetectorExportAdapter(quick_model())
    assert (adapter.min_size, adapter.max_size) == DEFAULT_SIZE_RANGE
    with pytest.raises(NotImplementedError, match="decode"):
        adapter(torch.zeros(3, 64, 64, dtype=torch.uint8), torch.tensor([64, 64]))
