"""Tiny COCO-format fixture shared by the data tests (written into tmp_path)."""

import json
import os

import numpy as np
import pytest
from PIL import Image

# Three images: a landscape PNG, a portrait JPEG, and an annotation-free square PNG.
# Category ids are non-contiguous (1, 5, 90) and listed out of order in the json.
IMAGES = [
    {"id": 7, "file_name": "a.png", "width": 64, "height": 48},
    {"id": 3, "file_name": "sub/b.jpg", "width": 40, "height": 60},
    {"id": 11, "file_name": "c.png", "width": 50, "height": 50},
]
CATEGORIES = [{"id": 90, "name": "zebra"}, {"id": 1, "name": "apple"}, {"id": 5, "name": "bird"}]
ANNOTATIONS = [
    {"id": 1, "image_id": 7, "bbox": [10, 5, 20, 10], "category_id": 1, "iscrowd": 0, "area": 200},
    {"id": 2, "image_id": 7, "bbox": [30, 20, 10, 10], "category_id": 90, "iscrowd": 0, "area": 100},
    {"id": 3, "image_id": 7, "bbox": [0, 0, 5, 5], "category_id": 5, "iscrowd": 1, "area": 25},
    {"id": 4, "image_id": 3, "bbox": [5, 5, 10, 20], "category_id": 5, "iscrowd": 0, "area": 200},
    # unusable: negative width, and fully outside the 40x60 image
    {"id": 5, "image_id": 3, "bbox": [1, 1, -3, 4], "category_id": 5, "iscrowd": 0, "area": 12},
    {"id": 6, "image_id": 3, "bbox": [100, 100, 5, 5], "category_id": 1, "iscrowd": 0, "area": 25},
]


def write_coco_fixture(root, images=IMAGES, annotations=ANNOTATIONS, categories=CATEGORIES):
    """Write the images (gradient content) and instances json; returns (json_file, image_root)."""
    root = str(root)
    image_root = os.path.join(root, "images")
    for im in images:
        path = os.path.join(image_root, im["file_name"])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        h, w = im["height"], im["width"]
        arr = np.zeros((h, w, 3), dtype=np.uint8)
        arr[..., 0] = np.arange(w, dtype=np.uint8)[None, :] * 3
        arr[..., 1] = np.arange(h, dtype=np.uint8)[:, None] * 3
        arr[..., 2] = 200
        Image.fromarray(arr).save(path)
    json_file = os.path.join(root, "instances.json")
    with open(json_file, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return json_file, image_root


@pytest.fixture
def write_coco():
    return write_coco_fixture


@pytest.fixture
def coco_fixture(tmp_path):
    return write_coco_fixture(tmp_path)


@pytest.fixture
def register(request):
    """Register datasets under unique names and remove them after the test."""
    from d2lite.data import DatasetCatalog, MetadataCatalog

    names = []

    def _register(name, func=None, json_file=None, image_root=None, metadata=None):
        from d2lite.data.datasets import register_coco_instances

        name = f"{name}_{request.node.name}"
        if func is not None:
            DatasetCatalog.register(name, func)
            if metadata:
                MetadataCatalog.get(name).set(**metadata)
        else:
            register_coco_instances(name, metadata or {}, json_file, image_root)
        names.append(name)
        return name

    yield _register
    for n in names:
        DatasetCatalog.pop(n, None)
        MetadataCatalog.pop(n, None)
