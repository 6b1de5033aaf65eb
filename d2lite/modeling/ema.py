"""Exponential moving average (EMA) of a model's weights, mmengine convention.

``ModelEMA`` matches ``mmengine.model.ExponentialMovingAverage`` /
``mmdet.models.layers.ExpMomentumEMA``: the *momentum* is the weight of the new
parameters, ``ema = (1 - m) * ema + m * param``, and the state dict has the same keys
(``"steps"`` and ``"module.<param name>"``), so an mmdetection ``ema_state_dict`` loads
into it. mmdetection's RTMDet uses ExpMomentumEMA, i.e.::

    gamma = 2000
    ModelEMA(model, momentum=0.0002, update_buffers=True,
             momentum_fn=lambda step: (1 - 0.0002) * math.exp(-(1 + step) / gamma) + 0.0002)
"""

from __future__ import annotations

import copy
import itertools
import weakref
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, Optional

import torch
from torch import nn
from torch.nn.parallel import DataParallel, DistributedDataParallel

__all__ = ["ModelEMA"]


def _unwrap(model: nn.Module) -> nn.Module:
    if isinstance(model, (DistributedDataParallel, DataParallel)):
        return model.module
    return model


class ModelEMA(nn.Module):
    """
    Keeps ``self.module``, an averaged copy of a model.

    On :meth:`update` number k (counting from 0, stored in ``self.steps``):

    * k == 0: the averaged weights are set to a copy of the model's weights.
    * otherwise, if ``step % interval == 0``: every floating-point parameter (and, with
      ``update_buffers=True``, every floating-point buffer) becomes
      ``(1 - m) * ema + m * param`` with ``m = momentum_fn(step)`` if given, else
      ``momentum``; integer buffers (e.g. BatchNorm's ``num_batches_tracked``) are copied.
    * with ``update_buffers=False`` all buffers (e.g. BN running stats) are copied from
      the model at every update.

    Being an ``nn.Module``, ``state_dict()`` holds ``"steps"`` and the averaged model's
    state under ``"module."``; pass it to the checkpointer as ``ema=`` to save/resume it.
    """

    def __init__(
        self,
        model: nn.Module,
        momentum: float = 0.0002,
        momentum_fn: Optional[Callable[[int], float]] = None,
        update_buffers: bool = False,
        interval: int = 1,
    ) -> None:
        """
        Args:
            model: the model to average (a DistributedDataParallel wrapper is unwrapped).
                It is deep-copied; the copy has ``requires_grad=False``.
            momentum: weight of the new parameters in each update, in (0, 1).
                Defaults to 0.0002.
            momentum_fn: optional function ``step -> momentum`` that overrides
                ``momentum`` (e.g. mmdet's ExpMomentumEMA ramp). Defaults to None.
            update_buffers: if True, floating-point buffers are averaged like
                parameters; if False they are copied from the model. Defaults to False.
            interval: average only when ``step % interval == 0``. Defaults to 1.
        """
        super().__init__()
        if not 0.0 < momentum < 1.0:
            raise ValueError(f"ModelEMA: momentum must be in (0, 1), got {momentum}.")
        if interval < 1:
            raise ValueError(f"ModelEMA: interval must be >= 1, got {interval}.")
        self.module = copy.deepcopy(_unwrap(model)).requires_grad_(False)
        self.momentum = momentum
        self.momentum_fn = momentum_fn
        self.update_buffers = update_buffers
        self.interval = interval
        self.register_buffer("steps", torch.tensor(0, dtype=torch.long, device=self._device()))

    def _device(self) -> torch.device:
        for t in itertools.chain(self.module.parameters(), self.module.buffers()):
            return t.device
        return torch.device("cpu")

    def _averaged_tensors(self, model: nn.Module) -> Dict[str, tuple]:
        """name -> (ema tensor, source tensor) for everything that is averaged."""
        if self.update_buffers:
            avg = self.module.state_dict(keep_vars=True)
            src = model.state_dict(keep_vars=True)
        else:
            avg = dict(self.module.named_parameters())
            src = dict(model.named_parameters())
        missing = set(avg) ^ set(src)
        if missing:
            raise KeyError(
                f"ModelEMA.update: the model's tensors do not match the EMA copy; differing "
                f"names: {sorted(missing)[:10]}. Pass the same model the EMA was built from."
            )
        return {k: (avg[k], src[k]) for k in avg}

    def _update_plan(self, model: nn.Module) -> tuple:
        """The tensors of one update, grouped once per source model and reused by every
        later :meth:`update` (no state dicts rebuilt per step): float (ema, source) pairs by
        (device, dtype) for one fused lerp each, tensors to copy, and the buffers kept in
        sync when ``update_buffers`` is False. Rebuilt when another model object is passed;
        a model whose parameters or buffers are replaced (not updated in place) after the
        first update needs a new ModelEMA."""
        cached = self.__dict__.get("_plan")
        if cached is not None and cached[0]() is model:
            return cached[1]
        groups: Dict[tuple, tuple] = {}
        copies = []
        for p_avg, p_src in self._averaged_tensors(model).values():
            if p_avg.dtype.is_floating_point and p_src.dtype == p_avg.dtype and p_src.device == p_avg.device:
                avg_list, src_list = groups.setdefault((p_avg.device, p_avg.dtype), ([], []))
                avg_list.append(p_avg.data)
                src_list.append(p_src.data)
            else:
                copies.append((p_avg, p_src))
        synced = [] if self.update_buffers else list(zip(self.module.buffers(), model.buffers()))
        plan = (list(groups.values()), copies, synced)
        self.__dict__["_plan"] = (weakref.ref(model), plan)
        return plan

    def __getstate__(self) -> Dict:
        state = dict(self.__dict__)
        state.pop("_plan", None)  # holds a weak reference; rebuilt on the next update
        return state

    def get_momentum(self, step: int) -> float:
        """The momentum used at ``step``."""
        m = float(self.momentum_fn(step)) if self.momentum_fn is not None else self.momentum
        if not 0.0 <= m <= 1.0:
            raise ValueError(f"ModelEMA: momentum_fn({step}) = {m} is outside [0, 1].")
        return m

    @torch.no_grad()
    def update(self, model: nn.Module, step: Optional[int] = None) -> None:
        """
        Update the averaged weights from ``model``.

        Args:
            model: the trained model (DDP wrapper is unwrapped).
            step: the training iteration; used for ``interval`` and ``momentum_fn``.
                Defaults to ``self.steps`` (the number of previous updates).
        """
        model = _unwrap(model)
        num_updates = int(self.steps)
        step = num_updates if step is None else int(step)
        groups, copies, synced = self._update_plan(model)
        if num_updates == 0:
            for avg_list, src_list in groups:
                torch._foreach_copy_(avg_list, src_list)
            for p_avg, p_src in copies:
                p_avg.data.copy_(p_src.data)
        elif step % self.interval == 0:
            m = self.get_momentum(step)
            for avg_list, src_list in groups:
                torch._foreach_lerp_(avg_list, src_list, m)
            for p_avg, p_src in copies:
                src = p_src.data.to(p_avg.device)
                if p_avg.dtype.is_floating_point:
                    p_avg.data.lerp_(src.to(p_avg.dtype), m)
                else:
                    p_avg.data.copy_(src)
        # keep the buffers (e.g. BN statistics) in sync with the source model
        for b_avg, b_src in synced:
            b_avg.data.copy_(b_src.data.to(b_avg.device))
        self.steps += 1

    @contextmanager
    def apply_to(self, model: nn.Module) -> Iterator[nn.Module]:
        """
        Context manager that loads the EMA weights (parameters and buffers) into
        ``model`` and restores the model's own weights on exit (also on exception)::

            with ema.apply_to(model):
                results = inference_on_dataset(model, loader, evaluator)
        """
        target = _unwrap(model)
        backup = {k: v.detach().clone() for k, v in target.state_dict().items()}
        try:
            target.load_state_dict(self.module.state_dict())
            yield model
        finally:
            target.load_state_dict(backup)

    def forward(self, *args, **kwargs):
        """Run the averaged model."""
        return self.module(*args, **kwargs)
