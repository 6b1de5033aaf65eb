"""Validation losses during training: :class:`ValidationLoss`, a hook that computes the
model's training losses on a validation loader without changing the training run.

Model-specific running state is left alone through one documented interface: during the
pass, every module of the model with a boolean ``update_running_state`` attribute has it
set to False (:class:`d2lite.modeling.meta_arch.dense_detector.DenseDetector` uses it for
RetinaNet's loss-normaliser EMA), and norm layers with running statistics are in eval mode.
"""

from __future__ import annotations

import logging
import random
import time
from contextlib import contextmanager
from typing import Dict, Iterable, Iterator, Mapping, Optional

import numpy as np
import torch

from d2lite.utils import comm
from d2lite.utils.events import EventStorage

from .train_loop import HookBase

__all__ = ["ValidationLoss"]

logger = logging.getLogger(__name__)


def _is_running_stats_norm(module: torch.nn.Module) -> bool:
    # _BatchNorm covers BatchNorm1d/2d/3d, nn.SyncBatchNorm and d2lite's SyncBatchNorm /
    # NaiveSyncBatchNorm; InstanceNorm keeps running stats only when asked to.
    return isinstance(module, torch.nn.modules.batchnorm._BatchNorm) or (
        isinstance(module, torch.nn.modules.instancenorm._InstanceNorm) and module.track_running_stats
    )


