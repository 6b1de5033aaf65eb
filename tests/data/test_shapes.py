import hashlib
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from d2lite.data.datasets import shapes
from d2lite.data.datasets.shapes import generate_shapes, render_shapes_image

NUM = 20


def _digest(root: str, split: str) -> dict[str, str]:
    json_file, image_root = os.path.join(root, f"{split}.json"), os.path.join(root, split)
    out = {}
    for path in [json_file] + sorted(os.path.join(image_root, f) for f in os.listdir(image_root)):
        with open(path, "rb") as f:
            out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def train20(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("shapes"))
    json_file, image_root = generate_shapes(root, "train", NUM, seed=0)
    with open(json_file) as f:
        return root, json_file, image_root, json.load(f)


def test_layout_and_json_fields(train20):
    root, json_file, image_root, coco = train20
    assert json_file == os.path.join(root, "train.json")
    assert image_root == os.path.join(root, "train")
    assert sorted(os.listdir(image_root)) == [f"{i:06d}.jpg" for i in range(NUM)]
    assert not [f for f in os.listdir(root) if ".tmp-" in f]
    assert coco["categories"] == [
        {"id": 1, "name": "circle", "supercategory": "shape"},
        {"id": 2, "name": "square", "supercategory": "shape"},
        {"id": 3, "name": "triangle", "supercategory": "shape"},
    ]
    assert [im["id"] for im in coco["images"]] == list(range(1, NUM + 1))
    ann_ids = [a["id"] for a in coco["annotations"]]
    assert ann_ids == list(range(1, len(ann_ids) + 1))
    for im in coco["images"]:
        with Image.open(os.path.join(image_root, im["file_name"])) as pil:
            assert pil.format == "JPEG" and pil.mode == "RGB"
            assert pil.size == (im["width"], im["height"])
    for a in coco["annotations"]:
        assert set(a) == {"id", "image_id", "category_id", "bbox", "area", "iscrowd"}
        assert a["iscrowd"] == 0 and a["category_id"] in (1, 2, 3)
        # visible pixels fill a part of their box
        assert 0 < a["area"] <= a["bbox"][2] * a["bbox"][3]


def test_same_seed_same_bytes_different_seed_differs(tmp_path, train20):
    root = train20[0]
    generate_shapes(str(tmp_path), "train", NUM, seed=0)
    assert _digest(str(tmp_path), "train") == _digest(root, "train")
    generate_shapes(str(tmp_path), "other", NUM, seed=1)
    a, b = _digest(root, "train"), _digest(str(tmp_path), "other")
    assert all(a[f"train/{i:06d}.jpg"] != b[f"other/{i:06d}.jpg"] for i in range(NUM))


def test_image_sizes_and_object_counts(train20):
    coco = train20[3]
    hw = np.array([(im["height"], im["width"]) for im in coco["images"]])
    assert hw.min() >= 128 and hw.max() <= 256
    assert (hw[:, 0] != hw[:, 1]).any()
    counts = np.bincount([a["image_id"] for a in coco["annotations"]], minlength=NUM + 1)[1:]
    assert counts.min() >= 1 and counts.max() <= 6


def test_distribution_over_many_images():
    """Sizes, classes and per-image counts over 300 rendered images (no files)."""
    samples = [render_shapes_image(0, i) for i in range(300)]
    areas = np.concatenate([s.masks.sum(axis=(1, 2)) for s in samples])
    boxes = np.concatenate([s.boxes for s in samples])
    cats = np.concatenate([s.category_ids for s in samples])
    counts = np.array([len(s.category_ids) for s in samples])
    small = (areas < 32**2).mean()
    assert 0.4 <= small <= 0.65, small  # about half COCO-small
    longest = boxes[:, 2:].max(axis=1)
    assert longest.min() >= 8 and longest.max() <= 91
    assert (longest > 60).any()
    assert set(counts.tolist()) == {1, 2, 3, 4, 5, 6}
    frac = np.bincount(cats, minlength=4)[1:] / len(cats)
    assert np.all(np.abs(frac - 1 / 3) < 0.07), frac
    sides = np.array([s.image.shape[:2] for s in samples])
    assert sides.min() == 128 and sides.max() == 256  # the full range is used


