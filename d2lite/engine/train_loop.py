"""The training loop: :class:`TrainerBase` (iterations + hooks), :class:`SimpleTrainer`
(one optimizer step per iteration) and :class:`AMPTrainer` (mixed precision).

Same names and semantics as ``detectron2.engine.train_loop``. Hooks run in the order
they were registered, at these points::

    hook.before_train()
    for iter in range(start_iter, max_iter):
        hook.before_step()
        trainer.run_step()       # forward, backward, hook.after_backward(), optimizer step
        hook.after_step()
    iter += 1
    hook.after_train()           # always called, also when training raised
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
import weakref
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

import numpy as np
import torch
from torch.nn.parallel import DataParallel, DistributedDataParallel

from d2lite.checkpoint.compatibility import check_optimizer_state
from d2lite.utils import comm
from d2lite.utils.events import EventStorage, get_event_storage

__all__ = ["HookBase", "TrainerBase", "SimpleTrainer", "AMPTrainer"]

logger = logging.getLogger(__name__)


class HookBase:
    """
    Base class for hooks that can be registered with :class:`TrainerBase`.

    Each hook can implement 5 methods. The way they are called is shown in the module
    docstring. ``after_backward`` runs between ``loss.backward()`` and
    ``optimizer.step()`` (gradients are available and, with AMP, already unscaled).

    Hooks access the trainer through ``self.trainer`` (a weak proxy set by
    :meth:`TrainerBase.register_hooks`); ``self.trainer.iter`` is the iteration
    being run, ``self.trainer.storage`` the :class:`EventStorage`.

    A hook with state to resume (e.g. an LR scheduler) implements ``state_dict`` /
    ``load_state_dict``; it is saved under its class' qualified name in
    ``trainer.state_dict()["hooks"]``.

    ``priority`` (a name of :class:`d2lite.engine.priority.Priority` or an int in
    [0, 100], default ``"NORMAL"``) orders hooks where a hook list is composed from
    several sources (:func:`d2lite.engine.lazy_train.default_hooks`);
    :meth:`TrainerBase.register_hooks` itself keeps the order it is given, as detectron2's.
    """

    priority: Any = "NORMAL"

    trainer: TrainerBase = None  # type: ignore[assignment]
    """A weak reference to the trainer object. Set by the trainer when the hook is registered."""

    def before_train(self) -> None:
        """Called before the first iteration."""

    def after_train(self) -> None:
        """Called after the last iteration, also when training stopped with an exception
        (then ``self.trainer.iter < self.trainer.max_iter``)."""

    def before_step(self) -> None:
        """Called before each iteration."""

    def after_backward(self) -> None:
        """Called after the backward pass of each iteration, before the optimizer step."""

    def after_step(self) -> None:
        """Called after each iteration."""

    def state_dict(self) -> Dict[str, Any]:
        """Hooks are stateless by default; return a non-empty dict to be checkpointed."""
        return {}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restore the state returned by :meth:`state_dict`."""


