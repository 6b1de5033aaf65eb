import contextlib
import io
import json
import logging
import math
import uuid

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn

from d2lite.data.catalog import DatasetCatalog, MetadataCatalog
from d2lite.data.datasets.coco import register_coco_instances
from d2lite.evaluation import (
    COCOEvaluator,
    DatasetEvaluator,
    DatasetEvaluators,
    inference_context,
    inference_on_dataset,
    print_csv_format,
)
from d2lite.evaluation.testing import flatten_results_dict, verify_results
from d2lite.structures import Boxes, BoxMode, Instances

# Category ids are deliberately not contiguous: contiguous class k <-> CAT_IDS[k].
CAT_IDS = [1, 5, 90]
CAT_NAMES = ["cat", "dog", "bird"]
METRICS = ["AP", "AP50", "AP75", "APs", "APm", "APl"]

# image id -> (height, width, [(category id, [x, y, w, h]), ...]); small (<32^2),
# medium and large (>96^2) objects of every class.
IMAGES = {
    1: (200, 300, [(1, [10, 10, 20, 20]), (5, [50, 40, 60, 50]), (90, [100, 80, 120, 110])]),
    2: (160, 160, [(5, [5, 5, 25, 30]), (1, [40, 30, 100, 100])]),
    3: (240, 200, [(90, [20, 30, 15, 12]), (1, [60, 60, 50, 70]), (5, [70, 20, 110, 100])]),
    4: (128, 128, [(90, [30, 30, 40, 40])]),
}


def _coco_dict():
    images, anns = [], []
    for img_id, (h, w, objs) in IMAGES.items():
        images.append({"id": img_id, "file_name": f"{img_id}.jpg", "height": h, "width": w})
        for cat, box in objs:
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": img_id,
                    "category_id": cat,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )
    cats = [{"id": i, "name": n} for i, n in zip(CAT_IDS, CAT_NAMES)]
    return {"images": images, "annotations": anns, "categories": cats}


@pytest.fixture
def eval_log(monkeypatch):
    """Records of the d2lite.evaluation loggers (captured on that logger itself, so it
    works even if d2lite's logger stops propagating to the root logger)."""
    import d2lite.utils.logger as d2_logger

    monkeypatch.setattr(d2_logger, "_LOG_TIMER", {})  # log_every_n_seconds starts afresh
    records = []

    class Handler(logging.Handler):
        def emit(self, record):
            records.append(record)

    lg = logging.getLogger("d2lite.evaluation")
    handler, old_level = Handler(logging.DEBUG), lg.level
    lg.addHandler(handler)
    lg.setLevel(logging.INFO)
    yield records
    lg.removeHandler(handler)
    lg.setLevel(old_level)


def _text(records):
    return "\n".join(r.getMessage() for r in records)


@pytest.fixture
def coco_dataset(tmp_path):
    """A registered COCO dataset (json in tmp_path); unregistered after the test."""
    json_file = tmp_path / "instances.json"
    json_file.write_text(json.dumps(_coco_dict()))
    name = f"eval_test_{uuid.uuid4().hex[:8]}"
    register_coco_instances(name, {}, str(json_file), str(tmp_path))
    DatasetCatalog.get(name)  # sets thing_classes / thing_dataset_id_to_contiguous_id
    yield name, str(json_file)
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _inputs_outputs(dets):
    """dets: image id -> list of (contiguous class, [x0, y0, x1, y1], score)."""
    inputs, outputs = [], []
    for img_id, (h, w, _) in IMAGES.items():
        d = dets.get(img_id, [])
        inst = Instances((h, w))
        inst.pred_boxes = Boxes(torch.tensor([b for _, b, _ in d], dtype=torch.float32).reshape(-1, 4))
        inst.scores = torch.tensor([s for _, _, s in d], dtype=torch.float32)
        inst.pred_classes = torch.tensor([c for c, _, _ in d], dtype=torch.int64)
        inputs.append({"image_id": img_id, "height": h, "width": w})
        outputs.append({"instances": inst})
    return inputs, outputs


def _perfect_dets():
    return {
        img_id: [(CAT_IDS.index(cat), [x, y, x + w, y + h], 1.0) for cat, (x, y, w, h) in objs]
        for img_id, (_, _, objs) in IMAGES.items()
    }


def _evaluate(name, dets, **kwargs):
    evaluator = COCOEvaluator(name, **kwargs)
    evaluator.reset()
    inputs, outputs = _inputs_outputs(dets)
    for i in range(len(inputs)):  # one image per batch, like a test loader
        evaluator.process(inputs[i : i + 1], outputs[i : i + 1])
    return evaluator.evaluate()


