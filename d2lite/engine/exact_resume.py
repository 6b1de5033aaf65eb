"""Exact resume: what a checkpoint needs, besides weights and optimizer, so that a resumed
run is bit-identical to an uninterrupted one, and the stop-on-signal path that saves it.

:class:`ExactResume` is a hook (on every rank; :func:`d2lite.engine.lazy_train.default_hooks`
registers it right before the PeriodicCheckpointer) that

* before each iteration seeds python's ``random``, numpy's global RNG and torch's
  (CPU and, once initialised, CUDA) generators from ``(seed, rank, iteration)``, so the model's own
  randomness (dropout, random sampling in a head) does not depend on what ran before;
* after each iteration all-gathers, in one small collective, every rank's stop-signal
  flag, data-stream position (:meth:`d2lite.data.stream.TrainDataStream.progress`) and
  model running state (e.g. RetinaNet's loss normalizer, which differs between ranks),
  so a checkpoint taken at this iteration by rank 0 holds every rank's state, and all
  ranks agree to stop after the same iteration;
* with several processes, at each checkpoint iteration (every ``checkpoint_period``,
  the last iteration, a stop) copies rank 0's buffers to the other ranks: buffers that
  each rank updates on its own (BatchNorm statistics with
  ``DistributedDataParallel(broadcast_buffers=False)``) are saved from rank 0 only, so
  every rank continues from the checkpoint's values, as a resumed run does (and the
  final evaluation uses the weights of ``model_final.pth`` on every rank);
* on a stop signal (:class:`~d2lite.engine.preemption.StopSignals`, ``train.stop_signals``)
  saves ``model_{iter:07d}.pth`` (atomically, with ``last_checkpoint``), waits for all
  ranks, and raises :class:`~d2lite.engine.preemption.TrainingInterrupted`; the
  remaining hooks' ``after_train`` still run (writers flush and close).
  A signal during the last iteration lets training finish normally.

The data stream is the trainer's current data loader (``trainer.data_loader``, unwrapped
through ``.loader`` attributes), so a loader replaced mid-run (``trainer.reset_data_loader``,
e.g. RTMDet's PipelineSwitchHook) is the one saved; a loaded stream state is applied to
the loader of the first resumed iteration, after the higher-priority hooks' ``before_step``
(which may switch it).

Its state in the checkpoint (``trainer.hooks.ExactResume``): the seed, the data stream's
state (positions and seeds of every rank), the last ``history_window`` iterations of
the smoothed scalars (so the medians written to metrics.json after a resume equal the
uninterrupted run's), and, per rank, the model's running state kept outside its state
dict (``running_state_dict()`` / ``load_running_state_dict()`` of its modules, e.g.
:class:`~d2lite.modeling.meta_arch.dense_detector.DenseDetector`'s).
"""

from __future__ import annotations

import logging
import os
import random
import signal
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DataParallel, DistributedDataParallel

from d2lite.utils import comm
from d2lite.utils.events import get_event_storage, has_event_storage

from .preemption import DEFAULT_STOP_SIGNALS, StopSignals, TrainingInterrupted, resume_command
from .train_loop import HookBase

__all__ = ["ExactResume", "iteration_seed"]

logger = logging.getLogger(__name__)

_ITERATION_SEED_SALT = 0x17E4A7


def iteration_seed(seed: int, rank: int, iteration: int) -> int:
    """The seed, in [0, 2**32), of the global RNGs of ``rank`` during ``iteration``."""
    return int(
        np.random.SeedSequence([_ITERATION_SEED_SALT, int(seed), int(rank), int(iteration)]).generate_state(1)[0]
    )


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, (DistributedDataParallel, DataParallel)) else model


