"""Training hooks (same names and semantics as ``detectron2.engine.hooks``).

A typical order, as used by ``tools/lazyconfig_train_net.py``::

    trainer.register_hooks([
        hooks.IterationTimer(),                 # "time" scalar, total time at the end
        hooks.GradientClipping(...),            # after_backward: clip grads (optional)
        hooks.EMAHook(ema),                     # after_step: update the model EMA (optional)
        hooks.LRScheduler(scheduler=...),       # after_step: "lr" scalar, scheduler.step()
        hooks.PeriodicCheckpointer(checkpointer, period),
        hooks.EvalHook(eval_period, eval_fn),   # "bbox/AP", ... scalars
        hooks.BestCheckpointer(eval_period, checkpointer, "bbox/AP"),  # after EvalHook
        hooks.ValidationLoss(period, val_loader),  # "val_total_loss", ... scalars (optional)
        hooks.PeriodicWriter(writers, period),  # last: writes what the others put
    ])

The LR scheduler must step before the checkpointer saves, so that a checkpoint taken
after iteration ``i`` holds the scheduler state for iteration ``i + 1``.
"""

from __future__ import annotations

import datetime
import logging
import math
import operator
import os
import time
from collections import Counter
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

import torch
from fvcore.common.checkpoint import Checkpointer
from fvcore.common.checkpoint import PeriodicCheckpointer as _PeriodicCheckpointer
from fvcore.common.param_scheduler import ParamScheduler
from fvcore.common.timer import Timer

from d2lite.evaluation.testing import flatten_results_dict
from d2lite.utils import comm
from d2lite.utils.events import EventWriter

from .loss_explosion import LossExplosionCheck
from .train_loop import HookBase
from .validation_loss import ValidationLoss

__all__ = [
    "CallbackHook",
    "IterationTimer",
    "PeriodicWriter",
    "PeriodicCheckpointer",
    "BestCheckpointer",
    "LRScheduler",
    "EvalHook",
    "GradientClipping",
    "EMAHook",
    "TorchProfiler",
    "ValidationLoss",
    "LossExplosionCheck",
]

logger = logging.getLogger(__name__)


class CallbackHook(HookBase):
    """Create a hook using callback functions provided by the user; each is called
    with the trainer as its only argument."""

    def __init__(
        self,
        *,
        before_train: Optional[Callable] = None,
        after_train: Optional[Callable] = None,
        before_step: Optional[Callable] = None,
        after_step: Optional[Callable] = None,
        after_backward: Optional[Callable] = None,
    ) -> None:
        self._before_train = before_train
        self._before_step = before_step
        self._after_backward = after_backward
        self._after_step = after_step
        self._after_train = after_train

    def before_train(self) -> None:
        if self._before_train:
            self._before_train(self.trainer)

    def after_train(self) -> None:
        if self._after_train:
            self._after_train(self.trainer)
        # The functions may be closures that hold reference to the trainer.
        # Therefore, delete them to avoid circular reference.
        del self._before_train, self._after_train
        del self._before_step, self._after_step, self._after_backward

    def before_step(self) -> None:
        if self._before_step:
            self._before_step(self.trainer)

    def after_backward(self) -> None:
        if self._after_backward:
            self._after_backward(self.trainer)

    def after_step(self) -> None:
        if self._after_step:
            self._after_step(self.trainer)


