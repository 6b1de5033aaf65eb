"""Stop signals: a scheduler's or a user's request to stop training cleanly.

Clusters send SIGTERM (preemption, ``scancel``) or a configured signal (SLURM's
``--signal=USR1@120``) shortly before killing a job; a user presses Ctrl-C (SIGINT).
:class:`StopSignals` turns each of these into a request that the trainer handles at the
end of the running iteration (:class:`d2lite.engine.exact_resume.ExactResume`): all
ranks stop after the same iteration, a checkpoint is saved atomically (with
``last_checkpoint``), the writers are flushed and the process exits with status
``128 + signal number`` (the shell's convention, e.g. 143 for SIGTERM) through
:class:`TrainingInterrupted`, after logging the command line that resumes the run.

The first signal starts the stop; later ones are logged and ignored, so nothing can
interrupt the checkpoint being written (SIGKILL still can, and the atomic save then
leaves the previous checkpoint intact).
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
from typing import Callable, Dict, Iterable, Optional, Sequence, Tuple, Union

__all__ = ["DEFAULT_STOP_SIGNALS", "StopSignals", "TrainingInterrupted", "parse_signals", "resume_command"]

DEFAULT_STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1")
"""The default of ``train.stop_signals``."""

_UNCATCHABLE = {"SIGKILL", "SIGSTOP"}


def parse_signals(names: Iterable[Union[str, int]], key: str = "train.stop_signals") -> Tuple[signal.Signals, ...]:
    """Signals from names (``"SIGTERM"``, ``"TERM"``, case-insensitive) or numbers.

    Raises:
        ValueError: an unknown or uncatchable signal; the message names ``key``.
    """
    if isinstance(names, (str, int)):
        names = [names]
    parsed = []
    for name in names:
        try:
            if isinstance(name, int) and not isinstance(name, bool):
                sig = signal.Signals(name)
            else:
                text = str(name).strip().upper()
                sig = signal.Signals[text if text.startswith("SIG") else "SIG" + text]
        except (KeyError, ValueError):
            known = ", ".join(DEFAULT_STOP_SIGNALS + ("SIGUSR2", "SIGHUP"))
            raise ValueError(f"{key}: unknown signal {name!r}; use names such as {known}.") from None
        if sig.name in _UNCATCHABLE:
            raise ValueError(f"{key}: {sig.name} cannot be caught; remove it.")
        if sig not in parsed:
            parsed.append(sig)
    return tuple(parsed)


def _write_stderr(message: str) -> None:
    # os.write is safe inside a signal handler (a buffered sys.stderr.write could be
    # re-entered while the interrupted code is writing to it).
    try:
        os.write(2, message.encode())
    except OSError:
        pass


class StopSignals:
    """Handlers that record the first stop signal instead of ending the process.

    ``install()`` (main thread only) replaces the handlers of ``signals`` and
    ``uninstall()`` restores the previous ones. :attr:`received` is the first signal
    received since ``install()``, or None.
    """

    def __init__(self, signals: Sequence[Union[str, int]] = DEFAULT_STOP_SIGNALS) -> None:
        self.signals = parse_signals(signals)
        self.received: Optional[signal.Signals] = None
        self.stopping_message = "stopping after the current iteration and saving a checkpoint"
        self._previous: Dict[signal.Signals, Union[Callable, int, None]] = {}

    def install(self) -> bool:
        """Install the handlers; returns False (and installs nothing) outside the main thread."""
        if threading.current_thread() is not threading.main_thread():
            return False
        self.received = None
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return True

    def uninstall(self) -> None:
        """Restore the handlers that were installed before :meth:`install`."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    @property
    def installed(self) -> bool:
        return bool(self._previous)

    def _handle(self, signum: int, frame) -> None:
        sig = signal.Signals(signum)
        pid = os.getpid()
        if self.received is None:
            self.received = sig
            _write_stderr(f"\nd2lite (pid {pid}): received {sig.name}: {self.stopping_message}.\n")
        else:
            _write_stderr(
                f"\nd2lite (pid {pid}): received {sig.name}, already stopping on {self.received.name}: "
                f"ignored while the checkpoint is written (SIGKILL aborts at once; the previous checkpoint "
                "stays intact).\n"
            )


class TrainingInterrupted(BaseException):
    """Raised by the trainer after it stopped on a signal and saved a checkpoint.

    Like KeyboardInterrupt it derives from BaseException, so that ``except Exception``
    blocks do not swallow a stop request. ``exit_code`` is ``128 + signal number``.
    """

    def __init__(
        self,
        sig: Union[signal.Signals, int],
        iteration: Optional[int] = None,
        max_iter: Optional[int] = None,
        checkpoint: Optional[str] = None,
        rank: Optional[int] = None,
        command: Optional[str] = None,
    ) -> None:
        self.signal = signal.Signals(sig)
        self.iteration = iteration
        self.max_iter = max_iter
        self.checkpoint = checkpoint
        self.rank = rank
        self.command = command
        super().__init__(self.message)

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signal)

    @property
    def message(self) -> str:
        who = f" (received by rank {self.rank})" if self.rank is not None else ""
        text = f"Training stopped by {self.signal.name}{who}"
        if self.iteration is not None:
            of = f" of {self.max_iter}" if self.max_iter is not None else ""
            text += f" after iteration {self.iteration}{of}"
        if self.checkpoint:
            text += f"; checkpoint: {self.checkpoint}"
        if self.command:
            text += f". Resume with:\n    {self.command}"
        return text + f"\n(exit status {self.exit_code} = 128 + {self.signal.name})"

    @staticmethod
    def from_exit_code(code: int, signals: Sequence[Union[str, int]] = DEFAULT_STOP_SIGNALS):
        """The TrainingInterrupted of a child process that exited with ``code``, if ``code``
        is ``128 +`` one of ``signals``; else None."""
        for sig in parse_signals(signals):
            if code == 128 + int(sig):
                return TrainingInterrupted(sig)
        return None


def resume_command(argv: Optional[Sequence[str]] = None, cwd: Optional[str] = None) -> str:
    """The command line that resumes this run: ``cd <cwd> && <python> <argv> --resume``
    (``--resume`` placed right after the script, before the config overrides). Under
    torchrun or srun, note that the same launcher must start it."""
    argv = list(sys.argv if argv is None else argv)
    script, rest = (argv[0], argv[1:]) if argv else ("<script>", [])
    rest = [a for a in rest if a != "--resume"]
    command = shlex.join([sys.executable, script, "--resume", *rest])
    command = f"cd {shlex.quote(cwd or os.getcwd())} && {command}"
    if "TORCHELASTIC_RUN_ID" in os.environ or ("RANK" in os.environ and "LOCAL_RANK" in os.environ):
        command += "   # start it with the same torchrun options"
    elif "SLURM_PROCID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        command += "   # start it with the same srun options"
    return command
