"""Data pipeline speed: read_image, DatasetMapper (COCO train augmentations) and the
train loader, on synthetic 640x480 JPEGs with 5 boxes each.

Run: OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/data_pipeline.py
Prints median milliseconds per image over 5 repeats (results in benchmarks/data_pipeline.md).
"""

import itertools
import os
import statistics
import tempfile
import time

import numpy as np
from PIL import Image

from d2lite.data import DatasetMapper, build_detection_train_loader
from d2lite.data import transforms as T
from d2lite.data.detection_utils import read_image
from d2lite.data.samplers import TrainingSampler
from d2lite.structures import BoxMode

NUM_IMAGES = 24
REPEATS = 5


def make_dataset(root: str):
    rng = np.random.default_rng(0)
    dicts = []
    for i in range(NUM_IMAGES):
        path = os.path.join(root, f"{i}.jpg")
        Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(path, quality=90)
        annos = [
            {
                "bbox": [float(x), float(y), 50.0, 40.0],
                "bbox_mode": BoxMode.XYWH_ABS,
                "category_id": int(c),
                "iscrowd": 0,
            }
            for x, y, c in zip(rng.integers(0, 580, 5), rng.integers(0, 430, 5), rng.integers(0, 80, 5))
        ]
        dicts.append({"file_name": path, "height": 480, "width": 640, "image_id": i, "annotations": annos})
    return dicts


def timed(fn) -> float:
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0 / NUM_IMAGES)
    return statistics.median(times)


def main() -> None:
    np.random.seed(0)
    with tempfile.TemporaryDirectory() as root:
        dicts = make_dataset(root)
        coco_augs = [
            T.ResizeShortestEdge((640, 672, 704, 736, 768, 800), max_size=1333, sample_style="choice"),
            T.RandomFlip(horizontal=True),
        ]
        small_augs = [T.ResizeShortestEdge((160, 192, 224), max_size=384, sample_style="choice"), T.RandomFlip()]
        mapper = DatasetMapper(True, augmentations=coco_augs, image_format="BGR")
        small_mapper = DatasetMapper(True, augmentations=small_augs, image_format="BGR")
        results = {
            "read_image (640x480 JPEG, BGR)": timed(lambda: [read_image(d["file_name"], "BGR") for d in dicts]),
            "DatasetMapper, COCO train augs (short edge 640-800)": timed(lambda: [mapper(d) for d in dicts]),
            "DatasetMapper, shapes demo augs (short edge 160-224)": timed(lambda: [small_mapper(d) for d in dicts]),
        }
        for workers in (0, 2):
            loader = build_detection_train_loader(
                dicts,
                mapper=mapper,
                sampler=TrainingSampler(len(dicts), seed=0),
                total_batch_size=2,
                aspect_ratio_grouping=True,
                num_workers=workers,
            )
            it = iter(loader)
            next(it)  # start workers outside the timing

            def run(it=it):
                for _ in itertools.islice(it, NUM_IMAGES // 2):
                    pass

            results[f"train loader, COCO augs, batch 2, num_workers={workers}"] = timed(run)
    for k, v in results.items():
        print(f"{k:60s} {v:8.2f} ms/image")


if __name__ == "__main__":
    main()
