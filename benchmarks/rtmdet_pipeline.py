"""RTMDet training data pipelines: images per second per data-loader worker.

Maps synthetic COCO-like samples (640x480 JPEGs, 7 boxes each, as COCO's mean of 7.3)
in this process with one torch thread, as one data-loader worker does, through:

* stage 1: the RTMDet-tiny COCO recipe (CachedMosaic, RandomResize of 1280x1280 by
  0.5-2.0, RandomCrop 640, YOLOXHSVRandomAug, RandomFlip, Pad 640, CachedMixUp);
* stage 2: RandomResize of 640x640 by 0.5-2.0, RandomCrop, HSV, flip, Pad;
* plain: the pipeline the COCO configs had before (d2lite's DatasetMapper with
  ResizeScale 0.5-2.0 of 640, FixedSizeCrop 640 padded with 114, RandomFlip);
* stage 1 in d2lite's training stream (the caches are the stream's recent samples,
  computed when first needed and memoised per worker): as the only worker, and as
  worker 0 of 4 at batch 32 (it maps batches 0, 4, 8, ...; the entries of the positions
  the other workers mapped are computed again here).

The three pipelines alternate in each round (the machine may be shared); a rejected
sample (a crop without boxes) is retried as d2lite's MapDataset does and counts in the
time of the delivered one. Rates are given per wall-clock second and per CPU second of
this process (``time.process_time``; one thread, so on an idle machine both agree, and
on a shared one the CPU figure is the one that carries over). Also prints the CPU time
of each stage-1 step.

Run: OMP_WAIT_POLICY=PASSIVE python benchmarks/rtmdet_pipeline.py [--rounds 5 --images 64]
Results: benchmarks/rtmdet.md.
"""

import argparse
import collections
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# this folder's rtmdet.py must not shadow the rtmdet package
sys.path.insert(0, os.path.join(REPO, "projects", "RTMDet"))

from d2lite.config import LazyConfig, instantiate  # noqa: E402
from d2lite.data import DatasetFromList, DatasetMapper, MapDataset  # noqa: E402
from d2lite.data import transforms as T  # noqa: E402
from d2lite.data.samplers import TrainingSampler  # noqa: E402
from d2lite.data.stream import _SeededSamples  # noqa: E402
from d2lite.structures import BoxMode  # noqa: E402

CONFIG = os.path.join(REPO, "projects", "RTMDet", "configs", "rtmdet_tiny_8xb32-300e_coco.py")


def make_dataset(root: str, num_images: int):
    """640x480 JPEGs of smooth gradients with 7 filled rectangles (boxes 16-300 px, log-uniform)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:480, 0:640]
    dicts = []
    for i in range(num_images):
        img = np.stack([(xx * rng.uniform(0.1, 0.4) + yy * rng.uniform(0.1, 0.4) + rng.uniform(0, 80)) % 256] * 3, -1)
        img = img.astype(np.uint8)
        annos = []
        for _ in range(7):
            w, h = np.exp(rng.uniform(np.log(16), np.log(300), 2)).astype(int)
            x, y = int(rng.integers(0, 640 - w)), int(rng.integers(0, 480 - h))
            img[y : y + h, x : x + w] = rng.integers(0, 256, 3)
            annos.append(
                {"bbox": [x, y, int(w), int(h)], "bbox_mode": BoxMode.XYWH_ABS, "category_id": int(rng.integers(80))}
            )
        path = os.path.join(root, f"{i}.jpg")
        Image.fromarray(img).save(path, quality=90)
        dicts.append({"file_name": path, "height": 480, "width": 640, "image_id": i, "annotations": annos})
    return dicts


class _Timed(T.Augmentation):
    """Wraps an augmentation and accumulates its time."""

    def __init__(self, aug, totals):
        self.aug, self.totals = aug, totals

    def __call__(self, aug_input):
        start = time.process_time()
        try:
            return self.aug(aug_input)
        finally:
            self.totals[type(self.aug).__name__] += time.process_time() - start


class _StreamWorker:
    """The samples a TrainDataStream's worker ``worker`` of ``num_workers`` maps, in order
    (batches of ``batch_size``, dealt round-robin to the workers), as ``ds[i]`` for i = 0, 1, ..."""

    def __init__(self, dicts, mapper, worker: int = 0, num_workers: int = 1, batch_size: int = 32):
        sampler = TrainingSampler(len(dicts), seed=0)
        self.samples = _SeededSamples(MapDataset(DatasetFromList(dicts, copy=False), mapper), 0, sampler, 0, 1)
        self.sampler_iter = iter(sampler)
        self.worker, self.num_workers, self.batch_size = worker, num_workers, batch_size
        self.position = 0

    def __getitem__(self, i):
        while (self.position // self.batch_size) % self.num_workers != self.worker:
            next(self.sampler_iter)
            self.position += 1
        key = (self.position, int(next(self.sampler_iter)))
        self.position += 1
        return self.samples[key][1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=64, help="samples mapped per pipeline and round")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in a data-loader worker

    cfg = LazyConfig.load(CONFIG)
    stage1 = instantiate(cfg.dataloader.train.mapper)
    totals = collections.defaultdict(float)
    stage1.augmentations.augs = [_Timed(a, totals) for a in stage1.augmentations.augs]
    mappers = {
        "stage 1": stage1,
        "stage 2": instantiate(cfg.dataloader.train_stage2.mapper),
        "plain": DatasetMapper(
            is_train=True,
            augmentations=[
                T.ResizeScale(min_scale=0.5, max_scale=2.0, target_height=640, target_width=640),
                T.FixedSizeCrop(crop_size=(640, 640), pad=True, pad_value=114.0),
                T.RandomFlip(horizontal=True),
            ],
            image_format="BGR",
        ),
    }
    with tempfile.TemporaryDirectory() as root:
        dicts = make_dataset(root, args.images)
        datasets = {name: MapDataset(DatasetFromList(dicts, copy=False), m) for name, m in mappers.items()}
        datasets["stage 1, stream, 1 worker"] = _StreamWorker(dicts, instantiate(cfg.dataloader.train.mapper))
        datasets["stage 1, stream, worker 0 of 4"] = _StreamWorker(
            dicts, instantiate(cfg.dataloader.train.mapper), worker=0, num_workers=4
        )
        np.random.seed(0)
        for ds in datasets.values():  # warm-up: fills the Mosaic / MixUp caches
            for i in range(50):
                ds[i % len(dicts)]
        totals.clear()
        rates, cpu_rates = collections.defaultdict(list), collections.defaultdict(list)
        for r in range(args.rounds):
            for name, ds in datasets.items():
                start, cpu_start = time.perf_counter(), time.process_time()
                for i in range(args.images):
                    out = ds[i]
                    assert out["image"].shape[-2:] == (640, 640)
                rates[name].append(args.images / (time.perf_counter() - start))
                cpu_rates[name].append(args.images / (time.process_time() - cpu_start))
            print(f"round {r + 1}: " + ", ".join(f"{n} {rates[n][-1]:.1f} img/s" for n in datasets))
    print("\nimages per second per worker (median over rounds): wall clock | CPU time")
    for name in datasets:
        med, cpu = statistics.median(rates[name]), statistics.median(cpu_rates[name])
        print(f"  {name:30s} {med:6.1f} img/s | {cpu:6.1f} img/s  ({1000 / cpu:.1f} CPU ms per image)")
    mapped = args.images * args.rounds
    print("\nstage 1, CPU ms per sample by step (mean; rejected samples included):")
    for name, t in totals.items():
        print(f"  {name:18s} {1000 * t / mapped:6.1f}")


if __name__ == "__main__":
    main()
