"""Progress, as the user sees it: a console line at least every ``interval`` seconds, start to exit.

Reports go to the host's progress channel (a ``(processed, total)``
callable), which skyarchive shows as a tqdm bar on a terminal and otherwise as
plain lines, at most one per 5 s, and always when ``processed`` reaches
``total``. So:

- **Reading**: the count is reported after every batch; and whenever no report
  went out for a ``tick`` (a slow batch, a stalled read), the latest count is
  repeated, so that a console throttled to one line per ``interval`` prints
  its next line a tick late at most, instead of up to a whole interval late.
- **Finishing** (every post written; media still being copied, synced, the
  export published): the channel has had ``(total, total)``, and a console
  would print every further report, so none is sent; instead, whenever
  ``interval`` is about to pass without a line, one status line is logged
  saying what is being done (``export_batching: … syncing 10,210 media files``).

The repeating is done by a heartbeat thread. Where no thread can be started (a container's task limit),
the export's own thread calls :meth:`ProgressReporter.beat` from its waiting loops instead, which does
what the heartbeat would have done by then.

Nothing is reported once the export has stopped (:meth:`ProgressReporter.stop`).
If the host's channel raises on the heartbeat's thread, the heartbeat stops and
the export's next report raises the same exception, as it would have there.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType

from .threads import Helper, start_thread

Channel = Callable[[int, int], None]
log = logging.getLogger("export_batching_plugin")


class ProgressReporter:
    """:meth:`start` with the total (a context manager: stopped on the way out); :meth:`update` with the
    posts written, then :meth:`finishing`."""

    def __init__(self, channel: Channel, *, interval: float) -> None:
        self._channel = channel
        self.total = self.processed = 0
        self.interval = interval
        self.tick = min(0.1, interval / 10)
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._last = 0.0  # when the channel was last called (or a status line logged)
        self._status: Callable[[], str] | None = None  # set in the finishing phase
        self._failure: BaseException | None = None  # what the channel raised on the heartbeat's thread
        self._thread: Helper | None = None

    def start(self, total: int) -> ProgressReporter:
        """Report ``(0, total)`` and start the heartbeat (where a thread can be started)."""
        self.total = total
        self._report()
        self._thread = start_thread(self._heartbeat, "export-progress", doing="repeating the progress count")
        return self

    def __enter__(self) -> ProgressReporter:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def stop(self) -> None:
        """No more reports, from now on."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.wait()

    def advance(self, count: int) -> None:
        """``count`` more posts are written: report."""
        self.update(self.processed + count)

    def update(self, processed: int) -> None:
        """``processed`` posts are written by now: report, if that is news (from any thread)."""
        with self._lock:
            if processed == self.processed:
                return
            self.processed = processed
            self._report_locked()

    def finishing(self, status: Callable[[], str]) -> None:
        """Every post is written; ``status()`` says what the export is doing from now on."""
        with self._lock:
            self._status = status
        if self.total != self.processed:  # the stream ended short of the count: the real total
            self.total = self.processed
            self._report()

    def beat(self) -> None:
        """What the heartbeat does when it is due; called by the export's own thread where there is none."""
        if self._thread is None and not self._stopped.is_set():
            with self._lock:
                self._due(time.monotonic())
            if self._failure is not None:
                raise self._failure

    def _report(self) -> None:
        with self._lock:
            self._report_locked()

    def _report_locked(self) -> None:
        if self._failure is not None:  # the channel failed on the heartbeat's thread: it fails here too
            raise self._failure
        if self._stopped.is_set():  # the export has stopped (failed): nothing more is reported
            return
        self._last = time.monotonic()
        self._channel(self.processed, self.total)

    def _heartbeat(self) -> None:
        while not self._stopped.wait(self.tick):
            with self._lock:
                if self._stopped.is_set() or not self._due(time.monotonic()):
                    return

    def _due(self, now: float) -> bool:
        """Report or log what is due at ``now`` (under the lock); False once the channel has failed."""
        try:
            if self._status is None:
                # 100% is printed at once by a console; a repeat would print again
                if now - self._last >= self.tick and self.processed < self.total:
                    self._last = now
                    self._channel(self.processed, self.total)
            elif now - self._last >= self.interval - self.tick:
                self._last = now
                log.warning("export_batching: %s", self._status())
        except BaseException as exc:  # the host's listener raised: the export's own thread raises it
            self._failure = exc
            return False
        return True