@contextmanager
def _validation_mode(model: torch.nn.Module) -> Iterator[None]:
    """Leave ``model`` in training mode (so it returns losses; modules the user put in
    eval mode stay so) but put its normalisation layers with running statistics and its
    dropout layers in eval mode; restore every module's training flag on exit, also
    after an exception."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        for m in model.modules():
            if _is_running_stats_norm(m) or isinstance(m, torch.nn.modules.dropout._DropoutNd):
                m.eval()
        yield
    finally:
        for m, training in flags:
            m.training = training


@contextmanager
def _running_state_frozen(model: torch.nn.Module) -> Iterator[None]:
    """Set ``update_running_state = False`` on every module of ``model`` that has that
    boolean attribute (the documented switch of model state kept outside parameters and
    buffers, e.g. RetinaNet's loss-normaliser EMA); restore the values on exit."""
    saved = [
        (m, m.update_running_state)
        for m in model.modules()
        if isinstance(getattr(m, "update_running_state", None), bool)
    ]
    try:
        for m, _ in saved:
            m.update_running_state = False
        yield
    finally:
        for m, value in saved:
            m.update_running_state = value


@contextmanager
def _preserved_rng_states() -> Iterator[None]:
    """Restore the torch (CPU and current CUDA device), numpy and python RNG states on
    exit, so that the validation pass (e.g. a DataLoader drawing its base seed, random
    augmentations) leaves the training run's random numbers unchanged."""
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


class ValidationLoss(HookBase):
    """
    Every ``period`` iterations and after the last iteration (never twice), compute the
    model's training losses on (up to ``num_batches`` batches of) a validation data
    loader and put them into the event storage, unsmoothed, as ``val_total_loss`` and
    ``val_<loss name>`` (so PeriodicWriter sends them to metrics.json, TensorBoard and
    the console). The values are logged at the iteration whose weights were validated,
    next to that iteration's training losses.

    The model must return its loss dict in training mode. The pass does not change the
    model or the training run: it runs under ``torch.no_grad()`` with the model in
    training mode but its BatchNorm-like layers (running statistics are used, not
    updated) and dropout layers in eval mode, restores every module's training flag
    afterwards, never touches gradients or the optimizer, restores the torch, numpy
    and python RNG states, and sets ``update_running_state = False`` on every module that
    has that attribute (RetinaNet's ``loss_normalizer`` EMA: each validation batch is
    normalised as if it were the next training batch, and the EMA is left unchanged). Scalars the model itself puts into the event storage
    during the pass (e.g. RetinaNet's ``num_pos_anchors``) go to a private storage,
    are averaged over the batches and logged as ``val_<name>``, so training scalars
    of the same name are not overwritten. Images the model puts are dropped.

    With DDP, the forward runs on the wrapped module (``trainer.model.module``), so no
    collective call happens inside it; each worker averages over its own batches and
    the means are averaged over workers (:func:`d2lite.utils.comm.reduce_dict`), then
    only the main process puts them. Every worker must register this hook with a loader
    of the same number of batches (e.g. ``build_detection_test_loader`` shards) and the
    model must put the same scalar names on every worker.
    """

    priority = "LOW"

    def __init__(self, period: int, data_loader: Iterable, num_batches: Optional[int] = None) -> None:
        """
        Args:
            period: validate after iterations ``i`` with ``(i + 1) % period == 0`` (and
                after the last iteration); must be >= 1 (to disable, don't register the hook).
            data_loader: a finite iterable of batches the model accepts in training mode
                (list of dicts with "instances"), e.g. ``build_detection_test_loader``
                over a dataset mapped with ``DatasetMapper(is_train=True, ...)``. A fresh
                iterator is made for each pass.
            num_batches: use at most this many batches per pass (>= 1); None: all of them.
        """
        if isinstance(period, bool) or not isinstance(period, int) or period < 1:
            raise ValueError(
                f"ValidationLoss: period must be an int >= 1, got {period!r}; "
                "to disable validation losses, don't register the hook (train.val_loss.period=0 in the tool)."
            )
        if num_batches is not None and (
            isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1
        ):
            raise ValueError(f"ValidationLoss: num_batches must be None or an int >= 1, got {num_batches!r}.")
        self._period = period
        self._data_loader = data_loader
        self._num_batches = num_batches

    def _compute(self) -> Dict[str, float]:
        """The mean over the validation batches of every loss, of their sum
        (``total_loss``) and of the scalars the model put; keys without ``val_``."""
        model = self.trainer.model
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        iteration = self.trainer.storage.iter
        sums: Dict[str, float] = {}
        counts: Dict[str, int] = {}
        num_batches = 0
        with _preserved_rng_states(), _validation_mode(model), _running_state_frozen(model), torch.no_grad():
            for batch in self._data_loader:
                if self._num_batches is not None and num_batches >= self._num_batches:
                    break
                # A private storage per batch catches what the model puts (num_pos_anchors, images).
                with EventStorage(iteration) as private:
                    loss_dict = model(batch)
                if isinstance(loss_dict, torch.Tensor):
                    loss_dict = {"total_loss": loss_dict}
                if not isinstance(loss_dict, Mapping):
                    raise TypeError(
                        "ValidationLoss: in training mode the model must return a dict of losses, got "
                        f"{type(loss_dict).__name__} (iteration {iteration})."
                    )
                values = {k: float(v) for k, v in loss_dict.items()}
                values.setdefault("total_loss", sum(values.values()))
                for k, (v, _) in private.latest().items():
                    values.setdefault(k, v)
                for k, v in values.items():
                    sums[k] = sums.get(k, 0.0) + v
                    counts[k] = counts.get(k, 0) + 1
                num_batches += 1
        if num_batches == 0:
            raise ValueError(f"ValidationLoss: the validation data loader yielded no batch (iteration {iteration}).")
        # On the model's device: reduce_dict's collective must work with NCCL too.
        device = next(iter(model.parameters()), torch.empty(0)).device
        means = {k: torch.tensor(sums[k] / counts[k], dtype=torch.float64, device=device) for k in sums}
        return {k: float(v) for k, v in comm.reduce_dict(means).items()}

    def _do_validation(self) -> None:
        start = time.perf_counter()
        results = self._compute()
        if comm.is_main_process():
            self.trainer.storage.put_scalars(smoothing_hint=False, **{f"val_{k}": v for k, v in results.items()})
            logger.info(
                "Validation losses after iteration {} ({:.1f} s): {}".format(
                    self.trainer.iter,
                    time.perf_counter() - start,
                    ", ".join(f"val_{k}={v:.4f}" for k, v in sorted(results.items())),
                )
            )

    def after_step(self) -> None:
        next_iter = self.trainer.iter + 1
        if next_iter % self._period == 0 or next_iter == self.trainer.max_iter:
            self._do_validation()