def test_perfect_predictions_give_100(coco_dataset, tmp_path):
    name, _ = coco_dataset
    results = _evaluate(name, _perfect_dets(), output_dir=str(tmp_path / "out"))
    assert list(results) == ["bbox"]
    assert list(results["bbox"]) == METRICS + ["AP-cat", "AP-dog", "AP-bird"]
    for k, v in results["bbox"].items():
        assert v == pytest.approx(100.0), k


def test_hand_computed_ap_one_hit_one_false_positive(tmp_path):
    """2 medium boxes of one class, detections: a perfect hit (score .9) and a miss (score .8).
    Precision is 1 up to recall 0.5, nothing beyond: 51 of COCO's 101 recall points
    -> AP = 51/101 at every IoU threshold."""
    coco = {
        "images": [{"id": 7, "file_name": "a.jpg", "height": 100, "width": 100}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 3, "bbox": [10, 10, 40, 40], "area": 1600, "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 3, "bbox": [55, 55, 40, 40], "area": 1600, "iscrowd": 0},
        ],
        "categories": [{"id": 3, "name": "only"}],
    }
    (tmp_path / "one.json").write_text(json.dumps(coco))
    name = f"eval_test_{uuid.uuid4().hex[:8]}"
    register_coco_instances(name, {}, str(tmp_path / "one.json"), str(tmp_path))
    try:
        ev = COCOEvaluator(name, distributed=False)
        inst = Instances((100, 100))
        inst.pred_boxes = Boxes(torch.tensor([[10.0, 10, 50, 50], [0, 60, 20, 90]]))
        inst.scores = torch.tensor([0.9, 0.8])
        inst.pred_classes = torch.tensor([0, 0])
        ev.process([{"image_id": 7}], [{"instances": inst}])
        res = ev.evaluate()["bbox"]
        assert res["AP"] == pytest.approx(100 * 51 / 101)
        assert res["AP50"] == pytest.approx(100 * 51 / 101)
        assert res["APm"] == pytest.approx(100 * 51 / 101)
        assert math.isnan(res["APs"]) and math.isnan(res["APl"])  # no such objects
        assert "AP-only" not in res  # a single class has no per-class entries

        # The miss scores higher: precision is 1/2 at recall 0.5 -> AP = 0.5 * 51/101.
        inst.scores = torch.tensor([0.8, 0.9])
        ev.reset()
        ev.process([{"image_id": 7}], [{"instances": inst}])
        assert ev.evaluate()["bbox"]["AP"] == pytest.approx(100 * 0.5 * 51 / 101)
        # With one detection per image only the miss is kept: AP 0.
        ev = COCOEvaluator(name, distributed=False, max_dets_per_image=1)
        ev.process([{"image_id": 7}], [{"instances": inst}])
        assert ev.evaluate()["bbox"]["AP"] == pytest.approx(0.0)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_matches_pycocotools_on_shifted_predictions(coco_dataset, tmp_path):
    name, json_file = coco_dataset
    rng = np.random.default_rng(0)
    dets = {}
    for img_id, (_, _, objs) in IMAGES.items():
        d = []
        for cat, (x, y, w, h) in objs:
            dx, dy = rng.uniform(-0.25, 0.25, 2) * [w, h]
            d.append((CAT_IDS.index(cat), [x + dx, y + dy, x + dx + w, y + dy + h], float(rng.uniform(0.3, 1))))
        d.append((int(rng.integers(3)), [0.0, 0.0, 30.0, 30.0], float(rng.uniform(0, 1))))  # false positive
        dets[img_id] = d
    results = _evaluate(name, dets, output_dir=str(tmp_path / "out"))["bbox"]

    coco_results = [
        {"image_id": i, "category_id": CAT_IDS[c], "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "score": s}
        for i, d in dets.items()
        for c, b, s in d
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(json_file)
        ref = COCOeval(gt, gt.loadRes(coco_results), "bbox")
        ref.evaluate()
        ref.accumulate()
        ref.summarize()
    for i, m in enumerate(METRICS):
        assert results[m] == pytest.approx(ref.stats[i] * 100), m
    assert 0 < results["AP"] < 100
    for k, cat_name in enumerate(CAT_NAMES):
        p = ref.eval["precision"][:, :, k, 0, -1]
        assert results[f"AP-{cat_name}"] == pytest.approx(p[p > -1].mean() * 100)


def test_results_json_maps_noncontiguous_ids(coco_dataset, tmp_path):
    name, _ = coco_dataset
    out = tmp_path / "out"
    dets = {1: [(0, [1.0, 2.0, 11.0, 22.0], 0.5), (1, [0.0, 0.0, 5.0, 5.0], 0.4), (2, [3.0, 3.0, 4.0, 9.0], 0.3)]}
    _evaluate(name, dets, output_dir=str(out))
    saved = json.loads((out / "coco_instances_results.json").read_text())
    assert saved == [
        {"image_id": 1, "category_id": 1, "bbox": [1.0, 2.0, 10.0, 20.0], "score": pytest.approx(0.5)},
        {"image_id": 1, "category_id": 5, "bbox": [0.0, 0.0, 5.0, 5.0], "score": pytest.approx(0.4)},
        {"image_id": 1, "category_id": 90, "bbox": [3.0, 3.0, 1.0, 6.0], "score": pytest.approx(0.3)},
    ]
    preds = torch.load(out / "instances_predictions.pth", weights_only=False)
    assert [p["image_id"] for p in preds] == [1, 2, 3, 4]
    assert preds[0]["instances"][1]["category_id"] == 1  # stored with contiguous ids


def test_mapping_derived_from_json_when_metadata_lacks_it(tmp_path):
    """Registered but never loaded: no thing_dataset_id_to_contiguous_id in metadata yet."""
    (tmp_path / "i.json").write_text(json.dumps(_coco_dict()))
    name = f"eval_test_{uuid.uuid4().hex[:8]}"
    register_coco_instances(name, {}, str(tmp_path / "i.json"), str(tmp_path))
    try:
        assert not hasattr(MetadataCatalog.get(name), "thing_dataset_id_to_contiguous_id")
        results = _evaluate(name, _perfect_dets(), distributed=False)["bbox"]
        assert results["AP"] == pytest.approx(100.0)
        assert results["AP-bird"] == pytest.approx(100.0)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_per_class_ap_follows_a_non_monotonic_id_mapping(tmp_path):
    """Contiguous classes in another order than the json's sorted category ids."""
    (tmp_path / "i.json").write_text(json.dumps(_coco_dict()))
    name = f"eval_test_{uuid.uuid4().hex[:8]}"
    register_coco_instances(name, {}, str(tmp_path / "i.json"), str(tmp_path))
    MetadataCatalog.get(name).set(
        thing_classes=["bird", "cat", "dog"], thing_dataset_id_to_contiguous_id={90: 0, 1: 1, 5: 2}
    )
    try:
        birds = {
            img_id: [(0, [x, y, x + w, y + h], 1.0) for cat, (x, y, w, h) in objs if cat == 90]
            for img_id, (_, _, objs) in IMAGES.items()
        }
        results = _evaluate(name, birds, distributed=False)["bbox"]
        assert results["AP-bird"] == pytest.approx(100.0)
        assert results["AP-cat"] == pytest.approx(0.0) and results["AP-dog"] == pytest.approx(0.0)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_dataset_without_json_is_converted(tmp_path):
    name = f"eval_test_{uuid.uuid4().hex[:8]}"
    dicts = []
    for img_id, (h, w, objs) in IMAGES.items():
        dicts.append(
            {
                "file_name": str(tmp_path / f"{img_id}.jpg"),
                "image_id": img_id,
                "height": h,
                "width": w,
                "annotations": [
                    {"bbox": box, "bbox_mode": BoxMode.XYWH_ABS, "category_id": CAT_IDS.index(cat), "iscrowd": 0}
                    for cat, box in objs
                ],
            }
        )
    DatasetCatalog.register(name, lambda: dicts)
    MetadataCatalog.get(name).set(thing_classes=list(CAT_NAMES))
    out = tmp_path / "out"
    try:
        with pytest.raises(ValueError, match="output_dir"):
            COCOEvaluator(name)
        results = _evaluate(name, _perfect_dets(), output_dir=str(out))["bbox"]
        assert (out / f"{name}_coco_format.json").is_file()
        assert results["AP"] == pytest.approx(100.0)
        assert results["AP-dog"] == pytest.approx(100.0)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_lazily_generated_json_is_created(tmp_path):
    """A dataset whose json is written by its loader (like shapes) is loaded first."""
    from d2lite.data.datasets.shapes import register_shapes

    name = f"eval_shapes_{uuid.uuid4().hex[:8]}"
    register_shapes(name, str(tmp_path / "shapes"), "val", 4, seed=1)
    try:
        evaluator = COCOEvaluator(name, distributed=False)
        assert (tmp_path / "shapes" / "val.json").is_file()
        for d in DatasetCatalog.get(name):
            inst = Instances((d["height"], d["width"]))
            boxes = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in d["annotations"])]
            inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
            inst.scores = torch.ones(len(boxes))
            inst.pred_classes = torch.tensor([a["category_id"] for a in d["annotations"]])
            evaluator.process([d], [{"instances": inst}])
        res = evaluator.evaluate()["bbox"]
        assert res["AP"] == pytest.approx(100.0)
        assert set(res) >= {"AP-circle", "AP-square", "AP-triangle"}
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_no_detections_gives_nan_with_warning(coco_dataset, eval_log):
    name, _ = coco_dataset
    results = _evaluate(name, {})
    assert "No predictions from the model" in _text(eval_log)
    assert list(results["bbox"]) == METRICS + ["AP-cat", "AP-dog", "AP-bird"]
    assert all(math.isnan(v) for v in results["bbox"].values())

    eval_log.clear()
    evaluator = COCOEvaluator(name)
    evaluator.reset()
    assert evaluator.evaluate() == {}
    assert "Did not receive valid predictions" in _text(eval_log)


