"""RTMDetDatasetMapper: annotation rules, determinism for a fixed seed, rejection, and the
full two-stage recipe keeping boxes on their objects."""

import numpy as np
import pytest
import torch
from PIL import Image

from d2lite.data import transforms as T
from d2lite.structures import BoxMode
from rtmdet.mapper import RTMDetDatasetMapper
from rtmdet.mix_transforms import CachedMixUp, CachedMosaic
from rtmdet.transforms import Pad, RandomCrop, RandomFlip, RandomResize, SampleRejected, YOLOXHSVRandomAug

# class -> BGR colour of its solid rectangles
COLOURS = {0: (40, 200, 40), 1: (200, 40, 40), 2: (40, 40, 200)}


def _write_images(tmp_path, n=8, seed=0):
    """Images of solid, non-overlapping rectangles (one per third of the width) on grey;
    each box is exactly its rectangle."""
    rng = np.random.default_rng(seed)
    dicts = []
    for i in range(n):
        h, w = int(rng.integers(120, 260)), int(rng.integers(120, 260))
        img = np.full((h, w, 3), 128, np.uint8)  # BGR
        annos = []
        band = w // 3
        for k in range(3):
            bw, bh = int(rng.integers(20, band - 5)), int(rng.integers(30, 60))
            x0, y0 = k * band + int(rng.integers(0, band - bw)), int(rng.integers(0, h - bh))
            c = (i + k) % 3
            img[y0 : y0 + bh, x0 : x0 + bw] = COLOURS[c]
            annos.append({"bbox": [x0, y0, bw, bh], "bbox_mode": BoxMode.XYWH_ABS, "category_id": c, "iscrowd": 0})
        path = tmp_path / f"{i}.png"
        Image.fromarray(img[..., ::-1]).save(path)  # PNG is RGB
        dicts.append({"file_name": str(path), "height": h, "width": w, "image_id": i, "annotations": annos})
    return dicts


def _stage1(size=128, mixup=True):
    augs = [
        CachedMosaic(img_scale=(size, size), max_cached_images=6, random_pop=False),
        RandomResize(scale=(2 * size, 2 * size), ratio_range=(0.5, 2.0)),
        RandomCrop(crop_size=(size, size)),
        RandomFlip(prob=0.5),
        Pad(size=(size, size), pad_val=114),
    ]
    if mixup:
        augs.insert(3, YOLOXHSVRandomAug())
        augs.append(CachedMixUp(img_scale=(size, size), ratio_range=(1.0, 1.0), max_cached_images=4))
    return augs


def _stage2(size=128):
    return [
        RandomResize(scale=(size, size), ratio_range=(0.5, 2.0)),
        RandomCrop(crop_size=(size, size)),
        RandomFlip(prob=0.5),
        Pad(size=(size, size), pad_val=114),
    ]


def _map_all(mapper, dicts, seed, rounds=3):
    np.random.seed(seed)
    return [mapper(d) for _ in range(rounds) for d in dicts]


def test_annotation_rules_of_mmdetection_coco_loader(tmp_path):
    d = _write_images(tmp_path, n=1)[0]
    h, w = d["height"], d["width"]
    d["annotations"] += [
        {"bbox": [5, 5, 0.5, 20], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 1},  # width < 1
        {"bbox": [5, 5, 20, 20], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 1, "iscrowd": 1},
        {"bbox": [5, 5, 20, 20], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 1, "area": 0},
        {"bbox": [w + 1, 5, 20, 20], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 1},  # outside
        {"bbox": [1, 2, 11, 22], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 2},
    ]
    mapper = RTMDetDatasetMapper([])
    boxes, classes = mapper.annotations_to_arrays(d)
    assert len(boxes) == 4 and boxes.dtype == np.float32 and classes.dtype == np.int64
    np.testing.assert_allclose(boxes[-1], [1, 2, 11, 22])
    out = mapper(d)
    assert out["image"].shape == (3, h, w) and out["image"].dtype == torch.uint8
    assert "annotations" not in out and len(out["instances"]) == 4
    assert out["instances"].gt_boxes.tensor.dtype == torch.float32


def test_same_seed_same_samples_and_different_seed_differs(tmp_path):
    dicts = _write_images(tmp_path)
    a = _map_all(RTMDetDatasetMapper(_stage1()), dicts, seed=3)
    b = _map_all(RTMDetDatasetMapper(_stage1()), dicts, seed=3)
    c = _map_all(RTMDetDatasetMapper(_stage1()), dicts, seed=4)
    assert len(a) == len(b) == 24
    for x, y in zip(a, b):
        assert (x is None) == (y is None)
        if x is not None:
            assert torch.equal(x["image"], y["image"])
            assert torch.equal(x["instances"].gt_boxes.tensor, y["instances"].gt_boxes.tensor)
            assert torch.equal(x["instances"].gt_classes, y["instances"].gt_classes)
    assert any(x is not None and z is not None and not torch.equal(x["image"], z["image"]) for x, z in zip(a, c))


class _Reject(T.Augmentation):
    def __call__(self, aug_input):
        raise SampleRejected("test")


def test_rejected_sample_maps_to_none(tmp_path):
    d = _write_images(tmp_path, n=1)[0]
    assert RTMDetDatasetMapper([_Reject()])(d) is None
    with pytest.raises(FileNotFoundError, match="image_id=0"):
        RTMDetDatasetMapper([])({**d, "file_name": str(tmp_path / "missing.png")})


@pytest.mark.parametrize("stage", [1, 2])
def test_recipe_keeps_boxes_on_their_objects(tmp_path, stage):
    """Without colour changes (HSV, MixUp), the centre of every output box shows its object's colour."""
    dicts = _write_images(tmp_path, n=10, seed=1)
    mapper = RTMDetDatasetMapper(_stage1(mixup=False) if stage == 1 else _stage2())
    outputs = [o for o in _map_all(mapper, dicts, seed=0, rounds=4) if o is not None]
    assert len(outputs) > 20
    checked = 0
    for out in outputs:
        img = out["image"].permute(1, 2, 0).numpy()
        assert img.shape == (128, 128, 3)
        inst = out["instances"]
        boxes = inst.gt_boxes.tensor.numpy()
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 128).all() and (boxes[:, 2] > boxes[:, 0]).all()
        for (x0, y0, x1, y1), c in zip(boxes, inst.gt_classes.tolist()):
            if x1 - x0 < 6 or y1 - y0 < 6:
                continue  # too thin to have an unblended centre after resizing
            px = img[int((y0 + y1) / 2), int((x0 + x1) / 2)].astype(int)
            assert np.abs(px - COLOURS[c]).max() <= 3, (px, c, (x0, y0, x1, y1))
            checked += 1
    assert checked > 40
    if stage == 1:  # mosaics: several source images per output
        assert max(len(o["instances"]) for o in outputs) > 3
