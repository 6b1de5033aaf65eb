"""Dataset evaluators and the inference loop that feeds them (detectron2 semantics)."""

import datetime
import logging
import time
from collections import OrderedDict, abc
from contextlib import ExitStack, contextmanager
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Union

import torch
from torch import nn

from d2lite.utils.comm import get_world_size, is_main_process
from d2lite.utils.logger import log_every_n_seconds

__all__ = ["DatasetEvaluator", "DatasetEvaluators", "inference_on_dataset", "inference_context"]

logger = logging.getLogger(__name__)


class DatasetEvaluator:
    """Base class of a dataset evaluator.

    :func:`inference_on_dataset` calls :meth:`reset` once, :meth:`process` with every
    batch of model inputs and outputs, and :meth:`evaluate` at the end.
    """

    def reset(self) -> None:
        """Prepare for a new round of evaluation (drop everything processed so far)."""

    def process(self, inputs: List[Dict[str, Any]], outputs: List[Dict[str, Any]]) -> None:
        """Accumulate one batch.

        Args:
            inputs: the list of dicts given to the model.
            outputs: the model's return value for ``inputs``.
        """

    def evaluate(self) -> Optional[Dict[str, Any]]:
        """Summarise everything processed since :meth:`reset`.

        Returns:
            ``{task name: {metric name: score}}``, e.g. ``{"bbox": {"AP50": 80.0}}``;
            may be empty or None in non-main processes.
        """
        return None


class DatasetEvaluators(DatasetEvaluator):
    """Runs several evaluators together and merges their results (task keys must differ)."""

    def __init__(self, evaluators: List[DatasetEvaluator]):
        super().__init__()
        self._evaluators = list(evaluators)

    def reset(self) -> None:
        for evaluator in self._evaluators:
            evaluator.reset()

    def process(self, inputs: List[Dict[str, Any]], outputs: List[Dict[str, Any]]) -> None:
        for evaluator in self._evaluators:
            evaluator.process(inputs, outputs)

    def evaluate(self) -> Dict[str, Any]:
        results: Dict[str, Any] = OrderedDict()
        for evaluator in self._evaluators:
            result = evaluator.evaluate()
            if is_main_process() and result is not None:
                for k, v in result.items():
                    if k in results:
                        raise KeyError(
                            f"Two evaluators produced results with the same key {k!r} "
                            f"(the second is {type(evaluator).__name__})."
                        )
                    results[k] = v
        return results


@contextmanager
def inference_context(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode for the duration of the context, then restore its
    previous training mode (also when the body raises)."""
    training_mode = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(training_mode)


def inference_on_dataset(
    model: Union[nn.Module, Callable[[Any], Any]],
    data_loader: Iterable[Any],
    evaluator: Union[DatasetEvaluator, List[DatasetEvaluator], None],
    callbacks: Optional[Dict[str, Callable[[], None]]] = None,
) -> Dict[str, Any]:
    """Run ``model`` on every batch of ``data_loader`` under ``torch.no_grad()`` (an
    ``nn.Module`` in eval mode, restored afterwards) and evaluate the outputs.

    Progress is logged at most every 5 s after the warm-up batches ("Inference done
    11/200. Dataloading: ... s/iter. Inference: ... Eval: ... Total: ... ETA=...").
    The first ``min(5, len - 1)`` batches are excluded from the reported timings.

    Args:
        model: called as ``model(inputs)`` on each element of ``data_loader``.
        data_loader: an iterable with a length (e.g. ``build_detection_test_loader``).
        evaluator: a DatasetEvaluator, a list of them, or None to only run (and time)
            the model.
        callbacks: optional functions with no arguments under the keys "on_start",
            "before_inference", "after_inference", "on_end".

    Returns:
        ``evaluator.evaluate()`` ({} when it returns None or when ``evaluator`` is None).
    """
    try:
        total = len(data_loader)  # type: ignore[arg-type]
    except TypeError as e:
        raise TypeError(
            f"inference_on_dataset needs a data_loader with a length; got {type(data_loader).__name__}"
        ) from e
    unknown = set(callbacks or {}) - {"on_start", "before_inference", "after_inference", "on_end"}
    if unknown:
        raise KeyError(
            f"Unknown callback names {sorted(unknown)}; use on_start, before_inference, after_inference, on_end."
        )
    callbacks = callbacks or {}

    def call(name: str) -> None:
        if name in callbacks:
            callbacks[name]()

    num_devices = get_world_size()
    logger.info(f"Start inference on {total} batches")
    if evaluator is None:
        evaluator = DatasetEvaluators([])
    elif isinstance(evaluator, abc.MutableSequence):
        evaluator = DatasetEvaluators(evaluator)
    evaluator.reset()

    num_warmup = max(min(5, total - 1), 0)
    start_time = time.perf_counter()
    total_data_time = total_compute_time = total_eval_time = 0.0
    timed_images = 0
    with ExitStack() as stack:
        if isinstance(model, nn.Module):
            stack.enter_context(inference_context(model))
        stack.enter_context(torch.no_grad())

        call("on_start")
        start_data_time = time.perf_counter()
        for idx, inputs in enumerate(data_loader):
            total_data_time += time.perf_counter() - start_data_time
            if idx == num_warmup:
                start_time = time.perf_counter()
                total_data_time = total_compute_time = total_eval_time = 0.0
                timed_images = 0
            timed_images += len(inputs) if isinstance(inputs, abc.Sized) else 1

            start_compute_time = time.perf_counter()
            call("before_inference")
            outputs = model(inputs)
            call("after_inference")
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            total_compute_time += time.perf_counter() - start_compute_time

            start_eval_time = time.perf_counter()
            evaluator.process(inputs, outputs)
            total_eval_time += time.perf_counter() - start_eval_time

            iters_after_start = idx + 1 - num_warmup * int(idx >= num_warmup)
            data_per_iter = total_data_time / iters_after_start
            compute_per_iter = total_compute_time / iters_after_start
            eval_per_iter = total_eval_time / iters_after_start
            total_per_iter = (time.perf_counter() - start_time) / iters_after_start
            if idx >= num_warmup * 2 or compute_per_iter > 5:
                eta = datetime.timedelta(seconds=int(total_per_iter * (total - idx - 1)))
                log_every_n_seconds(
                    logging.INFO,
                    f"Inference done {idx + 1}/{total}. Dataloading: {data_per_iter:.4f} s/iter. "
                    f"Inference: {compute_per_iter:.4f} s/iter. Eval: {eval_per_iter:.4f} s/iter. "
                    f"Total: {total_per_iter:.4f} s/iter. ETA={eta}",
                    n=5,
                    name=__name__,
                )
            start_data_time = time.perf_counter()
        call("on_end")

    # Time of this worker only (before any synchronisation inside evaluate()).
    total_time = time.perf_counter() - start_time
    timed_iters = max(total - num_warmup, 1)
    logger.info(
        f"Total inference time: {datetime.timedelta(seconds=total_time)} "
        f"({total_time / timed_iters:.6f} s / iter per device, on {num_devices} devices; "
        f"{total_time / max(timed_images, 1):.6f} s / image)"
    )
    logger.info(
        f"Total inference pure compute time: {datetime.timedelta(seconds=int(total_compute_time))} "
        f"({total_compute_time / timed_iters:.6f} s / iter per device, on {num_devices} devices)"
    )

    results = evaluator.evaluate()
    # An evaluator may return None in non-main processes.
    return {} if results is None else results