def test_bad_input_errors(coco_dataset):
    name, _ = coco_dataset
    with pytest.raises(ValueError, match="boxes only"):
        COCOEvaluator(name, tasks=("bbox", "segm"))
    with pytest.raises(ValueError, match="has class 3.*3 classes"):
        _evaluate(name, {1: [(3, [0.0, 0.0, 5.0, 5.0], 0.5)]})
    evaluator = COCOEvaluator(name)
    inst = Instances((10, 10), pred_boxes=Boxes(torch.zeros(0, 4)), scores=torch.zeros(0), pred_classes=torch.zeros(0))
    with pytest.raises(KeyError, match="image_id"):
        evaluator.process([{"file_name": "x.jpg"}], [{"instances": inst}])
    with pytest.raises(ValueError, match="max_dets_per_image"):
        COCOEvaluator(name, max_dets_per_image=0)


def test_evaluate_twice_gives_same_result(coco_dataset):
    name, _ = coco_dataset
    evaluator = COCOEvaluator(name)
    evaluator.reset()
    inputs, outputs = _inputs_outputs(_perfect_dets())
    evaluator.process(inputs, outputs)
    assert evaluator.evaluate() == evaluator.evaluate()
    evaluator.reset()
    assert evaluator.evaluate() == {}


def test_per_category_table_logged(coco_dataset, eval_log):
    name, _ = coco_dataset
    _evaluate(name, _perfect_dets())
    text = _text(eval_log)
    assert "Per-category bbox AP:" in text
    assert "| category | AP      | category | AP      | category | AP      |" in text
    assert "| cat      | 100.000 | dog      | 100.000 | bird     | 100.000 |" in text
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 1.000" in text


