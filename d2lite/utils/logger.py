"""Logging setup (same semantics as ``detectron2.utils.logger``): rank 0 logs to the
console, every rank logs to a file under the output directory."""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
from collections import Counter
from typing import Optional

__all__ = ["setup_logger", "log_first_n", "log_every_n", "log_every_n_seconds"]


class _ColorfulFormatter(logging.Formatter):
    """Colours the logger name green and WARNING/ERROR level names red."""

    def __init__(self, *args, **kwargs) -> None:
        self._root_name = kwargs.pop("root_name") + "."
        self._abbrev_name = kwargs.pop("abbrev_name", "")
        if len(self._abbrev_name):
            self._abbrev_name = self._abbrev_name + "."
        super().__init__(*args, **kwargs)

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.name = record.name.replace(self._root_name, self._abbrev_name)
        log = super().formatMessage(record)
        if record.levelno == logging.WARNING:
            prefix = "\x1b[31mWARNING\x1b[0m"  # red
        elif record.levelno in (logging.ERROR, logging.CRITICAL):
            prefix = "\x1b[31;5mERROR\x1b[0m"  # blinking red
        else:
            return log
        return prefix + " " + log


@functools.lru_cache  # so that calling setup_logger multiple times won't add many handlers
def setup_logger(
    output: Optional[str] = None,
    distributed_rank: int = 0,
    *,
    color: bool = True,
    name: str = "d2lite",
    abbrev_name: Optional[str] = None,
) -> logging.Logger:
    """
    Initialize the logger ``name`` and set its verbosity level to "DEBUG".

    Args:
        output: a file name (ending in ".txt" or ".log") or a directory to save log
            files to. A directory gets ``output/log.txt``. Rank r > 0 writes
            ``log.txt.rank{r}``. None: no file.
        distributed_rank: rank of this process; only rank 0 logs to the console.
        color: colourful console output.
        name: the root module name of this logger.
        abbrev_name: an abbreviation of the module name shown in the console (to avoid
            long names). Defaults to "d2l" for "d2lite", else the name itself.

    Returns:
        logging.Logger: the configured logger. Calling again with the same arguments
        returns the same logger without adding handlers (the call is cached).
    """
    logger = logging.getLogger(name)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False

    if abbrev_name is None:
        abbrev_name = "d2l" if name == "d2lite" else name

    plain_formatter = logging.Formatter("[%(asctime)s] %(name)s %(levelname)s: %(message)s", datefmt="%m/%d %H:%M:%S")
    # stdout logging: master only
    if distributed_rank == 0:
        ch = logging.StreamHandler(stream=sys.stdout)
        ch.setLevel(logging.DEBUG)
        if color:
            formatter: logging.Formatter = _ColorfulFormatter(
                "\x1b[32m[%(asctime)s %(name)s]: \x1b[0m%(message)s",
                datefmt="%m/%d %H:%M:%S",
                root_name=name,
                abbrev_name=str(abbrev_name),
            )
        else:
            formatter = plain_formatter
        ch.setFormatter(formatter)
        logger.addHandler(ch)

    # file logging: all workers
    if output is not None:
        if output.endswith(".txt") or output.endswith(".log"):
            filename = output
        else:
            filename = os.path.join(output, "log.txt")
        if distributed_rank > 0:
            filename = filename + f".rank{distributed_rank}"
        os.makedirs(os.path.dirname(os.path.abspath(filename)), exist_ok=True)

        fh = logging.StreamHandler(_cached_log_stream(filename))
        fh.setLevel(logging.DEBUG)
        fh.setFormatter(plain_formatter)
        logger.addHandler(fh)

    return logger


# Cache the opened file object, so that different calls to `setup_logger` with the
# same file name can safely write to the same file.
@functools.cache
def _cached_log_stream(filename: str):
    # line-buffered so that each log line reaches the file even if the process dies
    return open(filename, "a", buffering=1)


def _find_caller():
    """Returns: (module name, (filename, lineno, function name)) of the caller of the
    log_* function."""
    frame = sys._getframe(2)
    while frame:
        code = frame.f_code
        if os.path.join("utils", "logger.") not in code.co_filename:
            mod_name = frame.f_globals.get("__name__", "__main__")
            if mod_name == "__main__":
                mod_name = "d2lite"
            return mod_name, (code.co_filename, frame.f_lineno, code.co_name)
        frame = frame.f_back
    return "d2lite", ("", 0, "")


_LOG_COUNTER: Counter = Counter()
_LOG_TIMER: dict = {}


def log_first_n(lvl: int, msg: str, n: int = 1, *, name: Optional[str] = None, key: str = "caller") -> None:
    """
    Log only for the first n times.

    Args:
        lvl: the logging level.
        msg: the message.
        n: how many times to log.
        name: name of the logger to use. Defaults to the caller's module.
        key: "caller", "message" or a tuple of them: what identifies a repeated call.
    """
    if isinstance(key, str):
        key = (key,)
    assert len(key) > 0
    caller_module, caller_key = _find_caller()
    hash_key: tuple = ()
    if "caller" in key:
        hash_key = hash_key + caller_key
    if "message" in key:
        hash_key = hash_key + (msg,)
    _LOG_COUNTER[hash_key] += 1
    if _LOG_COUNTER[hash_key] <= n:
        logging.getLogger(name or caller_module).log(lvl, msg)


def log_every_n(lvl: int, msg: str, n: int = 1, *, name: Optional[str] = None) -> None:
    """Log once per n calls (the 1st, (n+1)th, ... call from the same place)."""
    caller_module, key = _find_caller()
    _LOG_COUNTER[key] += 1
    if n == 1 or _LOG_COUNTER[key] % n == 1:
        logging.getLogger(name or caller_module).log(lvl, msg)


def log_every_n_seconds(lvl: int, msg: str, n: float = 1, *, name: Optional[str] = None) -> None:
    """Log no more than once per n seconds from the same place."""
    caller_module, key = _find_caller()
    last_logged = _LOG_TIMER.get(key, None)
    current_time = time.time()
    if last_logged is None or current_time - last_logged >= n:
        logging.getLogger(name or caller_module).log(lvl, msg)
        _LOG_TIMER[key] = current_time
