import json
import os

import numpy as np
import pytest

from d2lite.data.datasets import shapes_eval
from d2lite.data.datasets.shapes import generate_shapes, render_shapes_image
from d2lite.data.datasets.shapes_eval import render_shapes_eval_image


def test_deterministic_and_within_its_ranges():
    a, b = render_shapes_eval_image(7, 3), render_shapes_eval_image(7, 3)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.boxes, b.boxes)
    assert not np.array_equal(render_shapes_eval_image(8, 3).image.shape, a.image.shape) or not np.array_equal(
        render_shapes_eval_image(8, 3).image, a.image
    )
    sizes, counts, aspect = [], [], []
    for i in range(30):
        s = render_shapes_eval_image(7, i)
        h, w = s.image.shape[:2]
        assert 160 <= h <= 320 and 160 <= w <= 320 and s.image.dtype == np.uint8
        assert 1 <= len(s.category_ids) <= 7 and set(s.category_ids) <= {1, 2, 3}
        counts.append(len(s.category_ids))
        sizes += list(s.sizes)
        for box, mask, full in zip(s.boxes, s.masks, s.full_areas):
            ys, xs = np.nonzero(mask)
            # tight XYWH box of the visible pixels, at least 40% of the object visible
            assert list(box) == [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
            assert mask.sum() >= 0.4 * full
            aspect.append(box[2] / box[3])
    assert min(sizes) >= 10 and max(sizes) <= 110 and max(sizes) > 90  # larger objects than shapes
    assert max(counts) > 1
    assert min(aspect) < 0.8 and max(aspect) > 1.25


def test_not_the_shapes_generator():
    """Same (seed, index), other drawing code: other sizes, pixels and objects."""
    for i in range(5):
        a, b = render_shapes_eval_image(1, i), render_shapes_image(1, i)
        assert a.image.shape != b.image.shape or not np.array_equal(a.image, b.image)


def test_generated_split_and_registration(tmp_path):
    json_file, image_root = generate_shapes(
        str(tmp_path), "eval", 4, 7, render=render_shapes_eval_image, version=shapes_eval.GENERATOR_VERSION
    )
    with open(json_file) as f:
        coco = json.load(f)
    assert coco["info"]["generator_version"] == shapes_eval.GENERATOR_VERSION
    assert len(os.listdir(image_root)) == 4
    first = render_shapes_eval_image(7, 0)
    anns = [a for a in coco["annotations"] if a["image_id"] == 1]
    assert [a["category_id"] for a in anns] == first.category_ids
    assert np.allclose([a["bbox"] for a in anns], first.boxes)
    # a split on disk made by another generator version is refused, naming the file
    with pytest.raises(ValueError, match="eval.json"):
        generate_shapes(str(tmp_path), "eval", 4, 7, render=render_shapes_eval_image, version=99)


def test_register_shapes_eval_is_lazy(tmp_path):
    from d2lite.data import DatasetCatalog, MetadataCatalog

    DatasetCatalog.remove("shapes_eval")
    MetadataCatalog.remove("shapes_eval")
    try:
        shapes_eval.register_shapes_eval(str(tmp_path))
        assert not (tmp_path / "shapes_eval").exists()
        meta = MetadataCatalog.get("shapes_eval")
        assert meta.thing_classes == ["circle", "square", "triangle"] and meta.evaluator_type == "coco"
        assert meta.json_file == str(tmp_path / "shapes_eval" / "eval.json")
    finally:
        DatasetCatalog.remove("shapes_eval")
        MetadataCatalog.remove("shapes_eval")
        shapes_eval.register_shapes_eval()  # back to the default registration