class _FakeDetector(nn.Module):
    """Returns the ground truth of an image as detections the first time it sees the
    image, nothing later; records its mode."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(1, 1)
        self.modes = []
        self.grad_enabled = []
        self.seen = set()

    def forward(self, batched_inputs):
        self.modes.append(self.training)
        self.grad_enabled.append(torch.is_grad_enabled())
        outs = []
        for x in batched_inputs:
            h, w, objs = IMAGES[x["image_id"]]
            if x["image_id"] in self.seen:
                objs = []
            self.seen.add(x["image_id"])
            inst = Instances((h, w))
            boxes = [[b[0], b[1], b[0] + b[2], b[1] + b[3]] for _, b in objs]
            inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
            inst.scores = torch.ones(len(objs))
            inst.pred_classes = torch.tensor([CAT_IDS.index(c) for c, _ in objs])
            outs.append({"instances": inst})
        return outs


def test_inference_on_dataset(coco_dataset, eval_log):
    name, _ = coco_dataset
    model = _FakeDetector().train()
    loader = [[{"image_id": i}] for i in IMAGES] * 3  # 12 batches: 5 warm-up + 7 timed
    calls = []
    callbacks = {
        k: (lambda k=k: calls.append(k)) for k in ("on_start", "before_inference", "after_inference", "on_end")
    }
    results = inference_on_dataset(model, loader, COCOEvaluator(name), callbacks=callbacks)
    assert results["bbox"]["AP"] == pytest.approx(100.0)
    assert model.training  # restored
    assert model.modes == [False] * 12 and model.grad_enabled == [False] * 12
    assert calls[0] == "on_start" and calls[-1] == "on_end"
    assert calls.count("before_inference") == calls.count("after_inference") == 12
    text = _text(eval_log)
    assert "Start inference on 12 batches" in text
    assert "Inference done 11/12. Dataloading:" in text
    assert "ETA=0:00:00" in text
    assert "Total inference time:" in text and "s / image" in text
    assert "Total inference pure compute time:" in text


def test_inference_on_dataset_without_evaluator_and_lists():
    model = _FakeDetector().eval()
    assert inference_on_dataset(model, [[{"image_id": 1}]], None) == {}
    assert not model.training

    class Recorder(DatasetEvaluator):
        def __init__(self, key):
            self.key = key
            self.n = 0

        def reset(self):
            self.n = 0

        def process(self, inputs, outputs):
            self.n += len(inputs)

        def evaluate(self):
            return {self.key: {"n": self.n}}

    res = inference_on_dataset(model, [[{"image_id": 1}, {"image_id": 2}]] * 2, [Recorder("a"), Recorder("b")])
    assert res == {"a": {"n": 4}, "b": {"n": 4}}
    with pytest.raises(KeyError, match="same key 'a'"):
        DatasetEvaluators([Recorder("a"), Recorder("a")]).evaluate()
    with pytest.raises(TypeError, match="length"):
        inference_on_dataset(model, iter([[{"image_id": 1}]]), None)
    with pytest.raises(KeyError, match="after_inferense"):
        inference_on_dataset(model, [], None, callbacks={"after_inferense": lambda: None})


def test_inference_context_restores_mode_on_error():
    model = nn.Linear(1, 1).train()
    with pytest.raises(RuntimeError):
        with inference_context(model):
            assert not model.training
            raise RuntimeError("boom")
    assert model.training


def test_print_csv_format_and_helpers(eval_log):
    results = {"bbox": {"AP": 12.3456, "AP50": 50.0, "AP-cat": 1.0}, "speed": 3}
    print_csv_format(results)
    lines = [r.getMessage() for r in eval_log]
    assert lines == ["copypaste: Task: bbox", "copypaste: AP,AP50", "copypaste: 12.3456,50.0000", "copypaste: speed=3"]
    with pytest.raises(TypeError):
        print_csv_format([1, 2])
    assert flatten_results_dict(results) == {"bbox/AP": 12.3456, "bbox/AP50": 50.0, "bbox/AP-cat": 1.0, "speed": 3}
    eval_log.clear()
    assert verify_results(results, [("bbox", "AP", 12.3, 0.1)])
    assert not verify_results(results, [("bbox", "AP", 13.0, 0.1)])
    assert not verify_results(results, [("bbox", "APs", 1.0, 0.1)])
    assert not verify_results({"bbox": {"AP": float("nan")}}, [("bbox", "AP", 1.0, 10.0)])


def _ddp_worker(rank, world_size, port, name, json_file, image_root, queue):
    import torch.distributed as dist

    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
        if name not in DatasetCatalog.list():  # registered in the parent before fork
            register_coco_instances(name, {}, json_file, image_root)
        evaluator = COCOEvaluator(name, distributed=True)
        evaluator.reset()
        inputs, outputs = _inputs_outputs(_perfect_dets())
        # each rank sees half of the images, like InferenceSampler
        for i in range(rank, len(inputs), world_size):
            evaluator.process(inputs[i : i + 1], outputs[i : i + 1])
        queue.put((rank, evaluator.evaluate()))
        dist.destroy_process_group()
    except BaseException as e:
        queue.put((rank, repr(e)))


def test_distributed_gather_on_two_ranks(coco_dataset, tmp_path):
    """Rank 0 evaluates the predictions of both ranks (AP 100 needs all images);
    rank 1 returns {}."""
    import multiprocessing as mp
    import socket

    name, json_file = coco_dataset
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_ddp_worker, args=(r, 2, port, name, json_file, str(tmp_path), queue)) for r in range(2)
    ]
    for p in procs:
        p.start()
    got = dict(queue.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(30)
    assert got[1] == {}, got
    assert isinstance(got[0], dict), got
    assert got[0]["bbox"]["AP"] == pytest.approx(100.0)
    assert got[0]["bbox"]["AP-bird"] == pytest.approx(100.0)
