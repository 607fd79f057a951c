"""Ctrl-C and SIGTERM: stop the sweep once, then let it close every run and trial it touched.

The first SIGINT or SIGTERM raises KeyboardInterrupt; the ones after it (a user pressing Ctrl-C again and again)
only say that the sweep is closing its runs, so they cannot cut that closing short. Every signal also stops
waiting out a lost store: a sweep told to stop does not wait minutes for a tracking server to come back.
"""

from __future__ import annotations

import logging
import signal
import threading

from trainlib.store_failures import StoreUnavailable, first_line, resume_waiting_for_stores, stop_waiting_for_stores
from trainlib.tracking import Tracker

log = logging.getLogger(__name__)


class SweepInterrupted(Exception):
    """A signal stopped the sweep; every run and trial it could reach has been closed.

    ``signal_name`` is 'SIGINT' or 'SIGTERM'; ``during`` says what the sweep was doing ('trials' or 'report').
    """

    def __init__(self, study_name: str, signal_name: str = "SIGINT", during: str = "trials") -> None:
        super().__init__(f"study {study_name!r}: {signal_name} during {during}")
        self.study_name = study_name
        self.signal_name = signal_name
        self.during = during


_interrupt_received = threading.Event()
_received: list[str] = []  # names of the signals received, first first


def interrupt(signum: int, frame: object) -> None:
    """The SIGINT/SIGTERM handler: the first signal raises KeyboardInterrupt, later ones are only counted."""
    first = not _interrupt_received.is_set()
    _received.append(signal.Signals(signum).name)
    _interrupt_received.set()
    stop_waiting_for_stores()
    if first:
        raise KeyboardInterrupt
    if len(_received) == 2:
        log.warning("already stopping: closing the open runs and trials (further signals are ignored)")


def install_interrupt_handler() -> None:
    """Make SIGINT and SIGTERM stop the sweep, even where the shell started it with SIGINT ignored.

    Python drops an exception raised while it runs a finalizer or a weakref callback ("Exception ignored in
    ..."), and the sweep's thread runs those whenever it collects garbage (e.g. SQLAlchemy's, made on the
    tracking thread). So the interrupt is also remembered and raised again at the next trial or epoch.
    """
    forget_interrupt()
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)


def forget_interrupt() -> None:
    """Forget signals received earlier (a new sweep in the same process starts clean)."""
    _interrupt_received.clear()
    _received.clear()
    resume_waiting_for_stores()


def received_signal() -> str:
    """The name of the first signal received ('SIGINT' where none was: a KeyboardInterrupt from elsewhere)."""
    return _received[0] if _received else "SIGINT"


def raise_if_interrupted(*_: object) -> None:
    """Raise KeyboardInterrupt if an interrupt was received (usable as an engine or Optuna callback)."""
    if _interrupt_received.is_set():
        raise KeyboardInterrupt


class EndingRuns:
    """The one way out of a sweep command: whatever ends it, every run it started is ended with the right status.

    Used as ``with EndingRuns(tracker, name) as ending:`` around everything the command does; set ``during``
    as it goes (startup, trials, report) and ``status`` for a clean end (None leaves the parent to another
    command). A signal ends the runs KILLED with the signal's name and raises SweepInterrupted; a tracking
    server given up on is not waited for again; any other error ends them FAILED and goes on up.
    """

    def __init__(self, tracker: Tracker, study_name: str) -> None:
        self.tracker = tracker
        self.study_name = study_name
        self.during = "startup"
        self.status: str | None = "FINISHED"

    def __enter__(self) -> EndingRuns:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, traceback: object) -> None:
        if error is None:
            self.tracker.end_sweep(self.status)
            return
        if isinstance(error, KeyboardInterrupt):
            signal_name = received_signal()
            self.tracker.end_sweep("KILLED", f"interrupted ({signal_name}) during {self.during}")
            raise SweepInterrupted(self.study_name, signal_name, self.during) from None
        if isinstance(error, StoreUnavailable) and error.store == "tracking":
            stop_waiting_for_stores()  # it was waited out once already: one more try per run, no second wait
        self.tracker.end_sweep("FAILED", first_line(error))
