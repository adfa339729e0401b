"""Ctrl-C at safe points only. Generic."""

from __future__ import annotations

import signal


class DeferInterrupt:
    """Holds Ctrl-C back while state is being committed, then raises it.

    A block that updates several pieces of state together (an optimiser step, the EMA and
    the data cursor) runs inside ``with DeferInterrupt():``, so a checkpoint written after
    the interruption never holds half of the update. Outside the main thread (where no
    signal handler can be installed) it does nothing.
    """

    def __enter__(self):
        self.pending = False
        try:
            self.previous = signal.signal(signal.SIGINT, self._hold)
        except ValueError:  # not the main thread
            self.previous = None
        return self

    def _hold(self, *_):
        self.pending = True

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        if self.pending and exc[0] is None:
            raise KeyboardInterrupt
        return False