def test_boxes_tight_and_match_json(train20):
    _, _, image_root, coco = train20
    anns_by_image: dict[int, list] = {}
    for a in coco["annotations"]:
        anns_by_image.setdefault(a["image_id"], []).append(a)
    for im in coco["images"]:
        sample = render_shapes_image(0, im["id"] - 1)
        h, w = sample.image.shape[:2]
        assert (h, w) == (im["height"], im["width"])
        anns = anns_by_image[im["id"]]
        assert [a["category_id"] for a in anns] == sample.category_ids
        np.testing.assert_array_equal([a["bbox"] for a in anns], sample.boxes)
        for a, mask in zip(anns, sample.masks):
            x, y, bw, bh = (int(v) for v in a["bbox"])
            assert x >= 0 and y >= 0 and x + bw <= w and y + bh <= h
            assert a["area"] == mask.sum()
            assert not mask[:, :x].any() and not mask[:, x + bw :].any()
            assert not mask[:y].any() and not mask[y + bh :].any()
            # each border row/column of the box holds object pixels
            assert mask[y, x : x + bw].any() and mask[y + bh - 1, x : x + bw].any()
            assert mask[y : y + bh, x].any() and mask[y : y + bh, x + bw - 1].any()
        # the JPEG is the rendered image up to compression
        with Image.open(os.path.join(image_root, im["file_name"])) as pil:
            diff = np.abs(np.asarray(pil, dtype=np.int16) - sample.image.astype(np.int16))
        assert diff.mean() < 4.5


def test_objects_stand_out_from_local_background():
    """Object colour vs. the pixels within 3 px around it: the generator demands a
    colour distance of >= 100 to the canvas under the object, so most gaps are large."""
    gaps = []
    for i in range(40):
        s = render_shapes_image(3, i)
        img = s.image.astype(np.float32)
        h, w = img.shape[:2]
        for mask, (x, y, bw, bh) in zip(s.masks, s.boxes.astype(int)):
            ring = np.zeros_like(mask)
            ring[max(y - 3, 0) : y + bh + 3, max(x - 3, 0) : x + bw + 3] = True
            ring &= ~mask
            gaps.append(np.linalg.norm(img[mask].mean(0) - img[ring].mean(0)))
    assert np.median(gaps) > 60, np.median(gaps)
    assert np.mean(np.array(gaps) > 25) > 0.9


def test_visible_fraction_and_occlusion():
    """Some annotated objects are partly hidden; none has less than 40% visible."""
    fractions = []
    for i in range(100):
        s = render_shapes_image(0, i)
        assert np.all(s.masks.sum(axis=(1, 2)) <= s.full_areas)
        fractions.extend(s.masks.sum(axis=(1, 2)) / s.full_areas)
    fractions = np.array(fractions)
    assert fractions.min() >= 0.4
    assert (fractions < 0.9).sum() >= 5  # real occlusion, not only a few clutter pixels


def test_hidden_objects_are_dropped(monkeypatch):
    """With the placement retries disabled, objects often land on each other; those with
    < 40% visible pixels must not be annotated."""
    monkeypatch.setattr(shapes, "PLACEMENT_TRIES", 1)
    full_areas = []
    orig = shapes._object_mask

    def spy(*args, **kwargs):
        m = orig(*args, **kwargs)
        full_areas.append(m.sum())
        return m

    monkeypatch.setattr(shapes, "_object_mask", spy)
    drawn = kept = 0
    for i in range(150):
        full_areas.clear()
        s = render_shapes_image(0, i)
        drawn += len(full_areas)
        kept += len(s.category_ids)
        visible = s.masks.sum(axis=(1, 2))
        # each kept object's visible area is >= 40% of one of the drawn objects' areas
        for v in visible:
            assert any(v >= 0.4 * fa and v <= fa for fa in full_areas)
    assert kept < drawn  # some were dropped