class IterationTimer(HookBase):
    """
    Track the time spent for each iteration (each run_step call in the trainer) and
    put it into the storage as "time" (seconds). Print a summary at the end of training.

    The time of hooks registered *before* this one in before_step/after_step is not
    included; register it first.
    """

    priority = "VERY_HIGH"

    def __init__(self, warmup_iter: int = 3) -> None:
        """
        Args:
            warmup_iter: the number of iterations at the beginning to exclude from timing.
        """
        self._warmup_iter = warmup_iter
        self._step_timer = Timer()
        self._start_time = time.perf_counter()
        self._total_timer = Timer()

    def before_train(self) -> None:
        self._start_time = time.perf_counter()
        self._total_timer.reset()
        self._total_timer.pause()

    def after_train(self) -> None:
        total_time = time.perf_counter() - self._start_time
        total_time_minus_hooks = self._total_timer.seconds()
        hook_time = total_time - total_time_minus_hooks

        num_iter = self.trainer.storage.iter + 1 - self.trainer.start_iter - self._warmup_iter

        if num_iter > 0 and total_time_minus_hooks > 0:
            # Speed is meaningful only after warmup.
            # NOTE this format is parsed by grep in some scripts.
            logger.info(
                f"Overall training speed: {num_iter} iterations in {str(datetime.timedelta(seconds=int(total_time_minus_hooks)))} ({total_time_minus_hooks / num_iter:.4f} s / it)"
            )

        logger.info(
            f"Total training time: {str(datetime.timedelta(seconds=int(total_time)))} ({str(datetime.timedelta(seconds=int(hook_time)))} on hooks)"
        )

    def before_step(self) -> None:
        self._step_timer.reset()
        self._total_timer.resume()

    def after_step(self) -> None:
        # +1 because we're in after_step, the current step is done.
        iter_done = self.trainer.storage.iter - self.trainer.start_iter + 1
        if iter_done >= self._warmup_iter:
            sec = self._step_timer.seconds()
            self.trainer.storage.put_scalars(time=sec)
        else:
            self._start_time = time.perf_counter()
            self._total_timer.reset()

        self._total_timer.pause()


class PeriodicWriter(HookBase):
    """
    Write events to EventStorage (by calling ``writer.write()``) periodically: after
    every ``period`` iterations and after the last iteration. Writers are flushed and
    closed in ``after_train`` (also when training failed).

    It is executed every ``period`` iterations and after the last iteration.
    Note that ``period`` does not affect how data is smoothed by each writer.
    """

    priority = "LOWEST"

    def __init__(self, writers: Sequence[EventWriter], period: int = 20) -> None:
        """
        Args:
            writers: a list of EventWriter objects.
            period: write every ``period`` iterations.
        """
        self._writers = list(writers)
        for w in writers:
            if not isinstance(w, EventWriter):
                raise TypeError(f"PeriodicWriter: {w!r} is not an EventWriter.")
        self._period = period

    def after_step(self) -> None:
        if (self.trainer.iter + 1) % self._period == 0 or (self.trainer.iter == self.trainer.max_iter - 1):
            for writer in self._writers:
                writer.write()

    def after_train(self) -> None:
        # If any new data is found (e.g. produced by other after_train), write it before
        # closing. A writer that fails must not cost the others their last write or close.
        error: Optional[BaseException] = None
        for writer in self._writers:
            try:
                writer.write()
            except Exception as e:
                logger.exception(f"PeriodicWriter: {type(writer).__name__}.write() failed after training.")
                error = error or e
            finally:
                writer.close()
        if error is not None:
            raise error


class PeriodicCheckpointer(_PeriodicCheckpointer, HookBase):
    """
    Same as :class:`fvcore.common.checkpoint.PeriodicCheckpointer`, but as a hook.

    After iteration ``i`` it saves ``{file_prefix}_{i:07d}.pth`` when
    ``(i + 1) % period == 0`` and ``{file_prefix}_final.pth`` after the last iteration
    ``max_iter - 1``; ``max_to_keep`` keeps only the most recent periodic checkpoints.
    Each checkpoint holds ``"iteration": i`` plus the checkpointer's checkpointables
    (pass ``trainer=trainer`` to the checkpointer to save the optimizer, scheduler and
    hook states for resuming).

    Nothing is saved in ``after_train``: when training stops with an exception no
    ``model_final`` is written, and the last periodic checkpoint (also named in the
    ``last_checkpoint`` file) is what ``--resume`` continues from.
    """

    priority = "BELOW_NORMAL"

    def __init__(
        self,
        checkpointer: Checkpointer,
        period: int,
        max_iter: Optional[int] = None,
        max_to_keep: Optional[int] = None,
        file_prefix: str = "model",
    ) -> None:
        """
        Args:
            checkpointer: the checkpointer object used to save checkpoints.
            period: save a checkpoint every ``period`` iterations.
            max_iter: maximum number of iterations; defaults to the trainer's max_iter.
            max_to_keep: maximum number of most recent periodic checkpoints to keep;
                None keeps all.
            file_prefix: the prefix of checkpoint's filename.
        """
        if period <= 0:
            raise ValueError(f"PeriodicCheckpointer: period must be > 0, got {period}.")
        super().__init__(checkpointer, period, max_iter, max_to_keep, file_prefix)

    def before_train(self) -> None:
        self.max_iter = self.trainer.max_iter

    def after_step(self) -> None:
        # No way to use **kwargs
        self.step(self.trainer.iter)


