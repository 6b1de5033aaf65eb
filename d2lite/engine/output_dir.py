"""The output directory of a run: one run at a time, no silent mixing of two runs.

A training run's ``train.output_dir`` is its record (config, manifest, logs, metrics,
checkpoints). This module keeps it consistent:

* :class:`OutputDirLock`: an exclusive lock (``run.lock``, holding the pid, host, start
  time and command line of its owner) taken for the whole run and removed at exit. A
  second run into a locked directory stops at once, naming the process that holds it.
  The lock is an ``fcntl.flock`` on the file, which the kernel releases when its
  process dies: a lock file left by a crashed or killed run is *stale*; it is reported
  and taken over.
* :func:`previous_run_files` / :func:`clear_previous_run`: the files a finished or
  interrupted run leaves (checkpoints, ``last_checkpoint``, ``metrics.json``,
  TensorBoard events, ...), so that a fresh run can refuse to mix with them, or
  delete them when asked to (``--overwrite``).
* :func:`remove_temporary_files`: the ``.NAME.XXXXXXXX.tmp`` files of an atomic save
  that was killed (SIGKILL, power loss) before it could clean up.
* :func:`eval_output_dir`: where ``--eval-only`` writes, so that an evaluation never
  replaces a training run's ``config.yaml``/``manifest.json``.
"""

from __future__ import annotations

import datetime
import errno
import json
import logging
import os
import re
import shutil
import socket
import sys
from typing import Any, Dict, List, Optional

try:
    import fcntl
except ImportError:  # Windows: the pid in the lock file is all there is
    fcntl = None

__all__ = [
    "LOCK_FILE",
    "OutputDirError",
    "OutputDirLock",
    "clear_previous_run",
    "eval_output_dir",
    "previous_run_files",
    "remove_temporary_files",
]

logger = logging.getLogger(__name__)

LOCK_FILE = "run.lock"
"""Name of the lock file in a locked output directory."""

# A previous run's results: a fresh run must not append to or mix with these.
_RUN_FILE_PATTERNS = [
    r".*\.pth",  # checkpoints (model_0000199.pth, model_final.pth, model_best.pth, ...)
    r"last_checkpoint",
    r"metrics\.json",
    r"events\.out\.tfevents\..*",
]
# Also written by a run; deleted with the results by clear_previous_run.
_RUN_RECORD_FILES = ["config.yaml", "config.yaml.pkl", "manifest.json", r"log\.txt(\.rank\d+)?"]
_RUN_RECORD_DIRS = ["inference", "eval"]
# _atomic_write's temporary files: ".{basename}.{8 random chars}.tmp"; manifest.json.tmp.
_TEMP_FILE = re.compile(r"^\..+\.[A-Za-z0-9_]+\.tmp$|^manifest\.json\.tmp$")


class OutputDirError(RuntimeError):
    """The output directory cannot be used as asked (locked, holds another run, not writable)."""


def _matches(name: str, patterns: List[str]) -> bool:
    return any(re.fullmatch(p, name) for p in patterns)


def previous_run_files(output_dir: str) -> List[str]:
    """Names (sorted) of the checkpoints, ``last_checkpoint``, ``metrics.json`` and
    TensorBoard event files in ``output_dir`` (top level); [] if it does not exist."""
    if not os.path.isdir(output_dir):
        return []
    return sorted(n for n in os.listdir(output_dir) if _matches(n, _RUN_FILE_PATTERNS))