def test_idempotent_second_call(train20):
    root, json_file, image_root, _ = train20
    before = {p: os.stat(p).st_mtime_ns for p in [json_file, image_root, os.path.join(image_root, "000000.jpg")]}
    assert generate_shapes(root, "train", NUM, seed=0) == (json_file, image_root)
    assert {p: os.stat(p).st_mtime_ns for p in before} == before


def test_mismatched_parameters_are_an_error(train20):
    root = train20[0]
    with pytest.raises(ValueError, match="train.json"):
        generate_shapes(root, "train", NUM + 1, seed=0)
    with pytest.raises(ValueError, match="seed"):
        generate_shapes(root, "train", NUM, seed=5)
    with pytest.raises(ValueError, match="num_images"):
        generate_shapes(root, "x", 0, seed=0)


def test_interrupted_generation_then_completes(tmp_path, monkeypatch):
    root = str(tmp_path)
    orig = shapes.render_shapes_image

    def flaky(seed, index):
        if index == 7:
            raise KeyboardInterrupt("simulated interruption")
        return orig(seed, index)

    monkeypatch.setattr(shapes, "render_shapes_image", flaky)
    with pytest.raises(KeyboardInterrupt):
        generate_shapes(root, "train", NUM, seed=0)
    assert os.listdir(root) == []  # no json, no image folder, no temporary folder
    monkeypatch.setattr(shapes, "render_shapes_image", orig)
    json_file, _ = generate_shapes(root, "train", NUM, seed=0)
    with open(json_file) as f:
        assert len(json.load(f)["images"]) == NUM


def test_other_process_finished_first(tmp_path, train20):
    """The image folder appeared while we generated (another rank won the rename):
    our copy is discarded and the json written."""
    root = str(tmp_path)
    src_root = train20[0]
    os.makedirs(os.path.join(root, "train"))
    for f in os.listdir(os.path.join(src_root, "train")):
        os.link(os.path.join(src_root, "train", f), os.path.join(root, "train", f))
    generate_shapes(root, "train", NUM, seed=0)
    assert sorted(os.listdir(root)) == ["train", "train.json"]
    assert _digest(root, "train") == _digest(src_root, "train")


def test_stale_tmp_dirs_of_killed_runs_are_removed(tmp_path):
    stale, fresh = tmp_path / ".train.tmp-999999", tmp_path / ".train.tmp-999998"
    for d in (stale, fresh):
        d.mkdir()
        (d / "000000.jpg").write_bytes(b"partial")
    old = os.path.getmtime(stale) - 2 * shapes.STALE_TMP_AGE_S
    os.utime(stale, (old, old))
    generate_shapes(str(tmp_path), "train", 3, seed=0)
    assert sorted(os.listdir(tmp_path)) == [".train.tmp-999998", "train", "train.json"]


def test_broken_existing_split_is_an_error(tmp_path):
    json_file, image_root = generate_shapes(str(tmp_path), "val", 2, seed=1)
    shutil.rmtree(image_root)
    with pytest.raises(FileNotFoundError, match="image folder"):
        generate_shapes(str(tmp_path), "val", 2, seed=1)
    with open(json_file, "w") as f:
        f.write('{"images": [')
    with pytest.raises(ValueError, match="not valid json"):
        generate_shapes(str(tmp_path), "val", 2, seed=1)


def test_leftover_incomplete_folder_is_an_error(tmp_path):
    os.makedirs(tmp_path / "train")
    (tmp_path / "train" / "000000.jpg").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="lacks 19 images"):
        generate_shapes(str(tmp_path), "train", NUM, seed=0)
    assert sorted(os.listdir(tmp_path)) == ["train"]


