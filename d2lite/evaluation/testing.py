"""Helpers to print, check and flatten evaluation results."""

import logging
import pprint
from collections.abc import Mapping
from typing import Any, Dict, Sequence, Tuple

import numpy as np

__all__ = ["print_csv_format", "verify_results", "flatten_results_dict"]

logger = logging.getLogger(__name__)


def print_csv_format(results: Mapping) -> None:
    """Log ``{task: {metric: value}}`` results in a copy-paste friendly format::

        copypaste: Task: bbox
        copypaste: AP,AP50,AP75,APs,APm,APl
        copypaste: 41.2000,60.1000,44.3000,25.0000,45.1000,53.9000

    Per-class metrics (names containing "-", e.g. "AP-circle") are left out.
    """
    if not isinstance(results, Mapping):
        raise TypeError(f"print_csv_format expects a dict of results, got {type(results).__name__}: {results!r}")
    for task, res in results.items():
        if isinstance(res, Mapping):
            important = [(k, v) for k, v in res.items() if "-" not in k]
            logger.info(f"copypaste: Task: {task}")
            logger.info("copypaste: " + ",".join(k for k, _ in important))
            logger.info("copypaste: " + ",".join(f"{v:.4f}" for _, v in important))
        else:
            logger.info(f"copypaste: {task}={res}")


def verify_results(results: Mapping, expected_results: Sequence[Tuple[str, str, float, float]]) -> bool:
    """Check results against expectations.

    Args:
        results: ``{task: {metric: value}}``.
        expected_results: ``(task, metric, expected value, tolerance)`` tuples, e.g.
            ``[("bbox", "AP", 38.5, 0.2)]``.

    Returns:
        True if every metric exists, is finite and is within tolerance; otherwise
        logs each failure and the full results and returns False.
    """
    ok = True
    for task, metric, expected, tolerance in expected_results:
        actual = results.get(task, {}).get(metric)
        if actual is None:
            logger.error(f"Result verification: {task}/{metric} is missing from the results.")
            ok = False
        elif not np.isfinite(actual):
            logger.error(f"Result verification: {task}/{metric} is {actual}.")
            ok = False
        elif abs(actual - expected) > tolerance:
            logger.error(f"Result verification: {task}/{metric} = {actual:.4f}, expected {expected} +- {tolerance}.")
            ok = False
    if ok:
        logger.info("Results verification passed.")
    else:
        logger.error("Result verification failed! Expected: " + str(list(expected_results)))
        logger.error("Actual results: " + pprint.pformat(results))
    return ok


def flatten_results_dict(results: Mapping) -> Dict[str, Any]:
    """Flatten nested dicts into one level with "/"-joined keys:
    ``{"bbox": {"AP": 40.0}}`` -> ``{"bbox/AP": 40.0}``."""
    flat: Dict[str, Any] = {}
    for k, v in results.items():
        if isinstance(v, Mapping):
            for kk, vv in flatten_results_dict(v).items():
                flat[f"{k}/{kk}"] = vv
        else:
            flat[k] = v
    return flat