class BestCheckpointer(HookBase):
    """
    Checkpoints the best weights based on a given metric (read from the storage, so
    register it after the :class:`EvalHook` that computes the metric). It is executed
    every ``eval_period`` iterations and after training.

    Saves ``{file_prefix}.pth`` whenever the metric improves. The best value and its
    iteration are part of the hook state, so a resumed run does not overwrite a
    better earlier checkpoint.
    """

    priority = "LOW"

    def __init__(
        self,
        eval_period: int,
        checkpointer: Checkpointer,
        val_metric: str,
        mode: str = "max",
        file_prefix: str = "model_best",
    ) -> None:
        """
        Args:
            eval_period: the period the evaluation hook runs at.
            checkpointer: the checkpointer object used to save checkpoints.
            val_metric: validation metric to track for best checkpoint, e.g. "bbox/AP50".
            mode: one of {'max', 'min'}. Whether the metric is maximized or minimized.
            file_prefix: the prefix of checkpoint's filename, defaults to "model_best".
        """
        self._period = eval_period
        self._val_metric = val_metric
        if mode not in ("max", "min"):
            raise ValueError(f'BestCheckpointer: mode must be "max" or "min", got {mode!r}.')
        self._compare = operator.gt if mode == "max" else operator.lt
        self._checkpointer = checkpointer
        self._file_prefix = file_prefix
        self.best_metric: Optional[float] = None
        self.best_iter: Optional[int] = None

    def _update_best(self, val: float, iteration: int) -> bool:
        if math.isnan(val) or math.isinf(val):
            return False
        self.best_metric = val
        self.best_iter = iteration
        return True

    def _best_checking(self) -> None:
        metric_tuple = self.trainer.storage.latest().get(self._val_metric)
        if metric_tuple is None:
            logger.warning(
                f"Given val metric {self._val_metric} does not seem to be computed/stored. "
                "Will not be checkpointing based on it."
            )
            return
        latest_metric, metric_iter = metric_tuple

        if self.best_metric is None:
            if self._update_best(latest_metric, metric_iter):
                self._checkpointer.save(f"{self._file_prefix}", iteration=metric_iter)
                logger.info(f"Saved first model at {self.best_metric:0.5f} @ {self.best_iter} steps")
        elif self._compare(latest_metric, self.best_metric):
            self._checkpointer.save(f"{self._file_prefix}", iteration=metric_iter)
            logger.info(
                f"Saved best model as latest eval score for {self._val_metric} is "
                f"{latest_metric:0.5f}, better than last best score "
                f"{self.best_metric:0.5f} @ iteration {self.best_iter}."
            )
            self._update_best(latest_metric, metric_iter)
        else:
            logger.info(
                f"Not saving as latest eval score for {self._val_metric} is {latest_metric:0.5f}, "
                f"not better than best score {self.best_metric:0.5f} @ iteration {self.best_iter}."
            )

    def after_step(self) -> None:
        # same conditions as `EvalHook`
        next_iter = self.trainer.iter + 1
        if self._period > 0 and next_iter % self._period == 0 and next_iter != self.trainer.max_iter:
            self._best_checking()

    def after_train(self) -> None:
        # same conditions as `EvalHook`: only when training finished
        if self.trainer.iter + 1 >= self.trainer.max_iter:
            self._best_checking()

    def state_dict(self) -> Dict[str, Any]:
        if self.best_metric is None:
            return {}
        return {"best_metric": self.best_metric, "best_iter": self.best_iter}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.best_metric = state_dict["best_metric"]
        self.best_iter = state_dict["best_iter"]


