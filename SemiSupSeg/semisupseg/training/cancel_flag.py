"""``CancelFlag``: how a run is asked to stop (SIGTERM, SIGINT or a ``STOP`` file in the run folder).

The trainer checks it once per iteration; a set flag ends the run after that iteration with a
checkpoint (exit 0), so Stop in Slicer, Ctrl-C and ``kill`` lose nothing.
"""

from __future__ import annotations

import signal
from pathlib import Path

from ..events import log


class CancelFlag:
    """Set by SIGTERM/SIGINT or by a ``STOP`` file in the run folder; checked once per iteration."""

    def __init__(self, stop_file: Path):
        self.stop_file = stop_file
        self.requested = False
        self._previous = {}

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. called from a test thread)
                pass

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        log(f"received signal {signum}: stopping after this iteration")
        self.requested = True

    def is_set(self) -> bool:
        if not self.requested and self.stop_file.exists():
            self.requested = True
        return self.requested
