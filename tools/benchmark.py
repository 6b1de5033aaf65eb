#!/usr/bin/env python
"""Measure the data loader, training-iteration and inference speed of a LazyConfig.

Examples::

    OMP_WAIT_POLICY=PASSIVE python tools/benchmark.py --config-file configs/quick/retinanet_R_18_FPN_shapes.py --task data train eval
    OMP_WAIT_POLICY=PASSIVE python tools/benchmark.py --config-file configs/quick/retinanet_R_18_FPN_shapes.py \\
        --task train --num-iter 50

``data`` times the train loader (batches/s and images/s), ``train`` times full
training iterations on batches held in memory (so data loading is excluded),
``eval`` times model inference on test images held in memory. Reported times
are medians over ``--num-iter`` iterations after ``--warmup`` iterations.
"""

import argparse
import itertools
import statistics
import sys
import time

import torch

from d2lite.config import instantiate
from d2lite.engine.lazy_train import ConfigError, build_model, load_config
from d2lite.utils.env import seed_all_rng


def _median_time(fn, num_iter: int, warmup: int) -> float:
    times = []
    for i in range(warmup + num_iter):
        start = time.perf_counter()
        fn()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def benchmark_data(cfg, args) -> str:
    loader = iter(instantiate(cfg.dataloader.train))
    batch_size = len(next(loader))
    t = _median_time(lambda: next(loader), args.num_iter, args.warmup)
    return f"data: {t:.4f} s/batch, {batch_size / t:.1f} images/s (batch {batch_size})"


def benchmark_train(cfg, args) -> str:
    model = build_model(cfg).train()
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    loader = iter(instantiate(cfg.dataloader.train))
    batches = list(itertools.islice(loader, 4))
    cycle = itertools.cycle(batches)
    from d2lite.utils.events import EventStorage

    def step():
        loss_dict = model(next(cycle))
        loss = sum(loss_dict.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    with EventStorage():
        t = _median_time(step, args.num_iter, args.warmup)
    return f"train: {t:.4f} s/iter, {len(batches[0]) / t:.2f} images/s (batch {len(batches[0])})"


def benchmark_eval(cfg, args) -> str:
    model = build_model(cfg).eval()
    batches = list(itertools.islice(iter(instantiate(cfg.dataloader.test)), 8))
    cycle = itertools.cycle(batches)
    with torch.no_grad():
        t = _median_time(lambda: model(next(cycle)), args.num_iter, args.warmup)
    return f"eval: {t:.4f} s/image ({1 / t:.2f} images/s)"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--task", choices=["data", "train", "eval"], nargs="+", default=["data", "train", "eval"])
    parser.add_argument("--num-iter", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="key=value overrides")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config_file, args.opts)
    except ConfigError as e:
        print(f"benchmark.py: error: {e}", file=sys.stderr)
        return 2
    seed_all_rng(cfg.train.get("seed", 0))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {cfg.train.device}")
    for task in args.task:
        print({"data": benchmark_data, "train": benchmark_train, "eval": benchmark_eval}[task](cfg, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
