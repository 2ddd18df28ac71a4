"""Progress: reported after every batch, and at least every ``interval`` seconds.

Reports go to the host's progress channel (a ``(processed, total)`` callable),
which shows them: a tqdm bar on a terminal, plain lines elsewhere. A heartbeat
thread repeats the latest count when a batch takes longer than the interval,
so a slow batch never leaves the user without news. Nothing is reported once
the export has failed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import TracebackType

Channel = Callable[[int, int], None]


class ProgressReporter:
    """Use as a context manager around the batch loop; call :meth:`advance` after each batch."""

    def __init__(self, channel: Channel, total: int, *, interval: float) -> None:
        self._channel = channel
        self.total = total
        self.processed = 0
        self._interval = interval
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._last = 0.0
        self._thread = threading.Thread(target=self._heartbeat, name="export-progress", daemon=True)

    def __enter__(self) -> ProgressReporter:
        self._report()
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()

    def advance(self, count: int) -> None:
        """``count`` more posts are written: report."""
        self.processed += count
        self._report()

    def finish(self) -> None:
        """The export is complete: if the stream ended short of the count, report the real total."""
        if self.total != self.processed:
            self.total = self.processed
            self._report()

    def _report(self) -> None:
        with self._lock:
            if self._stop.is_set():
                return
            self._last = time.monotonic()
            self._channel(self.processed, self.total)

    def _heartbeat(self) -> None:
        step = self._interval / 10
        while not self._stop.wait(step):
            if time.monotonic() - self._last >= self._interval - 2 * step:
                self._report()
