"""Ctrl-C and SIGTERM: stop the sweep, closing every run and trial it touched."""

from __future__ import annotations

import signal
import threading


class SweepInterrupted(Exception):
    """SIGINT stopped the sweep; every run and trial it touched has been closed."""


_interrupt_received = threading.Event()


def interrupt(signum: int, frame: object) -> None:
    """The SIGINT/SIGTERM handler: raise KeyboardInterrupt, and remember it (see install_interrupt_handler)."""
    _interrupt_received.set()
    raise KeyboardInterrupt


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
    """Forget an interrupt received earlier (a new sweep in the same process starts clean)."""
    _interrupt_received.clear()


def raise_if_interrupted(*_: object) -> None:
    """Raise KeyboardInterrupt if an interrupt was received (usable as an engine or Optuna callback)."""
    if _interrupt_received.is_set():
        raise KeyboardInterrupt
