"""Cost of exact resume (d2lite.data.stream + d2lite.engine.exact_resume).

Measures, on the CPU demo config (configs/quick/retinanet_R_18_FPN_shapes.py, batch 8 on
one process, aspect-ratio grouping):

  hook_1proc   : ExactResume.before_step + after_step per iteration, one process
                 (per-iteration RNG seeding, stream progress, model running state)
  hook_2proc   : the same with 2 gloo processes (adds the all-gather of a small int64 row)
  seeding_*    : per image, the sample's seed + seeding the global RNGs, restoring them after
                 the mapping in the main process (num_workers=0), not in a worker
  loader_*     : seconds per image of the train loader (num_workers=0): the TrainDataStream
                 vs detectron2's iterable path (ToIterableDataset + AspectRatioGroupedDataset)
  step         : one training step of the demo model (forward + backward + AdamW), batch 8
  checkpoint   : bytes of the ExactResume state vs the whole checkpoint (model + optimizer)

Run:  OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/exact_resume.py
"""

import io
import itertools
import logging
import operator
import os
import pickle
import socket
import statistics
import time
import types

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.utils.data as torchdata

from d2lite.config import instantiate
from d2lite.data import AspectRatioGroupedDataset, ToIterableDataset
from d2lite.data.stream import sample_seed, seeded_rngs
from d2lite.engine.exact_resume import ExactResume
from d2lite.engine.lazy_train import build_model, instantiate_train_loader, load_config
from d2lite.utils.events import EventStorage

CONFIG = "configs/quick/retinanet_R_18_FPN_shapes.py"
REPEATS = 5


def _median_us(fn, n):
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        for i in range(n):
            fn(i)
        times.append((time.perf_counter() - start) / n)
    return statistics.median(times) * 1e6


def _hook(model, stream):
    hook = ExactResume(None, stream, seed=0, stop_signals=())
    hook.trainer = types.SimpleNamespace(model=model, iter=0, max_iter=10**9, start_iter=0)
    model.loss_normalizer = 100.0
    model.load_running_state_dict({"loss_normalizer": 100.0})
    return hook


def _step_of_hook(hook):
    def step(i):
        hook.trainer.iter = i
        hook.before_step()
        hook.after_step()

    return step


def _gloo_worker(rank, port, results):
    os.environ["OMP_NUM_THREADS"] = "1"
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    cfg = load_config(CONFIG, ["dataloader.train.num_workers=0"])
    model = build_model(cfg)
    stream = instantiate_train_loader(cfg)
    hook = _hook(model, stream)
    step = _step_of_hook(hook)
    for i in range(50):
        step(i)
    dist.barrier()
    us = _median_us(step, 500)
    if rank == 0:
        results.put(us)
    dist.destroy_process_group()


def main():
    logging.getLogger("d2lite").setLevel(logging.WARNING)
    torch.manual_seed(0)
    cfg = load_config(CONFIG, ["dataloader.train.num_workers=0"])
    model = build_model(cfg)
    stream = instantiate_train_loader(cfg)
    rows = {}

    rows["hook_1proc"] = _median_us(_step_of_hook(_hook(model, stream)), 2000)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    mp.start_processes(_gloo_worker, nprocs=2, args=(port, results), start_method="spawn")
    rows["hook_2proc"] = results.get()

    def seeding(restore):
        def fn(i):
            with seeded_rngs(sample_seed(0, i), restore=restore):
                pass

        return fn

    rows["seeding_main"] = _median_us(seeding(True), 2000)
    rows["seeding_worker"] = _median_us(seeding(False), 2000)

    # the train loader, per image: the resumable stream vs the iterable path it replaced
    def per_image(loader, batches=30):
        it = iter(loader)
        next(it)
        start = time.perf_counter()
        for _ in range(batches):
            next(it)
        return (time.perf_counter() - start) / (batches * 8) * 1e6

    old = AspectRatioGroupedDataset(
        torchdata.DataLoader(
            ToIterableDataset(stream.dataset, stream.sampler, shard_chunk_size=8), collate_fn=operator.itemgetter(0)
        ),
        8,
    )
    loader_new, loader_old = [], []
    for _ in range(3):  # interleaved
        loader_new.append(per_image(instantiate_train_loader(cfg)))
        loader_old.append(per_image(old))
    rows["loader_stream"] = statistics.median(loader_new)
    rows["loader_iterable"] = statistics.median(loader_old)

    # a training step of the demo model
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    batches = list(itertools.islice(iter(instantiate_train_loader(cfg)), 6))
    model.train()

    def train_step(i):
        losses = sum(model(batches[i % len(batches)]).values())
        optimizer.zero_grad()
        losses.backward()
        optimizer.step()

    with EventStorage():
        train_step(0)
        rows["step"] = _median_us(train_step, 4)

    # checkpoint size: the ExactResume state (after a few batches, buckets non-empty) vs all
    used = instantiate_train_loader(cfg)
    used_iter = iter(used)
    for _ in range(5):
        next(used_iter)
    hook = _hook(model, used)
    hook.after_step()
    state = hook.state_dict()
    state["history"] = {
        name: [[0.5, i] for i in range(20)]
        for name in ("total_loss", "loss_cls", "loss_box_reg", "num_pos_anchors", "time", "data_time")
    }
    exact_bytes = len(pickle.dumps(state))
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buf)
    rows["checkpoint_exact_bytes"] = exact_bytes
    rows["checkpoint_total_bytes"] = buf.tell()

    for k, v in rows.items():
        print(f"{k:24s} {v:14.1f}")
    print(f"hook_1proc / step        {rows['hook_1proc'] / rows['step'] * 100:.4f} %")
    print(f"hook_2proc / step        {rows['hook_2proc'] / rows['step'] * 100:.4f} %")
    print(f"checkpoint increase      {exact_bytes / rows['checkpoint_total_bytes'] * 100:.4f} %")


if __name__ == "__main__":
    main()