class LRScheduler(HookBase):
    """
    A hook which executes a torch builtin LR scheduler and summarizes the LR: after
    each iteration it puts "lr" (of the param group with the most parameters) into
    the storage, then calls ``scheduler.step()``.

    Its state is the scheduler's state_dict, so a resumed run continues with the
    same learning rate.
    """

    priority = "ABOVE_NORMAL"

    def __init__(self, optimizer: Optional[torch.optim.Optimizer] = None, scheduler=None) -> None:
        """
        Args:
            optimizer: defaults to the trainer's optimizer.
            scheduler: a torch ``LRScheduler`` or an fvcore ``ParamScheduler``
                (then wrapped in ``d2lite.solver.LRMultiplier`` with the trainer's
                max_iter in ``before_train``). If None, ``trainer.scheduler`` is used.
        """
        self._optimizer = optimizer
        self._scheduler = scheduler
        self._best_param_group_id = 0

    def before_train(self) -> None:
        self._optimizer = self._optimizer or self.trainer.optimizer
        if isinstance(self.scheduler, ParamScheduler):
            from d2lite.solver.lr_scheduler import LRMultiplier

            self._scheduler = LRMultiplier(
                self._optimizer,
                self.scheduler,
                self.trainer.max_iter,
                last_iter=self.trainer.iter - 1,
            )
        self._best_param_group_id = LRScheduler.get_best_param_group_id(self._optimizer)

    @staticmethod
    def get_best_param_group_id(optimizer: torch.optim.Optimizer) -> int:
        """Index of the param group whose lr is reported: the group with the most
        params; if every group has one param, the first group with the most common lr."""
        # NOTE: some heuristics on what LR to summarize
        # summarize the param group with most parameters
        largest_group = max(len(g["params"]) for g in optimizer.param_groups)

        if largest_group == 1:
            # If all groups have one parameter,
            # then find the most common initial LR, and use it for summary
            lr_count = Counter([g["lr"] for g in optimizer.param_groups])
            lr = lr_count.most_common()[0][0]
            for i, g in enumerate(optimizer.param_groups):
                if g["lr"] == lr:
                    return i
        else:
            for i, g in enumerate(optimizer.param_groups):
                if len(g["params"]) == largest_group:
                    return i
        return 0

    def after_step(self) -> None:
        lr = self._optimizer.param_groups[self._best_param_group_id]["lr"]
        self.trainer.storage.put_scalar("lr", lr, smoothing_hint=False)
        self.scheduler.step()

    @property
    def scheduler(self):
        return self._scheduler or self.trainer.scheduler

    def state_dict(self) -> Dict[str, Any]:
        if isinstance(self.scheduler, torch.optim.lr_scheduler.LRScheduler):
            return self.scheduler.state_dict()
        return {}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        if isinstance(self.scheduler, torch.optim.lr_scheduler.LRScheduler):
            logger.info("Loading scheduler from state_dict ...")
            self.scheduler.load_state_dict(state_dict)


class EvalHook(HookBase):
    """
    Run an evaluation function periodically (after iterations ``i`` with
    ``(i + 1) % eval_period == 0``) and after the last iteration.

    The function's results (nested dict of floats, e.g. ``{"bbox": {"AP": 40.1}}``) are
    put into the storage flattened (``"bbox/AP"``), without smoothing.
    """

    priority = "LOW"

    def __init__(self, eval_period: int, eval_function: Callable[[], Any], eval_after_train: bool = True) -> None:
        """
        Args:
            eval_period: the period to run ``eval_function``. Set to 0 to not evaluate
                periodically (but still evaluate after the last iteration if
                ``eval_after_train`` is True).
            eval_function: a function which takes no arguments, and returns a nested
                dict of evaluation metrics (or None/empty dict: nothing is stored).
            eval_after_train: whether to evaluate after the last iteration.

        Note:
            This hook must be enabled in all or none workers. If you would like only
            certain workers to perform evaluation, give other workers a no-op function
            (``eval_function=lambda: None``).
        """
        self._period = eval_period
        self._func = eval_function
        self._eval_after_train = eval_after_train

    def _do_eval(self) -> None:
        results = self._func()

        if results:
            if not isinstance(results, Mapping):
                raise TypeError(f"[EvalHook] eval_function must return a dict. Got {type(results).__name__} instead.")

            flattened_results = flatten_results_dict(results)
            for k, v in flattened_results.items():
                try:
                    v = float(v)
                except Exception as e:
                    raise ValueError(
                        f"[EvalHook] eval_function should return a nested dict of float. Got '{k}: {v}' instead."
                    ) from e
                flattened_results[k] = v
            self.trainer.storage.put_scalars(**flattened_results, smoothing_hint=False)

        # Evaluation may take different time among workers.
        # A barrier make them start the next iteration together.
        comm.synchronize()

    def after_step(self) -> None:
        next_iter = self.trainer.iter + 1
        if self._period > 0 and next_iter % self._period == 0:
            # do the last eval in after_train
            if next_iter != self.trainer.max_iter:
                self._do_eval()

    def after_train(self) -> None:
        # This condition is to prevent the eval from running after a failed training
        if self._eval_after_train and self.trainer.iter + 1 >= self.trainer.max_iter:
            self._do_eval()
        # func is likely a closure that holds reference to the trainer
        # therefore we clean it to avoid circular reference in the end
        del self._func