class ExactResume(HookBase):
    """See the module docstring. Register it on every rank, before the PeriodicCheckpointer."""

    priority = "BELOW_NORMAL"

    def __init__(
        self,
        checkpointer: Optional[Any] = None,
        data_stream: Optional[Any] = None,
        *,
        seed: Optional[int] = None,
        stop_signals: Sequence[Union[str, int]] = DEFAULT_STOP_SIGNALS,
        history_window: int = 20,
        file_prefix: str = "model",
        checkpoint_period: Optional[int] = None,
    ) -> None:
        """
        Args:
            checkpointer: saves the checkpoint on a stop signal (a DetectionCheckpointer
                with ``trainer=trainer``); None: stop without saving.
            data_stream: the :class:`~d2lite.data.stream.TrainDataStream` to save; None: the
                trainer's current data loader (unwrapped through ``.loader``). A loader
                without ``progress()``/``state_dict()`` is not resumable (a warning says so).
            seed: base of the per-iteration seeds; None or negative: one random seed shared
                by all ranks (saved in the checkpoint).
            stop_signals: signals that stop training cleanly (names or numbers); empty: none.
            history_window: iterations of smoothed scalars saved (the writers' window, 20).
            file_prefix: name of the checkpoint saved on a stop signal, ``{prefix}_{iter:07d}``.
            checkpoint_period: the PeriodicCheckpointer's period (its saves are where the
                buffers of the ranks are made equal); None: only the last iteration and stops.
        """
        self.checkpointer = checkpointer
        self._data_stream = data_stream
        self.seed = int(seed) if seed is not None and seed >= 0 else int(comm.shared_random_seed())
        self.stop_signals = StopSignals(stop_signals) if stop_signals else None
        self.history_window = int(history_window)
        self.file_prefix = file_prefix
        self.checkpoint_period = checkpoint_period
        self.stopped: Optional[TrainingInterrupted] = None
        self._state_loaded = False
        self._stream_state: Optional[Dict[str, Any]] = None  # loaded, applied before the first step
        self._history: Optional[Dict[str, List[List[float]]]] = None
        self._all_progress: Optional[List[List[int]]] = None
        self._local_progress: Optional[List[int]] = None
        self._all_running: Optional[List[Dict[str, Dict[str, float]]]] = None
        self._running_modules_cache: Optional[Dict[str, torch.nn.Module]] = None
        self._group = None
        self._warned_last_iter = False

    # ------------------------------------------------------------------ hooks
    def before_train(self) -> None:
        self.stopped = None
        world_size = comm.get_world_size()
        if world_size > 1:
            self._group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None
            resumed = comm.all_gather((self.trainer.start_iter, self._state_loaded, self._stream_state is not None))
            if len(set(resumed)) > 1:
                raise RuntimeError(
                    "The ranks did not resume alike, (start iteration, exact-resume state loaded, data stream "
                    f"loaded) per rank: {resumed}. Every process must read the same checkpoint file."
                )
        if self.stop_signals is not None and not self.stop_signals.install():
            logger.warning("Training runs outside the main thread: stop signals are not handled.")
        if self._history and has_event_storage():
            storage = get_event_storage()
            for name, values in self._history.items():
                storage.restore_history(name, [(v, int(i)) for v, i in values])
            self._history = None
        if self.data_stream is None:
            logger.warning(
                f"The training data loader ({type(self._loader()).__name__}) cannot save its position: a resumed "
                "run restarts its data stream. Use a map-style dataset with build_detection_train_loader."
            )
        if self.trainer.start_iter > 0:
            if not self._state_loaded:
                logger.warning(
                    "The checkpoint was saved before d2lite recorded the data stream (no exact-resume state): "
                    "training continues from its weights, optimizer and schedule, but the data stream restarts "
                    "from its beginning, so the resumed run differs from an uninterrupted one."
                )
            elif self.data_stream is not None and self._stream_state is None:
                logger.warning(
                    "The checkpoint holds no data-stream state: the data stream restarts from its beginning."
                )

    def _loader(self) -> Any:
        return self._data_stream if self._data_stream is not None else getattr(self.trainer, "data_loader", None)

    @property
    def data_stream(self) -> Optional[Any]:
        """The resumable stream of the current training loader, or None."""
        loader = self._loader()
        for _ in range(4):
            if loader is None or hasattr(loader, "progress"):
                return loader
            loader = getattr(loader, "loader", None)
        return None

    def before_step(self) -> None:
        if self._stream_state is not None:  # the loader of this (first resumed) iteration continues
            if self.data_stream is not None:
                self.data_stream.load_state_dict(self._stream_state)
            self._stream_state = None
        s = iteration_seed(self.seed, comm.get_rank(), self.trainer.iter)
        random.seed(s)
        np.random.seed(s)
        torch.default_generator.manual_seed(s)  # torch.manual_seed costs ~0.1 ms more, for CUDA & co
        if torch.cuda.is_initialized():
            torch.cuda.manual_seed_all(s)

    def after_step(self) -> None:
        received = self.stop_signals.received if self.stop_signals is not None else None
        stream = self.data_stream
        progress = stream.progress() if stream is not None else []
        running = self._running_state()
        keys = [(module, name) for module in sorted(running) for name in sorted(running[module])]
        # one int64 row per rank: [signal, *stream progress, *running values (float64 bits)]
        values = torch.tensor([running[m][n] for m, n in keys], dtype=torch.float64).view(torch.int64)
        mine = torch.cat([torch.tensor([int(received or 0)] + progress, dtype=torch.int64), values])
        world_size = comm.get_world_size()
        if world_size > 1:
            gathered = [torch.empty_like(mine) for _ in range(world_size)]
            dist.all_gather(gathered, mine, group=self._group)
        else:
            gathered = [mine]
        n = 1 + len(progress)
        self._local_progress = progress
        self._all_progress = [row[1:n].tolist() for row in gathered]
        self._all_running = []
        for row in gathered:
            decoded: Dict[str, Dict[str, float]] = {}
            for (module, name), value in zip(keys, row[n:].view(torch.float64).tolist()):
                decoded.setdefault(module, {})[name] = value
            self._all_running.append(decoded)
        signals = [int(row[0]) for row in gathered]
        senders = [r for r, s in enumerate(signals) if s]
        last = self.trainer.iter >= self.trainer.max_iter - 1
        period = self.checkpoint_period
        if world_size > 1 and (senders or last or (period and (self.trainer.iter + 1) % period == 0)):
            self._broadcast_buffers()
        if not senders:
            return
        if last:
            if not self._warned_last_iter:
                logger.warning("Stop signal during the last iteration: training completes normally.")
                self._warned_last_iter = True
            return
        self._stop(signals[senders[0]], senders[0] if world_size > 1 else None)

    def after_train(self) -> None:
        if self.stop_signals is not None:
            self.stop_signals.uninstall()
        stream = self.data_stream
        if self.stopped is not None and stream is not None:
            stream.close()  # shut the DataLoader workers down now

    def _broadcast_buffers(self) -> None:
        """Copy rank 0's model buffers to every rank (one broadcast per dtype and device)."""
        groups: Dict[Any, List[torch.Tensor]] = {}
        for buffer in _unwrap(self.trainer.model).buffers():
            groups.setdefault((buffer.dtype, buffer.device), []).append(buffer)
        for buffers in groups.values():
            flat = torch.cat([b.detach().reshape(-1) for b in buffers])
            dist.broadcast(flat, src=0)
            offset = 0
            for b in buffers:
                b.data.copy_(flat[offset : offset + b.numel()].view_as(b))
                offset += b.numel()

    def _stop(self, signum: int, rank: Optional[int]) -> None:
        iteration = self.trainer.iter
        logger.warning(f"Stopping after iteration {iteration} on {signal.Signals(signum).name}: saving a checkpoint.")
        checkpoint = None
        save_dir = getattr(self.checkpointer, "save_dir", "") if self.checkpointer is not None else ""
        if save_dir:
            name = f"{self.file_prefix}_{iteration:07d}"
            self.checkpointer.save(name, iteration=iteration)  # a no-op off the main process
            checkpoint = os.path.join(save_dir, name + ".pth")
        else:
            logger.warning("No checkpointer with a save_dir: stopping without saving a checkpoint.")
        comm.synchronize()  # every rank exits after rank 0 saved
        self.stopped = TrainingInterrupted(
            signum,
            iteration=iteration,
            max_iter=self.trainer.max_iter,
            checkpoint=checkpoint,
            rank=rank,
            command=resume_command() if checkpoint else None,
        )
        raise self.stopped

    # ------------------------------------------------------------------ state
    def _save_stream(self) -> Optional[Dict[str, Any]]:
        stream = self.data_stream
        if stream is None:
            return None
        if self._stream_state is not None:  # saved before the first step: the loaded state is still the state
            return self._stream_state
        if comm.get_world_size() == 1:
            return stream.state_dict()
        if self._all_progress is not None and self._local_progress == stream.progress():
            return stream.state_dict(self._all_progress)
        logger.warning(
            "A checkpoint is saved outside the per-iteration synchronisation of the ranks: it holds no data-stream "
            "state (resuming from it restarts the data stream)."
        )
        return None

    def _recent_history(self) -> Dict[str, List[List[float]]]:
        if not has_event_storage():
            return {}
        storage = get_event_storage()
        hints = storage.smoothing_hints()
        first = self.trainer.iter - self.history_window + 1
        history = {}
        for name, buffer in storage.histories().items():
            if hints.get(name, False):
                values = [[float(v), int(i)] for v, i in buffer.values() if i >= first]
                if values:
                    history[name] = values
        return history

    def _running_modules(self) -> Dict[str, torch.nn.Module]:
        """The modules of the trained model with ``running_state_dict`` (looked up once)."""
        if self._running_modules_cache is None:
            self._running_modules_cache = {
                name: module
                for name, module in _unwrap(self.trainer.model).named_modules()
                if callable(getattr(module, "running_state_dict", None))
            }
        return self._running_modules_cache

    def _running_state(self) -> Dict[str, Dict[str, float]]:
        """This rank's model running state: {module name: {value name: float}}."""
        state = {name: module.running_state_dict() for name, module in self._running_modules().items()}
        return {name: {k: float(v) for k, v in values.items()} for name, values in state.items() if values}

    def state_dict(self) -> Dict[str, Any]:
        state: Dict[str, Any] = {"seed": self.seed, "history": self._recent_history()}
        stream = self._save_stream()
        if stream is not None:
            state["data_stream"] = stream
        world_size = comm.get_world_size()
        if world_size == 1:
            state["model_running_state"] = [self._running_state()]
        elif self._all_running is not None and self._all_running[comm.get_rank()] == self._running_state():
            state["model_running_state"] = self._all_running
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if int(state["seed"]) != self.seed:
            logger.info(f"Using the checkpoint's seed {state['seed']} for the per-iteration RNG seeds.")
        self.seed = int(state["seed"])
        self._history = state.get("history") or None
        stream = state.get("data_stream")
        if stream is not None:
            if stream.get("world_size") != comm.get_world_size():
                raise ValueError(
                    f"The checkpoint's data stream was saved by {stream.get('world_size')} processes; this run has "
                    f"{comm.get_world_size()}. Resume with {stream.get('world_size')} processes (--num-gpus / srun "
                    "tasks), or start a new run from the weights with train.init_checkpoint=<checkpoint> (without "
                    "--resume)."
                )
            self._stream_state = stream
        per_rank = state.get("model_running_state")
        if per_rank is not None:
            if len(per_rank) != comm.get_world_size():
                raise ValueError(
                    f"The checkpoint holds the model running state of {len(per_rank)} processes; this run has "
                    f"{comm.get_world_size()}. Resume with the same number of processes."
                )
            modules = self._running_modules()
            for name, values in per_rank[comm.get_rank()].items():
                if name not in modules:
                    logger.warning(
                        f"The checkpoint's running state of module '{name}' has no module to go to; ignored."
                    )
                    continue
                modules[name].load_running_state_dict(values)
        self._state_loaded = True