class TrainerBase:
    """
    Base class for iterative trainer with hooks.

    Attributes:
        iter (int): the current iteration.
        start_iter (int): the iteration to start with. By convention the minimum
            possible value is 0.
        max_iter (int): the iteration to end training (exclusive).
        storage (EventStorage): the EventStorage that's opened during training.
    """

    def __init__(self) -> None:
        self._hooks: List[HookBase] = []
        self.iter: int = 0
        self.start_iter: int = 0
        self.max_iter: int
        self.storage: EventStorage

    def register_hooks(self, hooks: Iterable[Optional[HookBase]]) -> None:
        """
        Register hooks to the trainer. The hooks are executed in the order they are
        registered.

        Args:
            hooks: list of hooks; None entries are ignored.
        """
        hooks = [h for h in hooks if h is not None]
        for h in hooks:
            if not isinstance(h, HookBase):
                raise TypeError(f"register_hooks: {h!r} is not a HookBase instance.")
        # Hook states are saved under the hook's class name: two stateful hooks of one
        # class would overwrite each other's state in checkpoints.
        stateful = [type(h).__qualname__ for h in self._hooks + hooks if type(h).state_dict is not HookBase.state_dict]
        duplicates = sorted({n for n in stateful if stateful.count(n) > 1})
        if duplicates:
            raise ValueError(
                f"register_hooks: more than one stateful hook of type {duplicates}; their "
                "states would overwrite each other in trainer.state_dict(). Register one, or "
                "subclass to give each a distinct class name."
            )
        for h in hooks:
            # A weak proxy avoids a reference cycle (trainer -> hooks -> trainer) that would
            # keep the model alive until the garbage collector runs.
            h.trainer = weakref.proxy(self)
        self._hooks.extend(hooks)

    def train(self, start_iter: int, max_iter: int) -> None:
        """
        Run iterations ``start_iter, ..., max_iter - 1``.

        Args:
            start_iter: first iteration (``checkpoint["iteration"] + 1`` when resuming).
            max_iter: end of training (exclusive).

        On an exception the error is logged, ``after_train`` hooks still run (e.g. to
        close writers) and the exception is re-raised.
        """
        logger.info(f"Starting training from iteration {start_iter}")

        self.iter = self.start_iter = start_iter
        self.max_iter = max_iter

        with EventStorage(start_iter) as self.storage:
            try:
                self.before_train()
                for self.iter in range(start_iter, max_iter):
                    self.before_step()
                    self.run_step()
                    self.after_step()
                # self.iter == max_iter tells `after_train` that the training
                # successfully finished (it is < max_iter after an exception).
                self.iter += 1
            except Exception:
                logger.exception(f"Exception during training at iteration {self.iter}:")
                raise
            finally:
                self.after_train()

    def before_train(self) -> None:
        for h in self._hooks:
            h.before_train()

    def after_train(self) -> None:
        self.storage.iter = self.iter
        for h in self._hooks:
            h.after_train()

    def before_step(self) -> None:
        # Maintain the invariant that storage.iter == trainer.iter for the entire step.
        self.storage.iter = self.iter
        for h in self._hooks:
            h.before_step()

    def after_backward(self) -> None:
        for h in self._hooks:
            h.after_backward()

    def after_step(self) -> None:
        for h in self._hooks:
            h.after_step()

    def run_step(self) -> None:
        raise NotImplementedError

    def state_dict(self) -> Dict[str, Any]:
        """Returns: {"iteration": iter, "hooks": {hook class qualname: hook state}}
        ("hooks" only when some hook has state)."""
        ret: Dict[str, Any] = {"iteration": self.iter}
        hooks_state: Dict[str, Any] = {}
        for h in self._hooks:
            sd = h.state_dict()
            if sd:
                hooks_state[type(h).__qualname__] = sd
        if hooks_state:
            ret["hooks"] = hooks_state
        return ret

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore ``iter`` and the hooks' states from :meth:`state_dict`'s output."""
        self.iter = state_dict["iteration"]
        for key, value in state_dict.get("hooks", {}).items():
            for h in self._hooks:
                if type(h).__qualname__ == key:
                    h.load_state_dict(value)
                    break
            else:
                logger.warning(f"Cannot find the hook '{key}', its state_dict is ignored.")


class SimpleTrainer(TrainerBase):
    """
    A simple trainer for the most common type of task: single-cost single-optimizer
    single-data-source iterative optimization, optionally using data-parallelism.
    It assumes that every step, you:

    1. Compute the loss with a data from the data_loader.
    2. Compute the gradients with the above loss.
    3. Update the model with the optimizer.

    All other tasks during training (checkpointing, logging, evaluation, LR schedule)
    are maintained by hooks, which can be registered by :meth:`TrainerBase.register_hooks`.

    With ``async_write_metrics=True`` (as in detectron2) the losses are gathered and put
    into the event storage by a background thread (``concurrent_executor``, one worker,
    so in iteration order) while the optimizer step runs. The trainer waits for them
    before the ``after_step`` hooks (writers, checkpointing, evaluation), in
    ``after_train`` and in :meth:`state_dict`, so every hook sees the same storage as
    with synchronous writing. One difference: a non-finite loss is detected after that
    iteration's optimizer step (the FloatingPointError names the same iteration).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        data_loader: Iterable,
        optimizer: torch.optim.Optimizer,
        gather_metric_period: int = 1,
        zero_grad_before_forward: bool = False,
        async_write_metrics: bool = False,
    ) -> None:
        """
        Args:
            model: a torch Module. Takes a data from data_loader and returns a dict of
                scalar losses (or a single scalar loss tensor).
            data_loader: an iterable. Contains data to be used to call model.
            optimizer: a torch optimizer.
            gather_metric_period: an int. Every gather_metric_period iterations the
                metrics are gathered from all the ranks to rank 0 and logged (and the
                total loss checked for NaN/inf).
            zero_grad_before_forward: whether to zero the gradients before the forward.
            async_write_metrics: write the metrics in a background thread, overlapping
                the optimizer step (see the class docstring). Defaults to False.
        """
        super().__init__()
        # We set the model to training mode in the trainer. However it's valid to train
        # a model that's in eval mode (e.g. to freeze BN); do it in model.train() then.
        model.train()

        self.model = model
        self.data_loader = data_loader
        self._data_loader_iter_obj = None
        self.optimizer = optimizer
        self.gather_metric_period = gather_metric_period
        self.zero_grad_before_forward = zero_grad_before_forward
        self.async_write_metrics = async_write_metrics
        # One worker: metrics are written in the order they were submitted. Its thread
        # only starts on the first submit.
        self.concurrent_executor = _metrics_executor()
        self._pending_metrics: List[concurrent.futures.Future] = []
        if async_write_metrics:
            logger.info("Metrics are gathered and written by a background thread (async_write_metrics=True).")

    def run_step(self) -> None:
        """Implement the standard training logic described above."""
        assert self.model.training, "[SimpleTrainer] model was changed to eval mode!"
        data, data_time = self._next_batch()

        if self.zero_grad_before_forward:
            self.optimizer.zero_grad()

        loss_dict, losses = self._sum_losses(self._forward(data))
        if not self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        losses.backward()

        self.after_backward()

        # Metrics (and the NaN check) come before the optimizer step, so a non-finite
        # loss stops training before it can corrupt the weights (unless written asynchronously).
        self._record_metrics(loss_dict, data_time)

        self.optimizer.step()

    def _forward(self, data: Any) -> Any:
        """``self.model(data)``; a FloatingPointError raised inside (non-finite values met
        by the model, e.g. ``Boxes.clip``) is re-raised naming the iteration."""
        try:
            return self.model(data)
        except FloatingPointError as e:
            raise FloatingPointError(
                f"Infinite or NaN values in the forward pass at iteration={self.iter}: {e}\n" + _divergence_hint({})
            ) from e

    def _next_batch(self) -> Tuple[Any, float]:
        """The next batch and the seconds spent waiting for it.
        (To do something with the data, wrap the data loader.)"""
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        return data, time.perf_counter() - start

    @staticmethod
    def _sum_losses(loss_dict) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
        """(loss dict, total loss) from a model's output: a dict of losses or one tensor."""
        if isinstance(loss_dict, torch.Tensor):
            return {"total_loss": loss_dict}, loss_dict
        return loss_dict, sum(loss_dict.values())

    @property
    def _data_loader_iter(self):
        # Create the iterator lazily, so that resuming / reset_data_loader works.
        if self._data_loader_iter_obj is None:
            self._data_loader_iter_obj = iter(self.data_loader)
        return self._data_loader_iter_obj

    def reset_data_loader(self, data_loader_builder) -> None:
        """Delete and replace the current data loader with a new one built by
        ``data_loader_builder()`` (no arguments)."""
        del self.data_loader
        data_loader = data_loader_builder()
        self.data_loader = data_loader
        self._data_loader_iter_obj = None

    def _record_metrics(self, loss_dict: Mapping[str, torch.Tensor], data_time: float) -> None:
        """Write this iteration's metrics now, or submit them to the background thread."""
        if self.async_write_metrics:
            future = self.concurrent_executor.submit(self._write_metrics, loss_dict, data_time, iter=self.iter)
            self._pending_metrics.append(future)
        else:
            self._write_metrics(loss_dict, data_time)

    def _flush_metrics(self) -> None:
        """Wait until the metrics submitted so far are in the storage; re-raise their error
        (e.g. the FloatingPointError of a non-finite loss)."""
        if not (self.async_write_metrics or self._pending_metrics):
            return  # nothing runs in the background (and no thread is started)
        # Also waits for tasks submitted directly to `concurrent_executor`, as detectron2's
        # run_step does (one worker: FIFO).
        self.concurrent_executor.submit(lambda: None).result()
        pending, self._pending_metrics = self._pending_metrics, []
        for future in pending:
            future.result()

    def after_step(self) -> None:
        self._flush_metrics()  # hooks (writers, checkpointing, eval) read the storage
        super().after_step()

    def after_train(self) -> None:
        try:
            self._flush_metrics()
        except Exception:
            # Only reached when training already stopped with an error between submitting
            # and after_step: log this one, the training error propagates.
            logger.exception("Exception while writing the metrics of the last iteration:")
        self.concurrent_executor.shutdown(wait=True)
        self.concurrent_executor = _metrics_executor()  # a later train() gets a fresh one
        super().after_train()

    def _write_metrics(
        self,
        loss_dict: Mapping[str, torch.Tensor],
        data_time: float,
        prefix: str = "",
        iter: Optional[int] = None,
    ) -> None:
        cur_iter = self.iter if iter is None else iter
        if (cur_iter + 1) % self.gather_metric_period == 0:
            SimpleTrainer.write_metrics(loss_dict, data_time, cur_iter, prefix)

    @staticmethod
    def write_metrics(
        loss_dict: Mapping[str, torch.Tensor],
        data_time: float,
        cur_iter: int,
        prefix: str = "",
    ) -> None:
        """
        Gather the losses of all ranks on rank 0, average them and put them into the
        event storage as ``{prefix}total_loss`` and (when there is more than one) each
        loss; ``data_time`` is the max over ranks.

        Args:
            loss_dict: dict of scalar losses.
            data_time: time taken by the dataloader iteration (seconds).
            cur_iter: the iteration the metrics belong to.
            prefix: prefix for the logging keys.

        Raises:
            FloatingPointError: if the total loss is NaN or infinite (rank 0 checks the
                average over ranks, other ranks their own losses); the message names the
                iteration and the loss dict.
        """
        metrics_dict = {k: v.detach().cpu().item() for k, v in loss_dict.items()}
        metrics_dict["data_time"] = data_time

        storage = get_event_storage()
        # Keep track of data time per rank
        storage.put_scalar("rank_data_time", data_time, cur_iter=cur_iter)

        # Gather metrics among all workers for logging.
        # This assumes we do DDP-style training, which is currently the only
        # supported method in d2lite.
        all_metrics_dict = comm.gather(metrics_dict)

        if not comm.is_main_process():
            # Stop this worker too (rank 0 checks the gathered losses below).
            local_total = sum(v for k, v in metrics_dict.items() if k != "data_time")
            if not np.isfinite(local_total):
                raise FloatingPointError(
                    f"Loss became infinite or NaN at iteration={cur_iter}!\n"
                    f"loss_dict = {metrics_dict} (rank {comm.get_rank()})\n" + _divergence_hint(metrics_dict)
                )
        else:
            # data_time among workers can have high variance. The actual latency
            # caused by data_time is the maximum among workers.
            data_time = float(np.max([x.pop("data_time") for x in all_metrics_dict]))
            storage.put_scalar("data_time", data_time, cur_iter=cur_iter)

            # average the rest metrics
            metrics_dict = {k: float(np.mean([x[k] for x in all_metrics_dict])) for k in all_metrics_dict[0].keys()}
            total_losses_reduced = sum(metrics_dict.values())
            if not np.isfinite(total_losses_reduced):
                raise FloatingPointError(
                    f"Loss became infinite or NaN at iteration={cur_iter}!\nloss_dict = {metrics_dict}\n"
                    + _divergence_hint(metrics_dict)
                )

            storage.put_scalar(f"{prefix}total_loss", total_losses_reduced, cur_iter=cur_iter)
            if len(metrics_dict) > 1:
                storage.put_scalars(cur_iter=cur_iter, **{prefix + k: v for k, v in metrics_dict.items()})

    def state_dict(self) -> Dict[str, Any]:
        self._flush_metrics()
        ret = super().state_dict()
        ret["optimizer"] = self.optimizer.state_dict()
        return ret

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore the iteration, hook states and optimizer state. The optimizer state is
        checked first (:func:`d2lite.checkpoint.check_optimizer_state`): a state saved for
        other parameters (a changed model) raises CheckpointError and restores nothing."""
        model = self.model.module if isinstance(self.model, (DistributedDataParallel, DataParallel)) else self.model
        names = {id(p): n for n, p in model.named_parameters()}
        check_optimizer_state(self.optimizer, state_dict["optimizer"], names)
        super().load_state_dict(state_dict)
        self.optimizer.load_state_dict(state_dict["optimizer"])


def _divergence_hint(losses: Mapping[str, float]) -> str:
    bad = [k for k, v in losses.items() if k != "data_time" and not np.isfinite(v)]
    return (
        (f"Non-finite: {', '.join(bad)}. " if bad else "")
        + "The training diverged: lower the learning rate (optimizer.lr), "
        "clip the gradients (train.clip_grad.enabled=True) or lengthen the warm-up, then start again "
        "or resume from an earlier checkpoint."
    )


def _metrics_executor() -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="d2lite_write_metrics")


def _model_device_type(model: torch.nn.Module) -> str:
    for p in model.parameters():
        return p.device.type
    return "cuda" if torch.cuda.is_available() else "cpu"


class AMPTrainer(SimpleTrainer):
    """
    Like :class:`SimpleTrainer`, but uses automatic mixed precision (autocast) in the
    forward pass.

    * On CUDA: float16 autocast with a ``torch.amp.GradScaler`` (default), or
      bfloat16 (no loss scaling needed; the scaler is disabled).
    * On CPU: bfloat16 autocast and no GradScaler. float16 on CPU is refused.

    Gradients are unscaled before the ``after_backward`` hooks run, so that gradient
    clipping hooks see the true gradients. A step whose gradients are inf/NaN is
    skipped by the GradScaler (float16 on CUDA), as usual with AMP.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        data_loader: Iterable,
        optimizer: torch.optim.Optimizer,
        gather_metric_period: int = 1,
        zero_grad_before_forward: bool = False,
        grad_scaler: Optional[torch.amp.GradScaler] = None,
        precision: Optional[torch.dtype] = None,
        log_grad_scaler: bool = False,
        async_write_metrics: bool = False,
    ) -> None:
        """
        Args:
            model, data_loader, optimizer, gather_metric_period, zero_grad_before_forward,
                async_write_metrics: same as in :class:`SimpleTrainer`.
            grad_scaler: a ``torch.amp.GradScaler`` to scale the loss (CUDA only).
                Defaults to ``GradScaler("cuda")`` for float16, a disabled one for bfloat16.
            precision: autocast dtype. Defaults to torch.float16 on CUDA and
                torch.bfloat16 on CPU (the device of the model's parameters).
            log_grad_scaler: whether to put the scale of the grad scaler into the storage
                as "[metric]grad_scaler".
        """
        unsupported = "AMPTrainer does not support single-process multi-device training!"
        if isinstance(model, DistributedDataParallel):
            assert not (model.device_ids and len(model.device_ids) > 1), unsupported
        assert not isinstance(model, DataParallel), unsupported

        super().__init__(
            model,
            data_loader,
            optimizer,
            gather_metric_period,
            zero_grad_before_forward,
            async_write_metrics=async_write_metrics,
        )

        self.device_type = _model_device_type(model)
        if precision is None:
            precision = torch.float16 if self.device_type == "cuda" else torch.bfloat16
        if precision not in (torch.float16, torch.bfloat16):
            raise ValueError(f"AMPTrainer: precision must be torch.float16 or torch.bfloat16, got {precision}.")
        if self.device_type == "cpu":
            if precision == torch.float16:
                raise ValueError(
                    "AMPTrainer: float16 mixed precision is not supported on CPU (the model's "
                    "parameters are on CPU). Use precision=torch.bfloat16, or train on CUDA, "
                    "or disable AMP (train.amp.enabled=False)."
                )
            if grad_scaler is not None and grad_scaler.is_enabled():
                raise ValueError(
                    "AMPTrainer: a GradScaler is only used with float16 on CUDA; the model is on "
                    "CPU (bfloat16 autocast needs no loss scaling). Pass grad_scaler=None."
                )
            grad_scaler = None
        elif grad_scaler is None:
            grad_scaler = torch.amp.GradScaler(self.device_type, enabled=precision == torch.float16)
        self.grad_scaler = grad_scaler
        self.precision = precision
        self.log_grad_scaler = log_grad_scaler

    def run_step(self) -> None:
        """Implement the AMP training logic."""
        assert self.model.training, "[AMPTrainer] model was changed to eval mode!"
        data, data_time = self._next_batch()

        if self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        with torch.autocast(device_type=self.device_type, dtype=self.precision):
            loss_dict, losses = self._sum_losses(self._forward(data))

        if not self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        if self.grad_scaler is not None:
            self.grad_scaler.scale(losses).backward()
            if self.log_grad_scaler:
                get_event_storage().put_scalar("[metric]grad_scaler", self.grad_scaler.get_scale())
            # True gradients for the after_backward hooks (e.g. clipping); step() below
            # knows they are unscaled already.
            self.grad_scaler.unscale_(self.optimizer)
        else:
            losses.backward()

        self.after_backward()

        self._record_metrics(loss_dict, data_time)

        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()

    def state_dict(self) -> Dict[str, Any]:
        ret = super().state_dict()
        if self.grad_scaler is not None:
            ret["grad_scaler"] = self.grad_scaler.state_dict()
        return ret

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if self.grad_scaler is not None and "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])
