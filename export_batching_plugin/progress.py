"""Progress, as the user sees it: true, tidy, and a console line at least every ``interval`` seconds.

Reports go to the host's progress channel: ``update(processed, total)`` (0.3: ``job.report_progress``,
0.4 and 0.5: ``progress.update``), which skyarchive shows as a tqdm bar on a terminal and otherwise as
plain lines, at most one per 5 s, and always when ``processed`` reaches ``total``; and, from skyarchive 0.5,
``status(text)``: one line saying what the export is doing while no post count moves, shown beside the
bar (which the console redraws every second) or as a plain ``export: <text>`` line. So:

- **Writing**: the count of posts written is reported after every batch; and whenever no report went out
  for a ``tick`` (a slow batch, a stalled read), the latest count is repeated, so that a console throttled
  to one line per ``interval`` prints its next line a tick late at most, instead of up to a whole interval
  late. The report that reaches the total comes at least :data:`MIN_GAP` after the one before it: tqdm
  draws nothing for an update within its minimum interval of the last one it drew, and the bar would stay
  at 98% while the export finishes (skyarchive 0.3 and 0.4 redraw only on updates).
- **Finishing** (every post written; media still being copied, synced, the export published): the channel
  has had ``(total, total)``, and a console would print every further report, so none is sent. What the
  export is doing goes to ``status`` where the host has it, at every tick (its console shows it beside the
  bar, or prints a line at most every 5 s, as it does the counts). Older hosts have no such channel: there
  the status line is logged (``export_batching: all 6,000 posts written; copying media files: 3,412 of
  10,210 done``), at WARNING (the level skyarchive's console shows) when standard error is not a terminal,
  so that a redirected log still gets a line at least every ``interval``; on a terminal at INFO, since a log
  line would break the bar (what the console of 0.3 and 0.4 cannot show: docs/usage.md).

The repeating is done by a heartbeat thread. Where no thread can be started (a container's task limit),
the export's own thread calls :meth:`ProgressReporter.beat` from its waiting loops instead, which does
what the heartbeat would have done by then.

Nothing is reported once the export has stopped (:meth:`ProgressReporter.stop`).
If the host's channel raises on another thread, the heartbeat stops and the export's next report raises
the same exception, as it would have there.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
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
    """:meth:`start` with the total (a context manager: stopped on the way out); :meth:`update` with the
    posts written, then :meth:`finishing`."""

    def __init__(self, channel: Channel | Callable[[int, int], None], *, interval: float) -> None:
        self._channel = channel if isinstance(channel, Channel) else Channel(channel)
        self.total = self.processed = 0
        self.interval = interval
        self.tick = min(0.1, interval / 10)
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._last = 0.0  # when the channel was last called (or a status line given)
        self._held = False  # the report of the total, held back until MIN_GAP after the one before it
        self._status: Callable[[], str] | None = None  # set in the finishing phase
        self._activity: Callable[[], str] | None = None  # what the export does before the finishing phase
        self._failure: BaseException | None = None  # what the channel raised on another thread
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
            if processed >= self.total and time.monotonic() - self._last < MIN_GAP:
                self._held = True  # the heartbeat, or finishing(), reports it once the gap has passed
                return
            self._report_locked()

    def reading(self, activity: Callable[[], str]) -> None:
        """Until :meth:`finishing`: ``activity()`` says what the export is doing while the count may not move
        (``"reading posts: 412,000 of 1,000,000"``); given at every tick where the host has a status channel,
        instead of repeating the count (its console redraws the bar itself)."""
        with self._lock:
            self._activity = activity

    def finishing(self, status: Callable[[], str]) -> None:
        """Every post is written; ``status()`` says what the export is doing from now on (``"syncing to disk"``).

        Beside the bar it is shown as it is; as a log line it follows ``all 6,000 posts written; ``.
        """
        with self._lock:
            if self.total != self.processed:  # the stream ended short of the count: the real total
                self.total = self.processed
                self._held = True
            if self._held:
                time.sleep(max(0.0, self._last + MIN_GAP - time.monotonic()))
                self._held = False
                self._report_locked()
            self._status = status

    def done(self, text: str) -> None:
        """The export is in place: the last status (where the host has a status channel), then no more."""
        with self._lock:
            self._status = None
            if self._channel.status is not None and self._failure is None and not self._stopped.is_set():
                self._channel.status(text)
        self.stop()

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
        if self._failure is not None:  # the channel failed on another thread: it fails here too
            raise self._failure
        if self._stopped.is_set():  # the export has stopped (failed): nothing more is reported
            return
        self._last = time.monotonic()
        self._channel.update(self.processed, self.total)

    def _heartbeat(self) -> None:
        while not self._stopped.wait(self.tick):
            with self._lock:
                if self._stopped.is_set() or not self._due(time.monotonic()):
                    return

    def _due(self, now: float) -> bool:
        """Report or say what is due at ``now`` (under the lock); False once the channel has failed."""
        try:
            if self._status is not None:
                self._say(now, self._status())
            elif self._held:
                if now - self._last >= MIN_GAP:
                    self._held = False
                    self._last = now
                    self._channel.update(self.processed, self.total)
            elif self._activity is not None and self._channel.status is not None:
                self._last = now
                self._channel.status(self._activity())
            elif now - self._last >= self.tick and self.processed < self.total:  # 100% would print again
                self._last = now
                self._channel.update(self.processed, self.total)
        except BaseException as exc:  # the host's listener raised: the export's own thread raises it
            self._failure = exc
            return False
        return True

    def _say(self, now: float, text: str) -> None:
        """Give the status ``text``: to the host's status channel at every tick (its console decides what to
        show, as with the repeated counts), or, without one, as a log line when ``interval`` would otherwise
        pass without a line (the host prints every log line)."""
        if self._channel.status is not None:
            self._last = now
            self._channel.status(text)
        elif now - self._last >= self.interval - self.tick:
            self._last = now
            level = logging.INFO if sys.stderr.isatty() else logging.WARNING
            log.log(level, "export_batching: all %s posts written; %s", f"{self.processed:,}", text)