class GradientClipping(HookBase):
    """
    Clip the gradients of all model parameters that have a gradient, after the backward
    pass and before the optimizer step (with AMPTrainer the gradients are already
    unscaled). For ``clip_type="norm"`` the total norm before clipping is put into the
    storage as "grad_norm".
    """

    priority = "HIGH"

    def __init__(self, clip_type: str = "norm", clip_value: float = 1.0, norm_type: float = 2.0) -> None:
        """
        Args:
            clip_type: "norm": scale all gradients so that their total ``norm_type``-norm
                (computed over all parameters together) is at most ``clip_value``
                (``torch.nn.utils.clip_grad_norm_``); "value": clamp every gradient
                element to [-clip_value, clip_value] (``clip_grad_value_``).
            clip_value: maximum norm or absolute value (> 0).
            norm_type: the p of the p-norm for "norm" (can be ``inf``).
        """
        if clip_type not in ("norm", "value"):
            raise ValueError(f'GradientClipping: clip_type must be "norm" or "value", got {clip_type!r}.')
        if not clip_value > 0:
            raise ValueError(f"GradientClipping: clip_value must be > 0, got {clip_value}.")
        self.clip_type = clip_type
        self.clip_value = float(clip_value)
        self.norm_type = float(norm_type)

    def after_backward(self) -> None:
        params = [p for p in self.trainer.model.parameters() if p.grad is not None]
        if not params:
            return
        if self.clip_type == "norm":
            total_norm = torch.nn.utils.clip_grad_norm_(params, self.clip_value, self.norm_type)
            self.trainer.storage.put_scalar("grad_norm", total_norm)
        else:
            torch.nn.utils.clip_grad_value_(params, self.clip_value)


class EMAHook(HookBase):
    """
    Update a :class:`d2lite.modeling.ema.ModelEMA` after each iteration with
    ``ema.update(trainer.model, trainer.iter)``.

    The EMA weights are not part of this hook's state: pass the ``ModelEMA`` as a
    checkpointable to the checkpointer (``DetectionCheckpointer(model, dir,
    trainer=trainer, ema=ema)``) so they are saved and resumed; evaluate with
    ``with ema.apply_to(model): ...``.
    """

    priority = "HIGH"

    def __init__(self, ema) -> None:
        """
        Args:
            ema: a :class:`d2lite.modeling.ema.ModelEMA` built from the trained model.
        """
        self.ema = ema

    def after_step(self) -> None:
        self.ema.update(self.trainer.model, self.trainer.iter)


class TorchProfiler(HookBase):
    """
    Profile a few iterations with :mod:`torch.profiler` and save a chrome trace
    ``{output_dir}/profiler-trace-iter{i}.json`` per profiled iteration
    (open in chrome://tracing or https://ui.perfetto.dev).
    """

    def __init__(self, enable_predicate: Callable[[Any], bool], output_dir: str, *, activities=None) -> None:
        """
        Args:
            enable_predicate: a function that takes the trainer and returns whether to
                profile its current iteration, e.g.
                ``lambda trainer: 10 <= trainer.iter < 12``.
            output_dir: directory of the trace files.
            activities: torch.profiler activities; defaults to CPU (+ CUDA if available).
        """
        self._enable_predicate = enable_predicate
        self._activities = activities
        self._output_dir = output_dir
        self._profiler = None

    def before_step(self) -> None:
        if self._enable_predicate(self.trainer):
            activities = self._activities
            if activities is None:
                activities = [torch.profiler.ProfilerActivity.CPU]
                if torch.cuda.is_available():
                    activities.append(torch.profiler.ProfilerActivity.CUDA)
            self._profiler = torch.profiler.profile(
                activities=activities, record_shapes=True, profile_memory=True, with_stack=False
            )
            self._profiler.__enter__()
        else:
            self._profiler = None

    def after_step(self) -> None:
        if self._profiler is None:
            return
        self._profiler.__exit__(None, None, None)
        os.makedirs(self._output_dir, exist_ok=True)
        out_file = os.path.join(self._output_dir, f"profiler-trace-iter{self.trainer.iter}.json")
        self._profiler.export_chrome_trace(out_file)
        self._profiler = None
