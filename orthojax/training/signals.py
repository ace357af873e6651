"""SIGTERM / SIGINT as a request to stop: the loop checks it between steps, saves a checkpoint and
returns (a scheduler's preemption signal costs no work)."""

from __future__ import annotations

import signal
import threading
from typing import Optional

__all__ = ["StopRequest", "stop_requested"]


class StopRequest:
    """Turns SIGTERM / SIGINT into a flag (``signum``) that the loop checks before each step (main thread
    only); a second signal raises KeyboardInterrupt.

    Nested: entered while another StopRequest is installed (e.g. one around a whole table of runs), it
    shares that one's flag, so a signal stops the current run and tells the caller to start no other.
    """

    def __init__(self):
        self._signum: Optional[int] = None
        self._outer: Optional["StopRequest"] = None
        self._previous: dict = {}

    @property
    def signum(self) -> Optional[int]:
        """The signal received (None: none yet)."""
        return self._outer.signum if self._outer is not None else self._signum

    def _handle(self, signum, frame):
        if self._signum is not None:
            raise KeyboardInterrupt
        self._signum = signum

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            outer = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
            if isinstance(outer, StopRequest):
                self._outer = outer
                return self
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


def stop_requested() -> Optional[int]:
    """The signal that the installed :class:`StopRequest` received (None: none, or none installed)."""
    handler = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
    return handler.signum if isinstance(handler, StopRequest) else None
