"""Operational safety, apart from the ML: the one way SIGINT and SIGTERM are handled (by both
CLIs and by training).
"""

from __future__ import annotations

import os
import signal
import sys

# Signals ----------------------------------------------------------------------------------

SIGNALS = (signal.SIGINT, signal.SIGTERM)
INTERRUPTED = (130, 143)  # Exit statuses after SIGINT (Ctrl-C) and SIGTERM: 128 + signal.


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM as an exception, raised so that the cleanup on its way out runs.
    `status` is the conventional exit status, 128 + the signal's number (130, 143)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.status = 128 + signum


class Signals:
    """Handles SIGINT and SIGTERM while the `with` block runs (from the main thread only),
    then gives them back to the handlers it replaced.

    * `Signals(hold=False)`: each signal raises `Interrupted` where the program is, so that
      its cleanup runs (a CLI's whole run: `cli.exit_with`).
    * `Signals()`: each signal is recorded instead; `signum` is the first (None while none).
      A step that must not be cut in two (outputs moving into place) lets the block end: the
      first signal then takes effect, delivered to the handler the block replaced. A loop
      polls `signum` between steps and `take()`s it to stop in its own way (training saves a
      checkpoint, then raises what `take` returns).

    Masking the signals would not do: another thread of the process, XLA's, would take them.
    """

    def __init__(self, hold: bool = True):
        self.hold = hold
        self.caught: list[int] = []

    @property
    def signum(self) -> int | None:
        """The first signal caught and not taken, or None."""
        return self.caught[0] if self.caught else None

    def take(self) -> Interrupted:
        """The first signal caught, as the Interrupted to raise; it is not delivered again."""
        signum = self.caught[0]
        self.caught.clear()
        return Interrupted(signum)

    def _handle(self, signum, frame):
        if not self.hold:
            raise Interrupted(signum)
        self.caught.append(signum)

    def __enter__(self) -> Signals:
        self._old = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)
        if self.caught:
            signum = self.caught[0]
            self.caught.clear()
            handler = self._old[signum]
            if callable(handler):
                handler(signum, None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(signum)


def exit_now(status: int) -> None:
    """Ends the process at once with `status`, its output flushed: after Ctrl-C (or SIGTERM)
    a normal interpreter shutdown while XLA's threads still compile or run can crash (a
    segfault)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # A full or closed console: the status still says it.
            pass
    os._exit(status)
