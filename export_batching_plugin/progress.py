"""Progress, as the user sees it: one count (posts exported), what the export is doing in words beside it, and
a console line at least every ``interval`` seconds (docs/how-it-works.md, "Progress").

The count is reported after every batch, the one that reaches the total at least :data:`MIN_GAP` after the one
before it (tqdm draws nothing for an update within its minimum interval of the last one it drew). While a read
snapshot is open (:meth:`ProgressReporter.quiet`) the export only records it: a stalled console never holds the
archive. A heartbeat thread hands over what was recorded, repeats the count after a ``tick`` without a report
(the console prints its next line on time), says what the export is doing where the host has a status channel
(0.5), and otherwise, once every post is written, logs it when ``interval`` would pass without a line (WARNING
where standard error is no terminal: the level skyarchive's console shows). Where no thread can be started, the
export does that from its waiting loops (:meth:`ProgressReporter.beat`). If the host's channel raises on the
heartbeat's thread, the export's next report raises it.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType

from .threads import Helper, start_thread

log = logging.getLogger("export_batching_plugin")
#: tqdm's default minimum interval between two drawings of a bar (``mininterval``), with a margin.
MIN_GAP = 0.15


@dataclass(frozen=True)
class Channel:
    """The host's progress channel: ``update(processed, total)``, and ``status(text)`` where it has one."""

    update: Callable[[int, int], None]
    status: Callable[[str], None] | None = None


class ProgressReporter:
    """:meth:`start` with the total (a context manager: stopped on the way out); :meth:`update` with the posts
    exported, :meth:`status` with what the export is doing; :meth:`done` at the end."""

    def __init__(self, channel: Channel | Callable[[int, int], None], *, interval: float, threads: bool = True):
        self._channel = channel if isinstance(channel, Channel) else Channel(channel)
        self.total = self.processed = 0
        self.interval = interval
        self.tick = min(0.1, interval / 10)
        self._threads = threads
        self._status: Callable[[], str] | str | None = None
        self._shown = (-1, -1)  # the count and total last reported
        self._last = 0.0  # when the channel was last called (or a status line logged)
        self._quiet = False
        self._stopped = threading.Event()
        self._failure: BaseException | None = None
        self._thread: Helper | None = None
        self._lock = threading.Lock()  # one report at a time

    def start(self, total: int) -> ProgressReporter:
        """Report ``(0, total)``, and start the heartbeat (where a thread can be started)."""
        self.total = total
        self._report()
        if self._threads:
            self._thread = start_thread(self._heartbeat, "export-progress", doing="repeating the progress count")
        return self

    def __enter__(self) -> ProgressReporter:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stopped.set()  # a heartbeat stalled on the console is not waited for

    @contextlib.contextmanager
    def quiet(self) -> Iterator[None]:
        """While a read snapshot is open: record only (the heartbeat reports)."""
        self._quiet = True
        try:
            yield
        finally:
            self._quiet = False
        self._report()

    def update(self, processed: int) -> None:
        """``processed`` posts are exported by now (any thread)."""
        self.processed = processed
        if self._failure is not None:
            raise self._failure
        if not self._quiet:
            self._report()

    def status(self, text: Callable[[], str] | str | None) -> None:
        """What the export is doing, in words (or a function giving them when they are said), beside the count."""
        self._status = text

    def done(self, text: str) -> None:
        """The export is in place: the last count and ``text`` are reported, then nothing more."""
        self.total = self.processed  # a selection that ended short of its count: the real total
        self._report()
        self._stopped.set()
        if self._thread is not None:
            self._thread.wait()
        if self._channel.status is not None and self._failure is None:
            self._channel.status(text)

    def beat(self) -> None:
        """What the heartbeat does when it is due; called by the export's own thread where there is none."""
        if self._thread is None and not self._stopped.is_set() and not self._quiet:
            self._due()
        if self._failure is not None:
            raise self._failure

    def _report(self) -> None:
        with self._lock:
            self._update()

    def _update(self) -> None:
        """Report the count if it is new (under the lock)."""
        if self._failure is not None:
            raise self._failure
        processed, total = self.processed, self.total
        if (processed, total) == self._shown or self._stopped.is_set():
            return
        if processed >= total:
            time.sleep(max(0.0, self._last + MIN_GAP - time.monotonic()))  # for tqdm to draw 100%
        self._shown, self._last = (processed, total), time.monotonic()
        self._channel.update(processed, total)

    def _heartbeat(self) -> None:
        while not self._stopped.wait(self.tick):
            if not self._due():
                return

    def _due(self) -> bool:
        """Report or say what is due now; False once the channel has failed."""
        with self._lock:
            try:
                self._update()
                now = time.monotonic()
                if now - self._last < self.tick or self._stopped.is_set():
                    return True
                status = self._status() if callable(self._status) else self._status
                if status is not None and self._channel.status is not None:
                    self._last = now
                    self._channel.status(status)
                elif self.processed < self.total:
                    self._last = now
                    self._channel.update(self.processed, self.total)
                elif status is not None and now - self._last >= self.interval - self.tick:
                    self._last = now
                    level = logging.INFO if sys.stderr.isatty() else logging.WARNING
                    log.log(level, "export_batching: all %s posts written; %s", f"{self.processed:,}", status)
            except BaseException as exc:  # the host's listener raised: the export's own thread raises it
                self._failure = exc
                return False
        return True
