"""Training metrics: the :class:`EventStorage` that code writes scalars/images into,
and the writers (console, ``metrics.json``, TensorBoard) that read it.

Same names and semantics as ``detectron2.utils.events``::

    with EventStorage(start_iter=0) as storage:
        for it in range(max_iter):
            ...
            get_event_storage().put_scalar("loss_cls", 0.3)
            for writer in writers:
                writer.write()
            storage.step()
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
from fvcore.common.history_buffer import HistoryBuffer

__all__ = [
    "get_event_storage",
    "has_event_storage",
    "EventWriter",
    "JSONWriter",
    "TensorboardXWriter",
    "CommonMetricPrinter",
    "EventStorage",
    "tensorboard_tag",
]

logger = logging.getLogger(__name__)

_CURRENT_STORAGE_STACK: List[EventStorage] = []


def get_event_storage() -> EventStorage:
    """
    Returns:
        The :class:`EventStorage` object that's currently being used (the innermost
        ``with EventStorage(...)``). Raises AssertionError if there is none.
    """
    assert len(_CURRENT_STORAGE_STACK), (
        "get_event_storage() has to be called inside a 'with EventStorage(...)' context!"
    )
    return _CURRENT_STORAGE_STACK[-1]


def has_event_storage() -> bool:
    """Whether there is an active ``with EventStorage(...)`` context."""
    return len(_CURRENT_STORAGE_STACK) > 0


class EventWriter:
    """Base class for writers that obtain events from :func:`get_event_storage` and process them."""

    def write(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class JSONWriter(EventWriter):
    """
    Writes scalars to a json file, one JSON object per line::

        {"iteration": 19, "loss_cls": 0.81, "lr": 0.002, "time": 0.12}
        {"iteration": 39, "loss_cls": 0.64, "lr": 0.004, "time": 0.11}

    Scalar names are the storage's (detectron2's flat names: ``total_loss``, ``lr``,
    ``bbox/AP``); only TensorBoard groups them (:func:`tensorboard_tag`). Each scalar
    is written at the iteration it was last put; scalars with a smoothing hint are the
    median over the last ``window_size`` iterations. Every line is strict JSON: a NaN
    or infinite value (e.g. ``bbox/APl`` of a dataset without large objects) is
    written as ``null``. The file is opened in append mode and flushed (and fsync'ed)
    after every ``write()`` so an interrupted run loses nothing already written. Read
    it back with::

        [json.loads(line) for line in open("metrics.json")]
    """

    def __init__(self, json_file: str, window_size: int = 20) -> None:
        """
        Args:
            json_file: path to the json file. New data is appended if the file exists.
            window_size: window (in iterations) of the median used for scalars whose
                ``smoothing_hint`` is True.
        """
        parent = os.path.dirname(os.path.abspath(json_file))
        os.makedirs(parent, exist_ok=True)
        self._file_handle = open(json_file, "a")
        self._window_size = window_size
        self._last_write = -1

    def write(self) -> None:
        storage = get_event_storage()
        to_save: Dict[int, Dict[str, float]] = defaultdict(dict)
        for k, (v, itr) in storage.latest_with_smoothing_hint(self._window_size).items():
            # Only write scalars that changed since the last write.
            if itr <= self._last_write:
                continue
            to_save[itr][k] = v if math.isfinite(v) else None
        if len(to_save):
            self._last_write = max(to_save.keys())
        for itr in sorted(to_save.keys()):
            scalars_per_iter = to_save[itr]
            scalars_per_iter["iteration"] = itr
            self._file_handle.write(json.dumps(scalars_per_iter, sort_keys=True, allow_nan=False) + "\n")
        self._file_handle.flush()
        try:
            os.fsync(self._file_handle.fileno())
        except (AttributeError, OSError, ValueError):
            # Not a real file (e.g. a remote iopath handle): flush() is all we can do.
            pass

    def close(self) -> None:
        self._file_handle.close()


_TIMING = ("time", "data_time", "rank_data_time", "eta_seconds")
_OPTIM = ("lr", "grad_norm", "[metric]grad_scaler")
_EVAL_TASKS = ("bbox", "segm", "keypoints")


def tensorboard_tag(name: str) -> str:
    """The TensorBoard tag of the storage scalar or image ``name``.

    TensorBoard groups tags by their first ``/``-component and lists the groups in
    alphabetical order, opening the first two; the tags are chosen so that the
    training losses come first and the learning rate second:

    ==============================================  ===================================
    storage name (metrics.json)                     TensorBoard tag
    ==============================================  ===================================
    ``total_loss``, ``loss_cls``, any ``*loss*``    ``loss/total_loss``, ``loss/loss_cls``
    ``lr``, ``grad_norm``, ``[metric]grad_scaler``  ``optim/lr``, ...
    ``bbox/AP`` (evaluation), ``eval/pred_boxes_0``  ``test/bbox/AP``, ``test/pred_boxes_0``
    ``time``, ``data_time``, ``eta_seconds``, ...   ``timing/time``, ``timing/data_time``, ...
    ``val_total_loss``, ``val_loss_cls``, ...       ``val/total_loss``, ``val/loss_cls``, ...
    other names (``num_pos_anchors``, images)       ``train/num_pos_anchors``
    names with a ``/`` (``train/gt_boxes_0``)       unchanged
    ==============================================  ===================================
    """
    group, _, rest = name.partition("/")
    if rest:
        if group in _EVAL_TASKS:
            return f"test/{name}"
        return f"test/{rest}" if group == "eval" else name
    if name.startswith("val_"):
        return f"val/{name[4:]}"
    if name in _OPTIM:
        return f"optim/{name.replace('[metric]', '')}"
    if name in _TIMING:
        return f"timing/{name}"
    if "loss" in name:
        return f"loss/{name}"
    return f"train/{name}"


class TensorboardXWriter(EventWriter):
    """Writes all scalars (and images put with ``put_image``) to a TensorBoard event file
    using :class:`torch.utils.tensorboard.SummaryWriter`, under grouped tags
    (:func:`tensorboard_tag`: ``loss/total_loss``, ``optim/lr``, ``test/bbox/AP``, ...)."""

    def __init__(self, log_dir: str, window_size: int = 20, tag_fn: Any = tensorboard_tag, **kwargs: Any) -> None:
        """
        Args:
            log_dir: the directory to save the output events.
            window_size: median window for scalars with ``smoothing_hint=True``.
            tag_fn: storage name -> TensorBoard tag (``lambda name: name`` keeps the
                storage names).
            kwargs: other arguments passed to ``SummaryWriter(...)``.
        """
        self._tag = tag_fn
        self._window_size = window_size
        self._writer_args = {"log_dir": log_dir, **kwargs}
        self._last_write = -1
        self._writer = None  # created lazily so that unused writers create no files

    @property
    def writer(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(**self._writer_args)
        return self._writer

    def write(self) -> None:
        storage = get_event_storage()
        new_last_write = self._last_write
        for k, (v, itr) in storage.latest_with_smoothing_hint(self._window_size).items():
            if itr > self._last_write:
                self.writer.add_scalar(self._tag(k), v, itr)
                new_last_write = max(new_last_write, itr)
        self._last_write = new_last_write

        # Images are cleared after being written: they are large and only written once.
        if len(storage._vis_data) >= 1:
            for img_name, img, step_num in storage._vis_data:
                self.writer.add_image(self._tag(img_name), img, step_num)
            storage.clear_images()

        if len(storage._histograms) >= 1:
            for params in storage._histograms:
                self.writer.add_histogram_raw(**{**params, "tag": self._tag(params["tag"])})
            storage.clear_histograms()
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class CommonMetricPrinter(EventWriter):
    """
    Prints the common training metrics to the terminal (logger ``d2lite.utils.events``):
    ETA, iteration, every scalar whose name contains "loss" (median over
    ``window_size``), iteration time, data time, lr and max CUDA memory::

        eta: 0:01:02  iter: 19  total_loss: 1.52  loss_cls: 1.1  loss_box_reg: 0.42
        time: 0.1210 (0.1180)  data_time: 0.0021 (0.0019)  lr: 0.0002  max_mem: 1234M

    The ETA is ``median iteration time over the last 1000 iterations * remaining
    iterations`` (the "time" scalar written by :class:`hooks.IterationTimer`); without
    that scalar it is estimated from the wall time between two ``write()`` calls.
    """

    def __init__(self, max_iter: Optional[int] = None, window_size: int = 20) -> None:
        """
        Args:
            max_iter: the maximum number of iterations to train; used to compute ETA.
                If None, ETA is not printed.
            window_size: median window for losses and averaging window for times.
        """
        self.logger = logging.getLogger(__name__)
        self._max_iter = max_iter
        self._window_size = window_size
        self._last_write: Optional[Tuple[int, float]] = None

    def _get_eta(self, storage: EventStorage) -> Optional[str]:
        if self._max_iter is None:
            return ""
        iteration = storage.iter
        try:
            eta_seconds = storage.history("time").median(1000) * (self._max_iter - iteration - 1)
            storage.put_scalar("eta_seconds", eta_seconds, smoothing_hint=False)
            return str(datetime.timedelta(seconds=int(eta_seconds)))
        except KeyError:
            # No "time" scalar (no IterationTimer): estimate from wall time between writes.
            eta_string = None
            if self._last_write is not None and iteration > self._last_write[0]:
                estimate_iter_time = (time.perf_counter() - self._last_write[1]) / (iteration - self._last_write[0])
                eta_seconds = estimate_iter_time * (self._max_iter - iteration - 1)
                eta_string = str(datetime.timedelta(seconds=int(eta_seconds)))
            self._last_write = (iteration, time.perf_counter())
            return eta_string

    def write(self) -> None:
        storage = get_event_storage()
        iteration = storage.iter
        if iteration == self._max_iter:
            # This writer only reports training progress; after training it may be
            # called again by other code (e.g. final evaluation) and stays silent.
            return

        def _avg_last(name: str) -> Tuple[Optional[float], Optional[float]]:
            try:
                hist = storage.history(name)
            except KeyError:
                return None, None
            return hist.avg(storage.count_samples(name, self._window_size)), hist.latest()

        avg_data_time, last_data_time = _avg_last("data_time")
        avg_iter_time, last_iter_time = _avg_last("time")
        try:
            lr = "{:.5g}".format(storage.history("lr").latest())
        except KeyError:
            lr = "N/A"

        eta_string = self._get_eta(storage)

        if torch.cuda.is_available():
            max_mem_mb = torch.cuda.max_memory_allocated() / 1024.0 / 1024.0
        else:
            max_mem_mb = None

        losses = "  ".join(
            f"{k}: {v.median(storage.count_samples(k, self._window_size)):.4g}"
            for k, v in storage.histories().items()
            if "loss" in k
        )
        non_losses = "  ".join(
            f"{k}: {v.median(storage.count_samples(k, self._window_size)):.4g}"
            for k, v in storage.histories().items()
            if "[metric]" in k
        )
        self.logger.info(
            str.format(
                " {eta}iter: {iter}  {losses}  {non_losses}  {avg_time}{last_time}"
                "{avg_data_time}{last_data_time} lr: {lr}  {memory}",
                eta=f"eta: {eta_string}  " if eta_string else "",
                iter=iteration,
                losses=losses,
                non_losses=non_losses,
                avg_time=(f"time: {avg_iter_time:.4f}  " if avg_iter_time is not None else ""),
                last_time=(f"last_time: {last_iter_time:.4f}  " if last_iter_time is not None else ""),
                avg_data_time=(f"data_time: {avg_data_time:.4f}  " if avg_data_time is not None else ""),
                last_data_time=(f"last_data_time: {last_data_time:.4f}  " if last_data_time is not None else ""),
                lr=lr,
                memory=f"max_mem: {max_mem_mb:.0f}M" if max_mem_mb is not None else "",
            )
        )


class EventStorage:
    """
    The user-facing class that provides metric storage functionalities.

    In the future we may add support for storing / logging other types of data if needed.
    Scalars are kept in a :class:`fvcore.common.history_buffer.HistoryBuffer` per name
    together with the iteration they were put at.
    """

    def __init__(self, start_iter: int = 0) -> None:
        """
        Args:
            start_iter: the iteration number to start with.
        """
        self._history: Dict[str, HistoryBuffer] = defaultdict(HistoryBuffer)
        self._smoothing_hints: Dict[str, bool] = {}
        self._latest_scalars: Dict[str, Tuple[float, int]] = {}
        self._iter = int(start_iter)
        self._current_prefix = ""
        self._vis_data: List[Tuple[str, torch.Tensor, int]] = []
        self._histograms: List[Dict[str, Any]] = []

    def put_image(self, img_name: str, img_tensor: torch.Tensor) -> None:
        """
        Add an image to be shown in TensorBoard at the current iteration.

        Args:
            img_name: the tag of the image.
            img_tensor: (C, H, W) float tensor (or numpy array) with values in [0, 1]
                (or uint8 in [0, 255]), RGB channel order, C in {1, 3}.
        """
        if isinstance(img_tensor, np.ndarray):
            img_tensor = torch.from_numpy(img_tensor)
        if not isinstance(img_tensor, torch.Tensor) or img_tensor.dim() != 3:
            raise ValueError(
                f"put_image('{img_name}', ...) expects a (C, H, W) tensor, got "
                f"{type(img_tensor).__name__} of shape {getattr(img_tensor, 'shape', None)}"
            )
        self._vis_data.append((img_name, img_tensor.detach().cpu(), self._iter))

    def put_scalar(
        self,
        name: str,
        value: Any,
        smoothing_hint: bool = True,
        cur_iter: Optional[int] = None,
    ) -> None:
        """
        Add a scalar `value` to the `HistoryBuffer` associated with `name`.

        Args:
            name: scalar name; prefixed with the current :meth:`name_scope`.
            value: a python number or a 0-dim/1-element tensor.
            smoothing_hint: a "hint" on whether this scalar is noisy and should be
                smoothed (median over a window) when logged. Writers may ignore it.
                The same name must always be put with the same hint.
            cur_iter: the iteration this value belongs to; defaults to ``self.iter``.
        """
        name = self._current_prefix + name
        cur_iter = self._iter if cur_iter is None else int(cur_iter)
        value = float(value)
        self._history[name].update(value, cur_iter)
        self._latest_scalars[name] = (value, cur_iter)

        existing_hint = self._smoothing_hints.get(name)
        if existing_hint is not None:
            assert existing_hint == smoothing_hint, f"Scalar {name} was put with a different smoothing_hint!"
        else:
            self._smoothing_hints[name] = smoothing_hint

    def put_scalars(self, *, smoothing_hint: bool = True, cur_iter: Optional[int] = None, **kwargs: Any) -> None:
        """Put multiple scalars from keyword arguments, e.g.
        ``storage.put_scalars(loss=1.0, accuracy=0.5, smoothing_hint=False)``."""
        for k, v in kwargs.items():
            self.put_scalar(k, v, smoothing_hint=smoothing_hint, cur_iter=cur_iter)

    def put_histogram(self, hist_name: str, hist_tensor: torch.Tensor, bins: int = 1000) -> None:
        """Create a histogram of ``hist_tensor`` values (shown in TensorBoard)."""
        ht_min, ht_max = hist_tensor.min().item(), hist_tensor.max().item()
        hist_counts = torch.histc(hist_tensor.float(), bins=bins)
        hist_edges = torch.linspace(start=ht_min, end=ht_max, steps=bins + 1, dtype=torch.float32)
        hist_params = dict(
            tag=hist_name,
            min=ht_min,
            max=ht_max,
            num=len(hist_tensor),
            sum=float(hist_tensor.sum()),
            sum_squares=float(torch.sum(hist_tensor.float() ** 2)),
            bucket_limits=hist_edges[1:].tolist(),
            bucket_counts=hist_counts.tolist(),
            global_step=self._iter,
        )
        self._histograms.append(hist_params)

    def history(self, name: str) -> HistoryBuffer:
        """
        Returns:
            HistoryBuffer: the scalar history for name. Raises KeyError if never put.
        """
        ret = self._history.get(name, None)
        if ret is None:
            raise KeyError(f"No history metric available for {name}!")
        return ret

    def histories(self) -> Dict[str, HistoryBuffer]:
        """Returns: dict[name -> HistoryBuffer] of all scalars."""
        return self._history

    def restore_history(self, name: str, values: List[Tuple[float, int]], smoothing_hint: bool = True) -> None:
        """Put earlier ``(value, iteration)`` samples of scalar ``name`` into its history,
        without making them its latest value: writers smooth over them but do not write
        them again. Used to continue the smoothing windows of a resumed run exactly.
        Call before any new value of ``name`` is put."""
        for value, itr in values:
            self._history[name].update(float(value), int(itr))
        self._smoothing_hints.setdefault(name, smoothing_hint)

    def latest(self) -> Dict[str, Tuple[float, int]]:
        """Returns: dict[str -> (float, int)]: the latest value of every scalar and the
        iteration it was put at."""
        return self._latest_scalars

    def latest_with_smoothing_hint(self, window_size: int = 20) -> Dict[str, Tuple[float, int]]:
        """
        Like :meth:`latest`, but scalars with ``smoothing_hint=True`` are replaced by the
        median of their values put during the last ``window_size`` iterations.
        """
        result = {}
        for k, (v, itr) in self._latest_scalars.items():
            result[k] = (
                float(self._history[k].median(self.count_samples(k, window_size))) if self._smoothing_hints[k] else v,
                itr,
            )
        return result

    def count_samples(self, name: str, window_size: int = 20) -> int:
        """Number of samples of ``name`` put during the last ``window_size`` iterations
        (counted back from the iteration of its latest sample)."""
        samples = 0
        data = self._history[name].values()
        for _, iter_ in reversed(data):
            if iter_ > data[-1][1] - window_size:
                samples += 1
            else:
                break
        return samples

    def smoothing_hints(self) -> Dict[str, bool]:
        """Returns: dict[name -> bool]: the user-provided smoothing hint per scalar."""
        return self._smoothing_hints

    def step(self) -> None:
        """Increment the iteration counter (the trainer calls it once per iteration)."""
        self._iter += 1

    @property
    def iter(self) -> int:
        """The current iteration number. With :class:`TrainerBase`, equal to
        ``trainer.iter`` during training."""
        return self._iter

    @iter.setter
    def iter(self, val: int) -> None:
        self._iter = int(val)

    @property
    def iteration(self) -> int:
        # for backward compatibility with detectron2
        return self._iter

    def __enter__(self) -> EventStorage:
        _CURRENT_STORAGE_STACK.append(self)
        return self

    def __exit__(self, exc_type, exc_val, exc_tb) -> None:
        assert _CURRENT_STORAGE_STACK[-1] == self, "EventStorage contexts exited out of order"
        _CURRENT_STORAGE_STACK.pop()

    @contextmanager
    def name_scope(self, name: str) -> Iterator[None]:
        """Scalars put inside the context are named ``"{name}/{scalar_name}"``."""
        old_prefix = self._current_prefix
        self._current_prefix = name.rstrip("/") + "/"
        try:
            yield
        finally:
            self._current_prefix = old_prefix

    def clear_images(self) -> None:
        """Delete all stored images (writers call it after writing them)."""
        self._vis_data = []

    def clear_histograms(self) -> None:
        """Delete all stored histograms (writers call it after writing them)."""
        self._histograms = []

    @property
    def vis_data(self) -> List[Tuple[str, torch.Tensor, int]]:
        """Stored images: list of (name, (C,H,W) tensor, iteration)."""
        return self._vis_data
