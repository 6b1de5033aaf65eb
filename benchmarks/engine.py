"""Per-iteration overhead of the d2lite training engine (trainer + hooks + writers).

A tiny model (Linear 16->1, batch 8) makes the model's own cost negligible, so the
difference between the variants is what the engine adds per iteration:

  bare      : a hand-written loop (next batch, forward, zero_grad, backward, step)
  trainer   : SimpleTrainer, no hooks (adds metric gathering + NaN check + EventStorage)
  default   : SimpleTrainer + IterationTimer, LRScheduler, PeriodicWriter(default_writers,
              period=20) (console + metrics.json + TensorBoard)

Run:  OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/engine.py
"""

import logging
import statistics
import tempfile
import time

import torch
from torch import nn

from d2lite.engine import SimpleTrainer, default_writers, hooks

ITERS = 2000
REPEATS = 5


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 1)

    def forward(self, batch):
        x, y = batch
        return {"loss_mse": ((self.fc(x) - y) ** 2).mean(), "loss_l1": (self.fc(x) - y).abs().mean()}


def loader():
    x, y = torch.randn(8, 16), torch.randn(8, 1)
    while True:
        yield x, y


def run_bare():
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    it = iter(loader())
    start = time.perf_counter()
    for _ in range(ITERS):
        data = next(it)
        losses = sum(model(data).values())
        opt.zero_grad()
        losses.backward()
        opt.step()
    return (time.perf_counter() - start) / ITERS


def run_trainer(with_hooks: bool):
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    trainer = SimpleTrainer(model, loader(), opt)
    with tempfile.TemporaryDirectory() as d:
        if with_hooks:
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1000)
            trainer.register_hooks(
                [
                    hooks.IterationTimer(),
                    hooks.LRScheduler(scheduler=sched),
                    hooks.PeriodicWriter(default_writers(d, ITERS), period=20),
                ]
            )
        start = time.perf_counter()
        trainer.train(0, ITERS)
        return (time.perf_counter() - start) / ITERS


def main():
    torch.manual_seed(0)
    logging.getLogger("d2lite").setLevel(logging.WARNING)  # keep the console printer quiet
    variants = {"bare": run_bare, "trainer": lambda: run_trainer(False), "default": lambda: run_trainer(True)}
    results = {k: [] for k in variants}
    for _ in range(REPEATS):
        for name, fn in variants.items():  # interleaved so drift hits all variants alike
            results[name].append(fn())
    base = statistics.median(results["bare"])
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {ITERS} iterations x {REPEATS} repeats")
    print("| variant | median us/iter | ratio to bare |")
    print("|---|---|---|")
    for name, vals in results.items():
        med = statistics.median(vals)
        print(f"| {name} | {med * 1e6:.1f} | {med / base:.2f} |")


if __name__ == "__main__":
    main()