def test_register_is_lazy(tmp_path):
    catalog = pytest.importorskip("d2lite.data.catalog")
    pytest.importorskip("d2lite.data.datasets.coco")
    DatasetCatalog, MetadataCatalog = catalog.DatasetCatalog, catalog.MetadataCatalog
    name = "shapes_test_lazy_tmp"
    try:
        shapes.register_shapes(name, str(tmp_path / "shapes"), "val", 5, seed=1)
        assert not (tmp_path / "shapes").exists()  # nothing generated at registration
        meta = MetadataCatalog.get(name)
        assert meta.thing_classes == ["circle", "square", "triangle"]
        assert meta.thing_dataset_id_to_contiguous_id == {1: 0, 2: 1, 3: 2}
        assert meta.evaluator_type == "coco"
        assert meta.json_file == str(tmp_path / "shapes" / "val.json")
        dicts = DatasetCatalog.get(name)
        assert len(dicts) == 5 and os.path.isfile(meta.json_file)
        assert dicts[0]["file_name"] == str(tmp_path / "shapes" / "val" / "000000.jpg")
        sample = render_shapes_image(1, 0)
        assert [a["category_id"] for a in dicts[0]["annotations"]] == [c - 1 for c in sample.category_ids]
    finally:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)


def test_register_all_shapes_uses_env(tmp_path, monkeypatch):
    catalog = pytest.importorskip("d2lite.data.catalog")
    DatasetCatalog, MetadataCatalog = catalog.DatasetCatalog, catalog.MetadataCatalog

    def unregister():
        for name in ("shapes_train", "shapes_val", "shapes_val_50"):
            if name in DatasetCatalog.list():
                DatasetCatalog.remove(name)
            if name in MetadataCatalog.list():
                MetadataCatalog.remove(name)

    unregister()
    monkeypatch.setenv("D2LITE_DATASETS", str(tmp_path))
    try:
        shapes.register_all_shapes()
        assert MetadataCatalog.get("shapes_train").json_file == str(tmp_path / "shapes" / "train.json")
        assert MetadataCatalog.get("shapes_val").image_root == str(tmp_path / "shapes" / "val")
        assert {"shapes_train", "shapes_val"} <= set(DatasetCatalog.list())
        assert not (tmp_path / "shapes").exists()
    finally:
        unregister()
        monkeypatch.undo()
        shapes.register_all_shapes()  # as `import d2lite.data` registered them


def _generate_after(event, root, n, queue):
    try:
        event.wait(10)
        generate_shapes(root, "train", n, seed=0)
        queue.put("ok")
    except BaseException as e:  # reported to the parent, which fails the test
        queue.put(repr(e))


def test_two_processes_generate_at_once(tmp_path, train20):
    """Two processes (e.g. two DDP ranks) start generating the same split together;
    both succeed and the result equals a single process's output."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    event, queue = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_generate_after, args=(event, str(tmp_path), NUM, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    event.set()
    for p in procs:
        p.join(60)
    assert sorted(queue.get(timeout=5) for _ in procs) == ["ok", "ok"]
    assert sorted(os.listdir(tmp_path)) == ["train", "train.json"]
    assert _digest(str(tmp_path), "train") == _digest(train20[0], "train")


def test_shapes_val_50_is_the_first_50_images_of_shapes_val_and_evaluates_on_its_own(tmp_path):
    """Perfect predictions on shapes_val_50 give AP 100: the evaluator's ground truth is the
    subset's own (against shapes_val.json, 150 images' boxes would be missed)."""
    import torch

    from d2lite.data.catalog import DatasetCatalog
    from d2lite.evaluation import COCOEvaluator
    from d2lite.structures import Boxes, BoxMode, Instances

    dicts = DatasetCatalog.get("shapes_val_50")
    assert dicts == DatasetCatalog.get("shapes_val")[:50]
    evaluator = COCOEvaluator("shapes_val_50", output_dir=str(tmp_path), allow_cached_coco=False)
    evaluator.reset()
    for d in dicts:
        boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in d["annotations"]]
        instances = Instances((d["height"], d["width"]))
        instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        instances.scores = torch.ones(len(boxes))
        instances.pred_classes = torch.tensor([a["category_id"] for a in d["annotations"]], dtype=torch.int64)
        evaluator.process([{"image_id": d["image_id"]}], [{"instances": instances}])
    assert evaluator.evaluate()["bbox"]["AP"] == pytest.approx(100.0)
    assert (tmp_path / "shapes_val_50_coco_format.json").is_file()