def clear_previous_run(output_dir: str) -> List[str]:
    """Delete what a previous run wrote into ``output_dir``: checkpoints,
    ``last_checkpoint``, metrics, TensorBoard events, ``config.yaml``,
    ``manifest.json``, ``log.txt*`` and the ``inference/`` and ``eval/`` folders.
    Other files (the user's own) are kept. Returns the deleted names."""
    removed = []
    for name in sorted(os.listdir(output_dir)):
        path = os.path.join(output_dir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            if name in _RUN_RECORD_DIRS:
                shutil.rmtree(path)
                removed.append(name + "/")
        elif _matches(name, _RUN_FILE_PATTERNS + _RUN_RECORD_FILES) or _TEMP_FILE.match(name):
            os.unlink(path)
            removed.append(name)
    return removed


def remove_temporary_files(output_dir: str) -> List[str]:
    """Delete the temporary files of interrupted atomic saves (``.model_0000199.pth.
    k2j4x9ab.tmp``, ``.last_checkpoint.*.tmp``, ``manifest.json.tmp``) in ``output_dir``.
    Call it only while holding the directory's lock (no other process is saving).
    Returns the deleted names."""
    if not os.path.isdir(output_dir):
        return []
    removed = []
    for name in sorted(os.listdir(output_dir)):
        path = os.path.join(output_dir, name)
        if _TEMP_FILE.match(name) and os.path.isfile(path):
            os.unlink(path)
            removed.append(name)
    return removed


def eval_output_dir(output_dir: str, checkpoint: str) -> str:
    """Where an evaluation-only run of ``checkpoint`` writes its config, manifest, log and
    results: ``output_dir`` itself when it holds no training run (no checkpoints,
    ``last_checkpoint``, metrics or events), else ``{output_dir}/eval/{checkpoint file
    name without extension}``, so that the training run's records stay untouched."""
    if not previous_run_files(output_dir):
        return output_dir
    path = checkpoint.split("?", 1)[0] if not os.path.isfile(checkpoint) else checkpoint  # load options
    name = os.path.splitext(os.path.basename(path.rstrip("/")))[0] or "checkpoint"
    return os.path.join(output_dir, "eval", name)


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _describe(owner: Dict[str, Any]) -> str:
    if not owner:
        return "an unknown process (the lock file is empty or unreadable)"
    command = " ".join(str(c) for c in owner.get("command_line", []))
    return (
        f"process {owner.get('pid', '?')} on {owner.get('hostname', '?')} (started {owner.get('started', '?')}"
        + (f": {command}" if command else "")
        + ")"
    )


class OutputDirLock:
    """Exclusive lock of an output directory for the duration of a run.

    Example::

        with OutputDirLock("output/my_run"):
            ...  # train; a second run into output/my_run raises OutputDirError

    :meth:`acquire` creates the directory if needed, then takes ``{output_dir}/run.lock``
    or raises :class:`OutputDirError` naming the directory and the owner's pid, host,
    start time and command. A lock file whose owner is gone (the run crashed or was
    killed) is stale: it is taken over and :attr:`stale_owner` describes the dead
    run (also logged as a warning). :meth:`release` (also at interpreter exit) removes
    the file.
    """

    def __init__(self, output_dir: str) -> None:
        self.output_dir = output_dir
        self.path = os.path.join(output_dir, LOCK_FILE)
        self.stale_owner: Optional[Dict[str, Any]] = None
        self._fd: Optional[int] = None

    @property
    def locked(self) -> bool:
        return self._fd is not None

    def _read_owner(self, fd: Optional[int] = None) -> Dict[str, Any]:
        try:
            if fd is not None:
                os.lseek(fd, 0, os.SEEK_SET)
                raw = os.read(fd, 1 << 16)
            else:
                with open(self.path, "rb") as f:
                    raw = f.read(1 << 16)
            owner = json.loads(raw.decode("utf-8"))
            return owner if isinstance(owner, dict) else {}
        except (OSError, ValueError):
            return {}

    def acquire(self) -> OutputDirLock:
        if self._fd is not None:
            return self
        os.makedirs(self.output_dir, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if fcntl is not None:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except OSError as e:
                        if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                            raise
                        raise OutputDirError(
                            f"train.output_dir={self.output_dir} is in use by {_describe(self._read_owner(fd))}. "
                            "Wait for that run to end, stop it, or choose another train.output_dir."
                        ) from None
                    # The previous owner may have removed the file between our open and flock.
                    if os.path.exists(self.path) and os.path.samestat(os.fstat(fd), os.stat(self.path)):
                        break
                    os.close(fd)
                    continue
                owner = self._read_owner(fd)  # no flock: trust a live pid on this host
                pid = owner.get("pid")
                if isinstance(pid, int) and pid != os.getpid() and owner.get("hostname") == socket.gethostname():
                    if _pid_running(pid):
                        raise OutputDirError(f"train.output_dir={self.output_dir} is in use by {_describe(owner)}.")
                break
            except BaseException:
                os.close(fd)
                raise
        previous = self._read_owner(fd)
        if previous or os.fstat(fd).st_size:
            self.stale_owner = previous
            logger.warning(
                f"{self.path} was left by {_describe(previous)}, which is no longer running: that run ended "
                "without releasing the directory (crash or kill). Taking the lock over."
            )
        record = {
            "pid": os.getpid(),
            "hostname": socket.gethostname(),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command_line": [sys.executable] + sys.argv,
        }
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(record).encode("utf-8"))
        os.fsync(fd)
        self._fd = fd
        import atexit

        atexit.register(self.release)
        return self

    def release(self) -> None:
        """Remove the lock file and release the lock (no-op if not held)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if os.path.exists(self.path) and os.path.samestat(os.fstat(fd), os.stat(self.path)):
                os.unlink(self.path)
        finally:
            os.close(fd)  # releases the flock

    def __enter__(self) -> OutputDirLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
