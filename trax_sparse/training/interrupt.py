"""Graceful stop on SIGTERM / SIGINT: the Loop finishes the current step, saves a
checkpoint and returns (the trainer then exits 0). A second signal stops at once
(KeyboardInterrupt). Handlers are installed only in the main thread and restored on exit.
Outside Loop.run (while a trainer builds the model, compiles, ...) `StopBeforeTraining`
turns the signal into SignalBeforeTraining, so the trainer can say that no step was done.

Example:
    >>> import os, signal
    >>> with StopOnSignal() as stop:
    ...     os.kill(os.getpid(), signal.SIGTERM)
    ...     stop.requested
    'SIGTERM'
"""
import logging
import signal
import threading
from typing import Any

log = logging.getLogger('trax_sparse.training')
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class SignalBeforeTraining(Exception):
    """SIGTERM / SIGINT arrived outside Loop.run; `signal_name` names it."""

    def __init__(self, signal_name: str, runs_started: int):
        super().__init__(signal_name)
        self.signal_name, self.runs_started = signal_name, runs_started


class StopOnSignal:
    """A context manager; `requested` is the name of the signal received, or None."""

    runs_started = 0  # how many times a StopOnSignal was entered (Loop.run began) in this process

    def __init__(self):
        self.requested: str | None = None
        self._previous: dict = {}

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.requested is not None:
            self._restore()
            raise KeyboardInterrupt(f'second signal ({name}): stopping without a checkpoint')
        self.requested = name
        log.warning('%s received: stopping after this step and saving a checkpoint (send it '
                    'again to stop at once)', name)

    def __enter__(self) -> 'StopOnSignal':
        StopOnSignal.runs_started += 1
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def __exit__(self, *exc: Any) -> None:
        self._restore()


class StopBeforeTraining:
    """A context manager: SIGTERM / SIGINT raise SignalBeforeTraining (Loop.run, entered
    inside it, handles them itself while it trains)."""

    def __init__(self):
        self._previous: dict = {}
        self._runs_before = 0

    def _handle(self, signum: int, frame: Any) -> None:
        # Runs of a Loop begun inside this block (not earlier ones of the same process).
        raise SignalBeforeTraining(signal.Signals(signum).name,
                                   StopOnSignal.runs_started - self._runs_before)

    def __enter__(self) -> 'StopBeforeTraining':
        self._runs_before = StopOnSignal.runs_started
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


__all__ = ['SignalBeforeTraining', 'StopBeforeTraining', 'StopOnSignal']
