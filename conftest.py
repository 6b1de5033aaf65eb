"""Suite-wide test isolation, for ``tests/`` and ``projects/*/tests``.

Every test runs with the same process-global torch state, whatever ran before it:

* ``_isolate_global_state`` (autouse) restores the RNG states of torch, numpy and
  ``random`` after each test, and *fails* a test that leaves torch's intra-op thread
  count, default dtype, grad mode, deterministic-algorithms flag or the working
  directory changed (the state is restored first, so later tests are unaffected).
  Change such state inside a ``try/finally`` or with ``monkeypatch``.
* It also puts the ``d2lite`` and ``fvcore`` loggers back as they were when the session
  started (level, ``propagate``, handlers; handlers added since are closed) and clears
  ``setup_logger``'s cache, silently: tests and module fixtures run tools' ``main()``
  in-process, and a tool that configures logging (e.g.
  ``setup_logger(name="d2lite").setLevel(WARNING)``) must not hide the log records a later
  test reads through ``caplog``.
* ``--threads N`` (or ``D2LITE_TEST_THREADS=N``) runs the whole suite with ``N``
  intra-op threads, in this process and in the processes tests start
  (``OMP_NUM_THREADS``). CI runs the slow tests once more with ``--threads 1``,
  so a test that holds for one float path only fails here, not on a user's machine.
* ``--shuffle-seed S`` runs the tests in a random order drawn from ``S``
  (finds order dependence; the order is printed in the header).
"""

from __future__ import annotations

import logging
import os
import random
from typing import Any, Callable, Dict, Iterator, List, Tuple

import numpy as np
import pytest
import torch


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("d2lite")
    group.addoption(
        "--threads",
        type=int,
        default=int(os.environ.get("D2LITE_TEST_THREADS", "0")) or None,
        help="torch intra-op threads for the whole run (also OMP_NUM_THREADS for child processes)",
    )
    group.addoption("--shuffle-seed", type=int, default=None, help="run the tests in a random order from this seed")


def pytest_configure(config: pytest.Config) -> None:
    threads = config.getoption("--threads")
    if threads:
        os.environ["OMP_NUM_THREADS"] = str(threads)
        os.environ["MKL_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


_SESSION_LOGGERS: Dict[str, Tuple[int, bool, bool, List[logging.Handler]]] = {}


def pytest_sessionstart(session: pytest.Session) -> None:
    _SESSION_LOGGERS.update(_logger_states())


def pytest_report_header(config: pytest.Config) -> List[str]:
    lines = [f"torch {torch.__version__}, intra-op threads: {torch.get_num_threads()}"]
    seed = config.getoption("--shuffle-seed")
    if seed is not None:
        lines.append(f"test order shuffled with --shuffle-seed {seed}")
    return lines


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    seed = config.getoption("--shuffle-seed")
    if seed is not None:
        random.Random(seed).shuffle(items)


def _guarded_state() -> Dict[str, Tuple[Callable[[], Any], Callable[[Any], None]]]:
    """State a test must leave as it found it: name -> (read, restore)."""
    return {
        "torch.get_num_threads()": (torch.get_num_threads, torch.set_num_threads),
        "torch.get_default_dtype()": (torch.get_default_dtype, torch.set_default_dtype),
        "torch.is_grad_enabled()": (torch.is_grad_enabled, torch.set_grad_enabled),
        "torch.are_deterministic_algorithms_enabled()": (
            lambda: (
                torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled(),
            ),
            lambda v: torch.use_deterministic_algorithms(v[0], warn_only=v[1]),
        ),
        "os.getcwd()": (os.getcwd, os.chdir),
    }


_LOGGER_ROOTS = ("d2lite", "fvcore")


def _logger_states() -> Dict[str, Tuple[int, bool, bool, List[logging.Handler]]]:
    """name -> (level, propagate, disabled, handlers) of the loggers under ``_LOGGER_ROOTS``."""
    names = [n for n in list(logging.Logger.manager.loggerDict) if n.split(".")[0] in _LOGGER_ROOTS]
    states = {}
    for name in names:
        lg = logging.getLogger(name)
        states[name] = (lg.level, lg.propagate, lg.disabled, list(lg.handlers))
    return states


def _restore_loggers(before: Dict[str, Tuple[int, bool, bool, List[logging.Handler]]]) -> None:
    changed = False
    for name, state in _logger_states().items():
        level, propagate, disabled, handlers = before.get(name, (logging.NOTSET, True, False, []))
        if state == (level, propagate, disabled, handlers):
            continue
        changed = True
        lg = logging.getLogger(name)
        lg.setLevel(level)
        lg.propagate, lg.disabled = propagate, disabled
        for handler in list(lg.handlers):
            if handler not in handlers:
                lg.removeHandler(handler)
                handler.close()
        for handler in handlers:
            if handler not in lg.handlers:
                lg.addHandler(handler)
    if changed:
        from d2lite.utils.logger import setup_logger

        setup_logger.cache_clear()  # its cached loggers' handlers may be gone: the next call sets them up


@pytest.fixture(autouse=True)
def _isolate_global_state() -> Iterator[None]:
    guarded = _guarded_state()
    before = {name: read() for name, (read, _) in guarded.items()}
    rng = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    yield
    _restore_loggers(_SESSION_LOGGERS)  # as at the start: a module fixture's logging must not leak either
    torch.set_rng_state(rng[0])
    np.random.set_state(rng[1])
    random.setstate(rng[2])
    leaked = []
    for name, (read, restore) in guarded.items():
        after = read()
        if after != before[name]:
            restore(before[name])
            leaked.append(f"{name}: {before[name]!r} -> {after!r}")
    if leaked:
        pytest.fail(
            "the test changed process-global state and did not restore it (restored now): "
            + "; ".join(leaked)
            + ". Restore it in a try/finally or use monkeypatch.",
            pytrace=False,
        )
